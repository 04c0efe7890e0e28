"""What a release must pass before a channel deploys it: preconditions, then approvals.

Pure evaluation against the planner's state at a recorded moment. A gate answers with
the status the convergence should be in and a reason a person can act on ("waiting for
2 approvals of prod-signoff (1 given: alice at 14:02)"). Bypasses (audited in the log)
count as met: `precondition:<approval>`, `precondition:channel_stable:<channel>`,
`precondition:deploy_window`.

Approvers are counted as principals (`services.principals.key`): `bob`, `bob ` and `bоb`
(Cyrillic о) are one approval, and with `exclude_deployer` none of them counts when `bob`
deployed the release — whatever names the log recorded before names were normalised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from schemas.convoy.v1 import resources_pb2
from services import principals
from services.planner import windows
from services.planner.catalog import Approval, ReleaseRecord
from services.planner.model import (
    CONVERGED,
    DEPLOYING,
    FAILED,
    ROLLED_BACK,
    ROLLING_BACK,
    WAITING_APPROVAL,
    WAITING_PRECONDITIONS,
    Convergence,
    PlannerState,
    status_name,
)


GAVE_UP = frozenset({FAILED, ROLLED_BACK, ROLLING_BACK})


@dataclass(frozen=True, slots=True)
class Gate:
    status: int
    reason: str
    window_opens: datetime | None = None


def hhmm(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def evaluate(
    state: PlannerState,
    conv: Convergence,
    record: ReleaseRecord,
    channel: resources_pb2.ReleaseChannel,
    now: datetime,
) -> Gate:
    waiting: list[str] = []
    deploy_windows = [p.deploy_window for p in channel.preconditions if p.WhichOneof("kind") == "deploy_window"]
    for precondition in channel.preconditions:
        if precondition.WhichOneof("kind") != "channel_stable":
            continue
        other = precondition.channel_stable.channel
        if (conv.channel, f"precondition:channel_stable:{other}") in record.bypasses:
            continue
        sibling = state.convergences.get((conv.application, conv.service, other))
        if sibling is not None and sibling.version == record.release.version and sibling.status in GAVE_UP:
            # The release failed where it had to prove itself first: it can never be stable there.
            return Gate(FAILED, f"{other} {status_name(sibling.status)} at {sibling.version}: {sibling.reason}")
        reason = _stable_reason(state, conv, other, record.release.version)
        if reason:
            waiting.append(reason)
    window_opens = None
    if deploy_windows and (conv.channel, "precondition:deploy_window") not in record.bypasses:
        if not windows.is_open(deploy_windows, now):
            window_opens = windows.next_opening(deploy_windows, now)
            opens = f"; opens {window_opens:%a %Y-%m-%d %H:%M} UTC" if window_opens else ""
            waiting.append(f"outside the deploy window ({windows.describe(deploy_windows)}){opens}")
    if waiting:
        return Gate(WAITING_PRECONDITIONS, "; ".join(waiting), window_opens)

    for precondition in channel.preconditions:
        if precondition.WhichOneof("kind") != "manual_approval":
            continue
        approval = precondition.manual_approval
        if (conv.channel, f"precondition:{approval.name}") in record.bypasses:
            continue
        rejected = record.rejections.get((conv.channel, approval.name))
        if rejected is not None:
            approver, why = rejected
            return Gate(FAILED, f"rejected by {approver} ({approval.name})" + (f": {why}" if why else ""))
        given = counted_approvals(record, conv.channel, approval)
        needed = max(approval.min_approvers, 1)
        if len(given) < needed:
            who = ", ".join(f"{a.approver} at {hhmm(a.at)}" for a in given)
            plural = "s" if needed > 1 else ""
            four_eyes = f"; not {record.created_by}, who deployed it" if approval.exclude_deployer else ""
            waiting.append(
                f"waiting for {needed} approval{plural} of {approval.name} ({len(given)} given"
                + (f": {who}" if who else "")
                + f"{four_eyes})"
            )
    if waiting:
        return Gate(WAITING_APPROVAL, "; ".join(waiting))
    return Gate(DEPLOYING, "preconditions met")


def counted_approvals(record: ReleaseRecord, channel: str, approval: resources_pb2.ManualApproval) -> list[Approval]:
    """The approvals that count: one per principal, in order, and none by the deployer
    when the approval excludes them."""
    deployer = principals.key(record.created_by) if approval.exclude_deployer and record.created_by else None
    seen: set[str] = set()
    counted = []
    for given in record.approvals.get((channel, approval.name), []):
        who = principals.key(given.approver)
        if who in seen or who == deployer:
            continue
        seen.add(who)
        counted.append(given)
    return counted


def _stable_reason(state: PlannerState, conv: Convergence, other: str, version: str) -> str:
    """Empty when channel `other` converged at `version`; otherwise why not."""
    sibling = state.convergences.get((conv.application, conv.service, other))
    if sibling is not None and sibling.converged_release_id:
        converged = state.catalog.releases.get(sibling.converged_release_id)
        if converged is not None and converged.release.version == version and sibling.status == CONVERGED:
            return ""
    if sibling is None or not sibling.release_id:
        return f"waiting for {other} to be stable at {version}: {other} has not started it"
    # Only what changes rarely (the status, a soak's end): every change here is an event.
    soak = re.search(r"soak ends at [0-9:]+ UTC", sibling.reason)
    detail = f", {soak.group(0)}" if soak else ""
    if sibling.version != version:
        return f"waiting for {other} to be stable at {version}: {other} is on {sibling.version or 'nothing'}"
    return f"waiting for {other} to be stable at {version}: {other} {status_name(sibling.status)}{detail}"
