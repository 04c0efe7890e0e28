"""`Why`: explain from the log why a service is where it is in each channel.

The planner writes its reasons into every status change ("waiting for 2 approvals of
prod-signoff (1 given: alice at 14:02)", "rolled back to v1: crash loop on runtime eu-1
at 14:07 (back-off restarting failed container)"). This query reads them back with the
recorded events that prove them — the release, the approvals, rejections, bypasses and
rollback requests for it, the planner's status changes and timers, and the agents'
latest reports, each change-ticket gate's ticket and last poll — and makes times relative
to now ("soak: 3m40s left"). Everything comes
from streams of the log; nothing is recomputed, so the answer is what was decided.

An input of the service that the planner rejected (PlannerInputRejected: planning it
raised, so nothing was decided for it) is named in every channel's answer, with the
event that records it: otherwise a deploy the planner never acted on would look ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from eventstore.codec import EventRegistry
from eventstore.types import EventStore, RecordedEvent
from schemas.convoy.v1 import api_pb2, convergence_pb2, events_pb2, resources_pb2
from services.api.convergence import ConvergenceView
from services.api.domain import State
from services.api.domain.errors import NotFound
from services.api.events import to_api

MAX_EVIDENCE = 60
OBSERVATIONS_PER_TARGET = 3


def _status(value: int) -> str:
    return convergence_pb2.InstanceStatus.Name(value).removeprefix("INSTANCE_STATUS_")


def _left(until: datetime, now: datetime) -> str:
    seconds = max(int((until - now).total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "") + f"{seconds:02d}s"


async def explain(
    store: EventStore,
    registry: EventRegistry,
    catalog: State,
    view: ConvergenceView,
    versions: Mapping[str, int],
    request: api_pb2.WhyRequest,
    *,
    position: int = 0,
    now: datetime | None = None,
) -> api_pb2.WhyResponse:
    """Explain as of `position` (the read models' position; their streams are read no
    further), with times left counted from `now`."""
    now = now or datetime.now(UTC)
    app, service = request.application, request.service
    application = catalog.applications.get(app)
    if application is None:
        raise NotFound(f"application {app!r} does not exist")
    if (app, service) not in catalog.services:
        raise NotFound(f"service {service!r} of application {app!r} does not exist")
    channels = [c.name for c in application.release_channels]
    if request.channel:
        if request.channel not in channels:
            raise NotFound(f"application {app!r} has no channel {request.channel!r}; channels: {', '.join(channels)}")
        channels = [request.channel]
    upto = position or None
    releases = await store.read_stream(f"release/{app}/{service}", as_of_position=upto)
    rejected = await _rejected(store, registry, app, service, upto)
    response = api_pb2.WhyResponse(position=position)
    for name in channels:
        answer = await _channel(store, registry, view, versions, releases, app, service, name, now, upto)
        for recorded, message in rejected:
            answer.details.append(
                f"the planner could not plan {message.event_type.rsplit('.', 1)[-1]} by {message.actor} at position "
                f"{message.position} ({message.error}); it decided nothing for it (planner version "
                f"{message.planner_version}) — repeat the command, or report the bug"
            )
            answer.evidence.append(to_api(registry, recorded))
        response.channels.append(answer)
    return response


async def _rejected(
    store: EventStore, registry: EventRegistry, app: str, service: str, upto: int | None
) -> list[tuple[RecordedEvent, events_pb2.PlannerInputRejected]]:
    """The planner's rejected inputs about this service (a handful in a healthy log)."""
    found = []
    after = 0
    while True:
        batch = await store.read_all(after=after, limit=1000, categories=["planner"], to_position=upto)
        for recorded in batch:
            message = registry.decode(recorded).message
            if (
                isinstance(message, events_pb2.PlannerInputRejected)
                and message.application == app
                and message.service in ("", service)
            ):
                found.append((recorded, message))
        if len(batch) < 1000:
            return found[-MAX_EVIDENCE:]
        after = batch[-1].position


