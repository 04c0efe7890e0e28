"""Application: its channels as the ordered pipeline a release walks (staging → prod …).

Each step shows what stands between a release and that channel — preconditions (the
channel it waits for, approvals given of required, deploy windows), protections with the
stage they guard and their soak — and, per service, where its release is there and why,
in the planner's own words (`Why`), with the approval dialog where a person is awaited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import duration_pb2

from schemas.convoy.v1 import api_pb2, convergence_pb2, resources_pb2
from services.api import summaries
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import common

LIFECYCLE = {1: "pre-approval", 2: "post-approval", 3: "deployment", 4: "post-deployment"}
MAX_SERVICES = 50


@dataclass(frozen=True, slots=True)
class ServiceAtStep:
    service: str
    running: str
    release_id: str
    version: str
    status: str
    tone: str
    latest: str
    summary: str
    details: tuple[str, ...]
    approvals_given: int
    awaits_person: bool
    approval: str
    soak_left: int | None = None
    window_in: int | None = None


@dataclass(frozen=True, slots=True)
class Step:
    channel: str
    runtimes: tuple[str, ...]
    preconditions: tuple[str, ...]
    approvals_required: int
    protections: tuple[str, ...]
    services: tuple[ServiceAtStep, ...]


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def precondition(p: resources_pb2.Precondition) -> str:
    kind = p.WhichOneof("kind")
    if kind == "channel_stable":
        return f"after {p.channel_stable.channel} converged at the same version"
    if kind == "manual_approval":
        a = p.manual_approval
        text = f"approval “{a.name}”: {max(1, a.min_approvers)} approver(s)"
        return text + (", not the deployer" if a.exclude_deployer else "")
    if kind == "deploy_window":
        w = p.deploy_window
        days = ", ".join(w.days) if w.days else "every day"
        return f"deploy window {days} {w.start}–{w.end} {w.timezone or 'UTC'}"
    return "unknown precondition"


def protection(p: resources_pb2.ProtectionAttachment) -> str:
    stages = ", ".join(LIFECYCLE.get(s, "?") for s in p.lifecycle) or "every stage"
    text = f"{p.protection} ({stages})"
    if p.HasField("duration") and _seconds(p.duration):
        text += f", soak {present.duration(_seconds(p.duration))}"
    return text


def approval_names(channel: resources_pb2.ReleaseChannel) -> list[str]:
    return [p.manual_approval.name for p in channel.preconditions if p.WhichOneof("kind") == "manual_approval"]


def given(evidence: Sequence[api_pb2.Event], release_id: str, channel: str) -> int:
    approvers = {
        common.payload(e).get("approver", "")
        for e in evidence
        if common.short_type(e.type) == "ApprovalGranted"
        and common.payload(e).get("releaseId") == release_id
        and common.payload(e).get("channel") == channel
    }
    return len(approvers - {""})


def _latest(c: api_pb2.ChannelConvergence | None, siblings: list[api_pb2.ChannelConvergence]) -> str:
    """What became of the latest release, when it is not simply what runs."""
    if c is None or not c.release_id:
        return ""
    if c.release_id == c.running_release_id and c.status == convergence_pb2.INSTANCE_STATUS_CONVERGED:
        return ""
    return present.sentence(summaries.latest(c, siblings))


def steps(
    app: resources_pb2.Application,
    converged: Mapping[tuple[str, str], api_pb2.ChannelConvergence],
    explained: Mapping[tuple[str, str], api_pb2.Explanation],
    service_names: Sequence[str],
    now: datetime | None = None,
    live: bool = True,
) -> list[Step]:
    now = now or datetime.now(UTC)
    out: list[Step] = []
    for channel in common.pipeline(app):
        names = approval_names(channel)
        required = sum(
            max(1, p.manual_approval.min_approvers) for p in channel.preconditions if p.WhichOneof("kind") == "manual_approval"
        )
        at_step: list[ServiceAtStep] = []
        for service in service_names:
            c = converged.get((service, channel.name))
            why = explained.get((service, channel.name))
            status = c.status if c is not None else 0
            at_step.append(
                ServiceAtStep(
                    service=service,
                    running=c.running_version if c is not None else "",
                    release_id=c.release_id if c is not None else "",
                    version=c.version if c is not None else "",
                    status=present.status(status) if c is not None else "no release yet",
                    tone=present.tone(status),
                    latest=_latest(c, [v for (svc, _), v in converged.items() if svc == service]),
                    summary=present.short(why.summary, 160) if why is not None else "",
                    details=tuple(why.details) if why is not None else (),
                    approvals_given=given(why.evidence, c.release_id, channel.name) if why is not None and c is not None else 0,
                    awaits_person=status in present.WAITING_FOR_A_PERSON,
                    approval=common.only_approval(names),
                    **common.countdowns(why, now, live),
                )
            )
        out.append(
            Step(
                channel=channel.name,
                runtimes=tuple(f"{r.runtime}/{r.namespace}" if r.namespace else r.runtime for r in channel.runtimes),
                preconditions=tuple(precondition(p) for p in channel.preconditions),
                approvals_required=required,
                protections=tuple(protection(p) for p in channel.protections),
                services=tuple(at_step),
            )
        )
    return out


async def load(client: UiClient, query: Mapping[str, str], application: str) -> common.Page:
    app = await client.read("GetApplication", api_pb2.GetApplicationRequest(name=application))
    assert isinstance(app, resources_pb2.Application)
    services = [s.name for s in await common.services(client, application)]
    shown = services[:MAX_SERVICES]
    answer = await common.convergence(client, application)
    converged = {(c.service, c.channel): c for c in answer.channels}
    explained: dict[tuple[str, str], api_pb2.Explanation] = {}
    for service in shown:
        why = await client.read("Why", api_pb2.WhyRequest(application=application, service=service))
        assert isinstance(why, api_pb2.WhyResponse)
        for e in why.channels:
            explained[(service, e.channel)] = e
    return common.Page(
        "application.html",
        f"Application {application}",
        {
            "app": app,
            "steps": steps(app, converged, explained, shown, live=client.as_of is None),
            "services": services,
            "more": len(services) - len(shown),
        },
        answer.position,
    )
