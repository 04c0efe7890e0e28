"""Release: one service's release, per channel and runtime — the steps taken, the one it
waits on, the planner's `why`, and links to the recorded events that prove each step.

The steps are the evidence `Why` cites (release created, approvals, intents, the agents'
observations, status changes), in log order, each a permalink into the history; the
step it waits on is the channel's current status with its reason, whole here (tables
elsewhere show its first sentence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api import summaries
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import application as application_view
from services.api.ui.views import common

MAX_RELEASES = 20


@dataclass(frozen=True, slots=True)
class Evidence:
    position: int
    kind: str
    actor: str
    recorded: str
    note: str


@dataclass(frozen=True, slots=True)
class Target:
    runtime: str
    status: str
    tone: str
    version: str
    running: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelStep:
    channel: str
    release_id: str
    version: str
    running: str
    status: str
    tone: str
    latest: str
    summary: str
    details: tuple[str, ...]
    targets: tuple[Target, ...]
    evidence: tuple[Evidence, ...]
    awaits_person: bool
    approval: str
    soak_left: int | None = None
    window_in: int | None = None


def note(event: api_pb2.Event) -> str:
    """What one piece of evidence says, in a few words."""
    body = common.payload(event)
    kind = common.short_type(event.type)
    if kind == "InstanceStatusChanged":
        where = (body.get("target") or {}).get("runtime", "")
        status = str(body.get("newStatus", "")).removeprefix("INSTANCE_STATUS_").lower().replace("_", " ")
        text = f"{body.get('channel', '')}{' on ' + where if where else ''}: {status}"
        reason = present.short(str(body.get("reason", "")), 120)
        return text + (f" — {reason}" if reason else "")
    if kind in ("ApprovalGranted", "ApprovalRejected"):
        words = "approved" if kind == "ApprovalGranted" else "rejected"
        extra = body.get("comment") or body.get("reason") or ""
        return f"{body.get('approver', '')} {words} {body.get('channel', '')}" + (f": {present.short(str(extra), 80)}" if extra else "")
    if kind == "ReleaseCreated":
        release = body.get("release") or {}
        return f"release {release.get('version', '')} created by {release.get('createdBy', '') or event.actor}"
    for key in ("reason", "status", "phase", "version"):
        if body.get(key):
            return f"{key}: {present.short(str(body[key]), 120)}"
    return ""


def evidence(events: Sequence[api_pb2.Event]) -> tuple[Evidence, ...]:
    return tuple(
        Evidence(e.position, common.short_type(e.type), e.actor, present.when(e.recorded_at), note(e))
        for e in sorted(events, key=lambda e: e.position)
    )


def channel_steps(
    order: Sequence[str],
    names: Mapping[str, list[str]],
    converged: Mapping[str, api_pb2.ChannelConvergence],
    explained: Mapping[str, api_pb2.Explanation],
    now: datetime | None = None,
    live: bool = True,
) -> list[ChannelStep]:
    now = now or datetime.now(UTC)
    out: list[ChannelStep] = []
    for channel in order:
        c = converged.get(channel)
        why = explained.get(channel)
        status = c.status if c is not None else 0
        approvals = names.get(channel, [])
        out.append(
            ChannelStep(
                channel=channel,
                release_id=c.release_id if c is not None else "",
                version=c.version if c is not None else "",
                running=c.running_version if c is not None else "",
                status=present.status(status) if c is not None else "no release yet",
                tone="none" if c is not None and "not promoted" in summaries.latest(c, list(converged.values())) else present.tone(status),
                latest=present.sentence(summaries.latest(c, list(converged.values()))) if c is not None else "",
                summary=why.summary if why is not None else "",
                details=tuple(why.details) if why is not None else (),
                targets=tuple(
                    Target(
                        t.runtime + (f"/{t.namespace}" if t.namespace else ""),
                        present.status(t.status),
                        present.tone(t.status),
                        t.version,
                        t.running_version,
                        present.sentence(summaries.clip(t.reason)),
                    )
                    for t in (c.targets if c is not None else ())
                ),
                evidence=evidence(why.evidence) if why is not None else (),
                awaits_person=status in present.WAITING_FOR_A_PERSON,
                approval=common.only_approval(approvals),
                **common.countdowns(why, now, live),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ImageCell:
    image: str
    """As asked for (`host/repository:tag`), or the configured image when none was pinned."""
    digest: str
    """The digest the release runs ("" when the image is on no declared registry)."""

    @property
    def short(self) -> str:
        return self.digest[:19]


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    version: str
    id: str
    created_by: str
    images: tuple[ImageCell, ...]


def release_row(release: resources_pb2.Release) -> ReleaseRow:
    """A release as the table shows it: per program, the tag asked for and the digest run."""
    pinned = {pin.program: pin for pin in release.images}
    cells = []
    for program in release.config.programs:
        pin = pinned.get(program.name)
        if pin is not None:
            cells.append(ImageCell(pin.image, pin.digest))
        elif program.image:
            cells.append(ImageCell(program.image, ""))
    return ReleaseRow(release.version, release.id, release.created_by, tuple(cells))


async def load(client: UiClient, query: Mapping[str, str], application: str, service: str) -> common.Page:
    app = await client.read("GetApplication", api_pb2.GetApplicationRequest(name=application))
    config = await client.read("GetService", api_pb2.GetServiceRequest(application=application, name=service))
    releases = await client.read(
        "ListReleases",
        api_pb2.ListReleasesRequest(application=application, service=service, page=api_pb2.PageRequest(page_size=1000)),
    )
    assert isinstance(releases, api_pb2.ListReleasesResponse)
    answer = await common.convergence(client, application, service)
    why = await client.read("Why", api_pb2.WhyRequest(application=application, service=service))
    assert isinstance(why, api_pb2.WhyResponse)
    order = [c.name for c in common.pipeline(app)]  # type: ignore[arg-type]
    names = {c.name: application_view.approval_names(c) for c in app.release_channels}  # type: ignore[attr-defined]
    return common.Page(
        "release.html",
        f"{application}/{service}",
        {
            "application": application,
            "service": service,
            "config": config,
            "releases": [release_row(r) for r in list(reversed(releases.releases))[:MAX_RELEASES]],
            "release_count": len(releases.releases),
            "channels": channel_steps(
                order, names, {c.channel: c for c in answer.channels}, {e.channel: e for e in why.channels},
                live=client.as_of is None,
            ),
        },
        why.position or answer.position,
    )
