"""Approve and Reject: people deciding about a release in a channel.

A channel's manual approvals are named preconditions; an approver approves (or rejects)
one release for one approval in one channel. When the request names no approval, the
channel's only one is meant; if it has several, the request must choose. The same
person approving twice counts once, so retries and double clicks are harmless. A
rejection stops that release in that channel for good — later approvals are refused;
the way forward is a new release. Whether enough distinct people approved is the
planner's call (it compares `approvals_given` with `min_approvers`).

An approval can demand four eyes (`exclude_deployer`): the person who deployed the
release is refused as its approver — separation of duties is a rule about who may
record a decision, so it is enforced here, where the decision is recorded. Releases
recorded before `Release.created_by` existed have no known deployer and are not held.

Who is who is compared as principals (`services.principals.key`), never as raw strings:
`bob`, `bob ` and `bоb` (Cyrillic о), whether on tokens or in events recorded before names
were normalised, are one person — one approval, and the deployer all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
import services.principals as principals
from services.api.domain import streams
from services.api.domain.channels import manual_approvals
from services.api.domain.commands import Command, Decision
from services.api.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Problems
from services.api.domain.state import Rejection, ReleaseRecord, State
from services.api.domain.targets import existing_channel, existing_service, resolve_release
from services.api.domain.validation import MAX_REASON, check_text, listing, q


@dataclass(frozen=True, slots=True)
class ApprovalTarget:
    """What an approve/reject request resolves to."""

    record: ReleaseRecord
    channel: str
    approval: str
    exclude_deployer: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.approval)


def approvals_given(state: State, release_id: str, channel: str, approval: str) -> list[str]:
    """Distinct approvers (as principals compare) of `release_id` for `approval` in
    `channel`, in the order they approved (empty for an unknown release)."""
    record = state.find_release(release_id)
    if record is None:
        return []
    seen: set[str] = set()
    out = []
    for approver in record.approvals.get((channel, approval), ()):
        if principals.key(approver) not in seen:
            seen.add(principals.key(approver))
            out.append(approver)
    return out


def rejections_given(state: State, release_id: str, channel: str, approval: str) -> list[Rejection]:
    """Who rejected `release_id` for `approval` in `channel`, and why, in order."""
    record = state.find_release(release_id)
    return [] if record is None else list(record.rejections.get((channel, approval), ()))


def resolve_approval(
    state: State, app: str, service: str, channel_name: str, release_id: str, approval: str
) -> ApprovalTarget:
    existing_service(state, app, service)
    channel = existing_channel(state, app, channel_name)
    approvals = {a.name: a for a in manual_approvals(channel)}
    names = list(approvals)
    if not names:
        raise FailedPrecondition(
            f"channel {q(channel_name)} of application {q(app)} has no manual approval; there is nothing to "
            "approve or reject"
        )
    if approval:
        if approval not in names:
            raise NotFound(
                f"approval: channel {q(channel_name)} has no manual approval {q(approval)}; approvals: {listing(names)}"
            )
    elif len(names) == 1:
        approval = names[0]
    else:
        raise InvalidArgument.at(
            "approval",
            f"channel {q(channel_name)} has several manual approvals ({listing(names)}); name the one you mean",
        )
    record = resolve_release(state, app, service, release_id)
    return ApprovalTarget(record, channel_name, approval, approvals[approval].exclude_deployer)


def _describe(release: resources_pb2.Release) -> str:
    return f"release {q(release.version)} ({release.id}) of {release.application}/{release.service}"


def approve(state: State, request: api_pb2.ApproveRequest, command: Command) -> Decision:
    problems = Problems()
    check_text(problems, "comment", request.comment, limit=MAX_REASON)
    problems.raise_if_any()
    target = resolve_approval(
        state, request.application, request.service, request.channel, request.release_id, request.approval
    )
    rejected = target.record.rejections.get(target.key, ())
    if rejected:
        first = rejected[0]
        raise FailedPrecondition(
            f"{_describe(target.record.release)} was rejected for {q(target.approval)} in channel "
            f"{q(target.channel)} by {first.approver} ({q(first.reason)}); a rejection is final — deploy a new release"
        )
    me = principals.key(command.actor)
    if any(principals.key(a) == me for a in target.record.approvals.get(target.key, ())):
        return Decision.unchanged()
    release = target.record.release
    if target.exclude_deployer and release.created_by and principals.key(release.created_by) == me:
        raise PermissionDenied(
            f"{_describe(release)} was deployed by {command.actor}; approval {q(target.approval)} in channel "
            f"{q(target.channel)} needs someone else (four eyes) — ask another approver, or reject it yourself"
        )
    event = events_pb2.ApprovalGranted(
        release_id=release.id,
        application=release.application,
        service=release.service,
        channel=target.channel,
        approval=target.approval,
        approver=command.actor,
        comment=request.comment,
    )
    return Decision.of(streams.releases(release.application, release.service), event)


def reject(state: State, request: api_pb2.RejectRequest, command: Command) -> Decision:
    problems = Problems()
    check_text(problems, "reason", request.reason, limit=MAX_REASON, required=True)
    problems.raise_if_any()
    target = resolve_approval(
        state, request.application, request.service, request.channel, request.release_id, request.approval
    )
    me = principals.key(command.actor)
    if any(principals.key(r.approver) == me for r in target.record.rejections.get(target.key, ())):
        return Decision.unchanged()
    release = target.record.release
    event = events_pb2.ApprovalRejected(
        release_id=release.id,
        application=release.application,
        service=release.service,
        channel=target.channel,
        approval=target.approval,
        approver=command.actor,
        reason=request.reason,
    )
    return Decision.of(streams.releases(release.application, release.service), event)
