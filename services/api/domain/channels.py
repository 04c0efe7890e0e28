"""Release channels: what makes an application's channel list deployable.

A channel is only useful if everything it points at exists and its ordering can be
satisfied: its runtimes are registered, its protections are defined, its
`channel_stable` preconditions name sibling channels, and those preconditions form no
cycle (staging → prod → staging would wait forever). Approval names and protection
attachments are unique per channel because approvals, rejections and bypasses refer to
them by name. These checks run on ApplyApplication; the same graph helpers back the
catalog invariants the tests assert after every command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from google.protobuf import duration_pb2

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.state import State
from services.api.domain.validation import (
    MAX_DESCRIPTION,
    check_duration,
    check_enum,
    check_identifier,
    check_labels,
    check_name,
    check_text,
    duplicates,
    is_dns_label,
    listing,
    q,
)
from services.api.domain.windows import check_window

LIFECYCLES: Final[Mapping[int, str]] = {
    resources_pb2.LIFECYCLE_PRE_APPROVAL: "LIFECYCLE_PRE_APPROVAL",
    resources_pb2.LIFECYCLE_POST_APPROVAL: "LIFECYCLE_POST_APPROVAL",
    resources_pb2.LIFECYCLE_DEPLOYMENT: "LIFECYCLE_DEPLOYMENT",
    resources_pb2.LIFECYCLE_POST_DEPLOYMENT: "LIFECYCLE_POST_DEPLOYMENT",
}
FAILURE_BEHAVIORS: Final[Mapping[int, str]] = {
    resources_pb2.FAILURE_BEHAVIOR_BLOCK: "FAILURE_BEHAVIOR_BLOCK",
    resources_pb2.FAILURE_BEHAVIOR_FAIL: "FAILURE_BEHAVIOR_FAIL",
}
MAX_APPROVERS: Final = 100


def default_namespace(app: str, channel: str) -> str:
    """The namespace of a binding that names none."""
    return f"convoy-{app}-{channel}"


def stable_dependencies(channel: resources_pb2.ReleaseChannel) -> list[str]:
    """Channels this channel waits for (its `channel_stable` preconditions)."""
    return [p.channel_stable.channel for p in channel.preconditions if p.WhichOneof("kind") == "channel_stable"]


def manual_approvals(channel: resources_pb2.ReleaseChannel) -> list[resources_pb2.ManualApproval]:
    return [p.manual_approval for p in channel.preconditions if p.WhichOneof("kind") == "manual_approval"]


def precondition_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in channel → waited-for channel edges, as a closed path
    (`[a, b, a]`), or None. Edges to unknown channels and self-edges (reported on
    their own, as "a channel cannot wait for itself") are ignored."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found is not None:
                return found
    return None


def check_channels(problems: Problems, field: str, application: resources_pb2.Application, state: State) -> None:
    """Every rule about `application.release_channels`, against the catalog."""
    channels = application.release_channels
    names = [c.name for c in channels]
    for name in duplicates(names):
        problems.add(field, f"channel {q(name)} is declared twice; channel names must be unique")
    for i, channel in enumerate(channels):
        _check_channel(problems, f"{field}[{i}]", application.name, channel, set(names), state)
    graph = {c.name: stable_dependencies(c) for c in channels}
    cycle = precondition_cycle(graph)
    if cycle is not None:
        problems.add(
            field,
            f"channel_stable preconditions form a cycle ({' -> '.join(cycle)}), so none of these "
            "channels could ever deploy; remove one of them",
        )


def _check_channel(
    problems: Problems,
    field: str,
    app: str,
    channel: resources_pb2.ReleaseChannel,
    siblings: set[str],
    state: State,
) -> None:
    check_name(problems, f"{field}.name", channel.name, what="channel name")
    check_labels(problems, f"{field}.labels", channel.labels)
    if channel.max_concurrent_runtimes < 0:
        problems.add(f"{field}.max_concurrent_runtimes", "must be 0 (no limit) or more")
    _check_bindings(problems, field, app, channel, state)
    _check_preconditions(problems, field, channel, siblings)
    attached = [a.protection for a in channel.protections]
    for name in duplicates(attached):
        problems.add(
            f"{field}.protections",
            f"protection {q(name)} is attached twice; attach it once and list every lifecycle stage in it",
        )
    for i, attachment in enumerate(channel.protections):
        check_attachment(problems, f"{field}.protections[{i}]", attachment, state)


def _check_bindings(
    problems: Problems, field: str, app: str, channel: resources_pb2.ReleaseChannel, state: State
) -> None:
    if not channel.runtimes:
        problems.add(f"{field}.runtimes", "bind at least one runtime: a channel deploys to its runtimes")
    seen: set[tuple[str, str]] = set()
    for j, binding in enumerate(channel.runtimes):
        at = f"{field}.runtimes[{j}]"
        if not binding.runtime:
            problems.add(f"{at}.runtime", "required: the name of a registered runtime")
        elif binding.runtime not in state.runtimes:
            problems.add(
                f"{at}.runtime",
                f"runtime {q(binding.runtime)} is not registered; register it first (ApplyRuntime) or bind "
                f"one of: {listing(state.runtimes, empty='(no runtime is registered yet)')}",
            )
        namespace = binding.namespace or default_namespace(app, channel.name)
        if binding.namespace and not is_dns_label(binding.namespace):
            problems.add(
                f"{at}.namespace",
                f"{q(binding.namespace)} is not a valid namespace: lower-case letters, digits and '-', "
                "at most 63 characters",
            )
        elif not binding.namespace and len(namespace) > 63 and is_dns_label(channel.name):
            problems.add(
                f"{at}.namespace",
                f"the default namespace {q(namespace)} is longer than 63 characters; set a namespace",
            )
        if (binding.runtime, namespace) in seen:
            problems.add(at, f"runtime {q(binding.runtime)} is bound twice with namespace {q(namespace)}")
        seen.add((binding.runtime, namespace))


def _check_preconditions(
    problems: Problems, field: str, channel: resources_pb2.ReleaseChannel, siblings: set[str]
) -> None:
    waited: list[str] = []
    approvals: list[str] = []
    for k, precondition in enumerate(channel.preconditions):
        at = f"{field}.preconditions[{k}]"
        kind = precondition.WhichOneof("kind")
        if kind is None:
            problems.add(at, "empty precondition: set one of channel_stable, manual_approval, deploy_window")
        elif kind == "channel_stable":
            target = precondition.channel_stable.channel
            waited.append(target)
            if not target:
                problems.add(f"{at}.channel_stable.channel", "required: the channel that must be stable first")
            elif target == channel.name:
                problems.add(f"{at}.channel_stable.channel", "a channel cannot wait for itself")
            elif target not in siblings:
                problems.add(
                    f"{at}.channel_stable.channel",
                    f"channel {q(target)} is not a channel of this application; use one of: "
                    f"{listing(siblings - {channel.name})}",
                )
        elif kind == "manual_approval":
            approval = precondition.manual_approval
            approvals.append(approval.name)
            check_name(problems, f"{at}.manual_approval.name", approval.name, what="approval name")
            check_text(problems, f"{at}.manual_approval.description", approval.description, limit=MAX_DESCRIPTION)
            if not 1 <= approval.min_approvers <= MAX_APPROVERS:
                problems.add(
                    f"{at}.manual_approval.min_approvers",
                    f"must be between 1 and {MAX_APPROVERS} (got {approval.min_approvers})",
                )
        else:
            check_window(problems, f"{at}.deploy_window", precondition.deploy_window)
    for name in duplicates(waited):
        problems.add(f"{field}.preconditions", f"channel_stable {q(name)} is listed twice")
    for name in duplicates(approvals):
        problems.add(
            f"{field}.preconditions",
            f"manual approval {q(name)} is declared twice; approval names must be unique in a channel",
        )


def check_attachment(
    problems: Problems, field: str, attachment: resources_pb2.ProtectionAttachment, state: State
) -> None:
    if not attachment.protection:
        problems.add(f"{field}.protection", "required: the name of a protection")
    elif attachment.protection not in state.protections:
        problems.add(
            f"{field}.protection",
            f"protection {q(attachment.protection)} does not exist; apply it first (ApplyProtection) or "
            f"attach one of: {listing(state.protections, empty='(no protection is defined yet)')}",
        )
    if not attachment.lifecycle:
        problems.add(f"{field}.lifecycle", f"list at least one stage: {', '.join(LIFECYCLES.values())}")
    for i, stage in enumerate(attachment.lifecycle):
        check_enum(problems, f"{field}.lifecycle[{i}]", stage, LIFECYCLES, required=True, what="lifecycle stage")
    for stage_text in duplicates(str(s) for s in attachment.lifecycle):
        problems.add(f"{field}.lifecycle", f"{LIFECYCLES.get(int(stage_text), stage_text)} is listed twice")
    check_enum(
        problems, f"{field}.failure_behavior", attachment.failure_behavior, FAILURE_BEHAVIORS,
        required=False, what="failure behavior",
    )
    timed = {
        "delay": check_duration(problems, field, attachment, "delay") and _positive(attachment.delay),
        "duration": check_duration(problems, field, attachment, "duration") and _positive(attachment.duration),
    }
    if resources_pb2.LIFECYCLE_POST_DEPLOYMENT not in attachment.lifecycle:
        for name in (n for n, positive in timed.items() if positive):
            problems.add(
                f"{field}.{name}",
                "applies only to post-deployment checks; add LIFECYCLE_POST_DEPLOYMENT or remove it",
            )
    for key in sorted(attachment.parameters):
        check_identifier(problems, f"{field}.parameters[{q(key)}]", key, what="parameter name")


def _positive(duration: duration_pb2.Duration) -> bool:
    return duration.seconds > 0 or duration.nanos > 0