async def _gates(
    store: EventStore, registry: EventRegistry, app: str, service: str, channel: str, release_id: str, upto: int | None
) -> list[tuple[str, list[RecordedEvent]]]:
    """Per change-ticket gate of the release here: its ticket and last poll, with the
    request and that poll as evidence."""
    requested: dict[str, tuple[RecordedEvent, events_pb2.ExternalApprovalRequested]] = {}
    last: dict[str, tuple[RecordedEvent, events_pb2.ExternalApprovalPolled]] = {}
    tickets: dict[str, str] = {}
    closed: dict[str, str] = {}
    for recorded in await store.read_stream(f"gate/{app}/{service}/{channel}", as_of_position=upto):
        message = registry.decode(recorded).message
        if getattr(message, "release_id", "") != release_id:
            continue
        if isinstance(message, events_pb2.ExternalApprovalRequested):
            requested[message.check_id] = (recorded, message)
        elif isinstance(message, events_pb2.ExternalApprovalPolled):
            last[message.check_id] = (recorded, message)
            tickets[message.check_id] = message.ticket or tickets.get(message.check_id, "")
        elif isinstance(message, events_pb2.ExternalApprovalClosed):
            closed[message.check_id] = message.reason
    found = []
    for check_id, (recorded, request) in requested.items():
        ticket = f"ticket {tickets[check_id]}" if tickets.get(check_id) else "ticket not known yet"
        line = f"change gate {request.protection}: {ticket}"
        evidence = [recorded]
        if check_id in last:
            polled, poll = last[check_id]
            outcome = resources_pb2.ExternalApprovalOutcome.Name(poll.outcome).removeprefix("EXTERNAL_APPROVAL_OUTCOME_")
            line += f"; poll {poll.attempt} at {poll.polled_at.ToDatetime(tzinfo=UTC):%H:%M:%S} UTC: {outcome.lower()}"
            line += f" ({poll.detail})" if poll.detail else ""
            evidence.append(polled)
        else:
            line += "; not polled yet"
        if check_id in closed:
            line += f"; closed: {closed[check_id]}"
        found.append((line, evidence))
    return found


async def _channel(
    store: EventStore,
    registry: EventRegistry,
    view: ConvergenceView,
    versions: Mapping[str, int],
    releases: list[RecordedEvent],
    app: str,
    service: str,
    channel: str,
    now: datetime,
    upto: int | None,
) -> api_pb2.Explanation:
    current = view.channel(app, service, channel)
    if current is None or not current.release_id:
        return api_pb2.Explanation(channel=channel, summary="no release has reached this channel yet")
    release_id = current.release_id
    out = api_pb2.Explanation(channel=channel, release_id=release_id, version=current.version, status=current.status)
    evidence: list[RecordedEvent] = []
    for recorded in releases:
        message = registry.decode(recorded).message
        if isinstance(message, events_pb2.ReleaseCreated) and message.release.id == release_id:
            evidence.append(recorded)
        elif isinstance(message, events_pb2.ApprovalGranted | events_pb2.ApprovalRejected | events_pb2.BypassGranted):
            if message.release_id == release_id and message.channel == channel:
                evidence.append(recorded)
        elif isinstance(message, events_pb2.RollbackRequested) and (not message.channels or channel in message.channels):
            if recorded.position >= (evidence[0].position if evidence else 0):
                evidence.append(recorded)
    timers: dict[str, tuple[str, datetime]] = {}
    for recorded in await store.read_stream(f"convergence/{app}/{service}/{channel}", as_of_position=upto):
        message = registry.decode(recorded).message
        if isinstance(message, events_pb2.InstanceStatusChanged) and message.release_id == release_id:
            evidence.append(recorded)
        elif isinstance(message, events_pb2.TimerScheduled) and message.release_id == release_id:
            timers[message.purpose] = (message.timer_id, message.fire_at.ToDatetime(tzinfo=UTC))
    for line, recorded_gate in await _gates(store, registry, app, service, channel, release_id, upto):
        out.details.append(line)
        evidence += recorded_gate
    for target in current.targets:
        stream = f"observation/{target.runtime}/{target.namespace}/{app}/{service}"
        version = versions.get(stream, 0)
        if version:
            recent = await store.read_stream(
                stream, from_version=max(1, version - OBSERVATIONS_PER_TARGET + 1), to_version=version
            )
            evidence += recent
        line = f"{target.runtime}/{target.namespace}: {_status(target.status)} {target.version}"
        out.details.append(line + (f" — {target.reason}" if target.reason else ""))

    summary = f"{_status(current.status)}: {current.reason}" if current.reason else _status(current.status)
    if current.status == convergence_pb2.INSTANCE_STATUS_VERIFYING and "soak" in timers:
        _, until = timers["soak"]
        if until > now:
            summary += f" ({_left(until, now)} left)"
            out.details.append(f"soak: {_left(until, now)} left (ends {until:%H:%M:%S} UTC)")
            out.soak_ends_at.FromDatetime(until)
    if current.status == convergence_pb2.INSTANCE_STATUS_WAITING_PRECONDITIONS and "window" in timers:
        _, opens = timers["window"]
        if opens > now:
            out.details.append(f"deploy window opens in {_left(opens, now)} ({opens:%a %H:%M} UTC)")
            out.window_opens_at.FromDatetime(opens)
    out.summary = summary
    evidence.sort(key=lambda e: e.position)
    for recorded in evidence[-MAX_EVIDENCE:]:
        out.evidence.append(to_api(registry, recorded))
    return out
