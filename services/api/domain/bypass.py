"""Bypass: skipping one precondition or protection for one release in one channel.

Bypasses are audited exceptions, so each needs a reason and names exactly one thing
the channel declares. Target names:

| target                                | skips                                           |
|---------------------------------------|-------------------------------------------------|
| `precondition:<approval name>`        | the manual approval of that name                |
| `precondition:channel_stable:<channel>` | waiting for `<channel>` to be stable          |
| `precondition:deploy_window`          | the channel's deploy window(s), all together    |
| `protection:<protection name>`        | that attached protection, at every stage        |

Approval names are DNS labels, so they never contain ':' or '_' and cannot collide with
`channel_stable:…` or `deploy_window`. Bypassing the same target twice records nothing.
"""

from __future__ import annotations

from typing import Final

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import streams
from services.api.domain.channels import manual_approvals, stable_dependencies
from services.api.domain.commands import Command, Decision
from services.api.domain.errors import NotFound, Problems
from services.api.domain.state import State
from services.api.domain.targets import existing_channel, existing_service, resolve_release
from services.api.domain.validation import MAX_REASON, check_text, listing, q

PRECONDITION: Final = "precondition:"
PROTECTION: Final = "protection:"
DEPLOY_WINDOW: Final = f"{PRECONDITION}deploy_window"


def approval_target(approval: str) -> str:
    return f"{PRECONDITION}{approval}"


def channel_stable_target(channel: str) -> str:
    return f"{PRECONDITION}channel_stable:{channel}"


def protection_target(protection: str) -> str:
    return f"{PROTECTION}{protection}"


def bypass_targets(channel: resources_pb2.ReleaseChannel) -> list[str]:
    """Every target a bypass in `channel` may name, in declaration order."""
    targets = [approval_target(a.name) for a in manual_approvals(channel)]
    targets += [channel_stable_target(c) for c in stable_dependencies(channel)]
    if any(p.WhichOneof("kind") == "deploy_window" for p in channel.preconditions):
        targets.append(DEPLOY_WINDOW)
    targets += [protection_target(a.protection) for a in channel.protections]
    return list(dict.fromkeys(targets))


def is_bypassed(state: State, release_id: str, channel: str, target: str) -> bool:
    record = state.find_release(release_id)
    return record is not None and (channel, target) in record.bypasses


def bypass(state: State, request: api_pb2.BypassRequest, command: Command) -> Decision:
    existing_service(state, request.application, request.service)
    problems = Problems()
    check_text(problems, "reason", request.reason, limit=MAX_REASON, required=True)
    if not request.target.startswith((PRECONDITION, PROTECTION)):
        problems.add(
            "target",
            f"{q(request.target)} is not a bypass target: use \"precondition:<approval name>\", "
            "\"precondition:channel_stable:<channel>\", \"precondition:deploy_window\" or "
            "\"protection:<protection name>\"",
        )
    problems.raise_if_any()
    channel = existing_channel(state, request.application, request.channel)
    targets = bypass_targets(channel)
    if request.target not in targets:
        raise NotFound(
            f"target: channel {q(request.channel)} has no {q(request.target)} to bypass; it declares: "
            f"{listing(targets)}"
        )
    record = resolve_release(state, request.application, request.service, request.release_id)
    if (request.channel, request.target) in record.bypasses:
        return Decision.unchanged()
    event = events_pb2.BypassGranted(
        release_id=record.release.id,
        application=request.application,
        service=request.service,
        channel=request.channel,
        target=request.target,
        reason=request.reason,
    )
    return Decision.of(streams.releases(request.application, request.service), event)
