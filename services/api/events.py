"""The event log through the API: ListEvents for audit and replay, Watch to follow it.

Both read the store itself (the projection keeps only the catalog), in global order, and
filter in this process. A scan is bounded per call, so a filter that matches rarely
cannot turn one request into a full-log read: ListEvents answers with what it found and
`last_position` — where the scan stopped — to continue from. Watch sleeps on the
projection's progress signal (which NOTIFY wakes) instead of holding its own
database listener, so a thousand watchers cost no connections while idle.

Stored events are rendered in one place, `to_api`, which replaces secret-derived values
(fields marked `secret` in the schema: token and credential hashes) unless the caller is
an admin — the handler layer says which (services.api.redaction); the default is redacted.

An application's events are every event about it: the commands on its catalog streams
(`app/<a>`, `service/<a>/…`, `release/<a>/…`, `resource/app/<a>/…`, see
services.api.domain.streams), the planner's decisions (`convergence/<a>/…`, `timer/<a>/…`,
`intent/<runtime>/<namespace>/<a>/…`) and the agents' observations
(`observation/<runtime>/<namespace>/<a>/…`), all told by their stream id; and the
planner's PlannerInputRejected (on `planner/<checkpoint>`), told by its `application`
field — the only category whose payload is read to filter, and a rare one. The store
selects the categories (an index in PostgreSQL); the stream id picks the application.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timezone
from typing import Final

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from eventstore.codec import EventRegistry
from eventstore.errors import ConvoyError
from eventstore.types import EventStore, RecordedEvent
from schemas.convoy.v1 import api_pb2, events_pb2
from services.api import redaction
from services.api.errors import invalid
from services.api.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.api.projection import Projection

SCAN_BUDGET: Final = 10_000
"""Events one ListEvents call reads at most, matching or not."""
BATCH: Final = 500
APP_CATEGORIES: Final = (
    "app", "service", "release", "resource", "convergence", "timer", "intent", "observation", "planner"
)
"""Stream categories that hold events about an application (infrastructure ones do not)."""
WATCH_IDLE: Final = 15.0
"""Seconds a Watch sleeps before re-checking (for a stopped server or a dead client)."""


def application_of(stream_id: str) -> str:
    """The application a stream belongs to ("" for infrastructure streams and the
    planner's own, whose events name theirs in the payload: `EventFilter.matches`)."""
    parts = stream_id.split("/")
    if parts[0] in ("app", "service", "release", "convergence", "timer") and len(parts) >= 2:
        return parts[1]
    if parts[0] in ("intent", "observation") and len(parts) >= 4:  # <category>/<runtime>/<namespace>/<app>/…
        return parts[3]
    if parts[0] == "resource" and len(parts) >= 3 and parts[1] == "app":
        return parts[2]
    return ""


def service_of(stream_id: str) -> str:
    """The service a stream belongs to ("" when it names none)."""
    parts = stream_id.split("/")
    if parts[0] in ("service", "release", "convergence", "timer") and len(parts) >= 3:
        return parts[2]
    if parts[0] in ("intent", "observation") and len(parts) >= 5:
        return parts[4]
    return ""


def _channel_field(message: Message) -> str:
    """An event's `channel`, at its top level or one message down (an observation's, an
    intent's spec); "" when it has none."""
    fields = message.DESCRIPTOR.fields_by_name
    if "channel" in fields and isinstance(getattr(message, "channel"), str):
        return str(getattr(message, "channel"))
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and not field.is_repeated:
            inner = getattr(message, field.name)
            if "channel" in inner.DESCRIPTOR.fields_by_name and isinstance(getattr(inner, "channel"), str):
                return str(getattr(inner, "channel"))
    return ""


class EventFilter:
    def __init__(
        self,
        *,
        registry: EventRegistry,
        application: str = "",
        service: str = "",
        channel: str = "",
        actor: str = "",
        types: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        self._registry = registry
        self.application = application
        self.service = service
        self.channel = channel
        self.actor = actor
        self.types = frozenset(types)
        self.since = since
        self.until = until

    @property
    def categories(self) -> tuple[str, ...] | None:
        return APP_CATEGORIES if self.application else None

    def matches(self, event: RecordedEvent) -> bool:
        if self.application and self._application(event) != self.application:
            return False
        if self.service and service_of(event.stream_id) != self.service:
            return False
        if self.channel and self._channel(event) != self.channel:
            return False
        if self.actor and event.actor != self.actor:
            return False
        if self.types and event.type not in self.types and event.type.rsplit(".", 1)[-1] not in self.types:
            return False
        if self.since is not None and event.recorded_at < self.since:
            return False
        return self.until is None or event.recorded_at <= self.until

    def _channel(self, event: RecordedEvent) -> str:
        parts = event.stream_id.split("/")
        if parts[0] in ("convergence", "timer") and len(parts) >= 4:
            return parts[3]
        try:
            return _channel_field(self._registry.decode(event).message)
        except ConvoyError:
            return ""

    def _application(self, event: RecordedEvent) -> str:
        if event.category != "planner":
            return application_of(event.stream_id)
        try:
            message = self._registry.decode(event).message
        except ConvoyError:
            return ""
        return message.application if isinstance(message, events_pb2.PlannerInputRejected) else ""


def to_api(registry: EventRegistry, recorded: RecordedEvent, *, reveal_secrets: bool = False) -> api_pb2.Event:
    """The API's view of a stored event, with the payload upcast and as proto3 JSON
    (empty when this build cannot read it); secret-derived values are redacted unless
    `reveal_secrets` (admins, see services.api.redaction)."""
    try:
        message = registry.decode(recorded).message
        if not reveal_secrets:
            message = redaction.redact(message)
        payload = json_format.MessageToJson(message, indent=None, sort_keys=True)
    except ConvoyError:
        payload = ""
    event = api_pb2.Event(
        position=recorded.position,
        stream_id=recorded.stream_id,
        version=recorded.version,
        event_id=str(recorded.event_id),
        type=recorded.type,
        schema_version=recorded.schema_version,
        actor=recorded.actor,
        causation_id=str(recorded.causation_id or ""),
        correlation_id=str(recorded.correlation_id or ""),
        json=payload,
    )
    event.recorded_at.FromDatetime(recorded.recorded_at)
    return event


def _time(field: str, value: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    try:
        return value.ToDatetime(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise invalid(field, "is not a valid time") from None


async def list_events(
    store: EventStore, registry: EventRegistry, request: api_pb2.ListEventsRequest, *, reveal_secrets: bool = False
) -> api_pb2.ListEventsResponse:
    if request.after_position < 0:
        raise invalid("after_position", "must not be negative")
    if request.limit < 0:
        raise invalid("limit", "must not be negative (0 = the default, 100)")
    limit = min(request.limit or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if (request.service or request.channel) and not request.application:
        raise invalid("service" if request.service else "channel", "needs application (names are per application)")
    selection = EventFilter(
        registry=registry,
        application=request.application,
        service=request.service,
        channel=request.channel,
        actor=request.actor,
        types=request.types,
        since=_time("since", request.since, request.HasField("since")),
        until=_time("until", request.until, request.HasField("until")),
    )
    if request.before_position < 0:
        raise invalid("before_position", "must not be negative")
    if request.before_position and request.after_position:
        raise invalid("before_position", "set after_position or before_position, not both")
    if request.before_position:
        return await _newest_first(store, registry, selection, request.before_position, limit, reveal_secrets)
    found: list[api_pb2.Event] = []
    position = request.after_position
    scanned = 0
    while len(found) < limit and scanned < SCAN_BUDGET:
        batch = await store.read_all(after=position, limit=BATCH, categories=selection.categories)
        for recorded in batch:
            scanned += 1
            position = recorded.position
            if selection.matches(recorded):
                found.append(to_api(registry, recorded, reveal_secrets=reveal_secrets))
                if len(found) >= limit:
                    break
        if len(batch) < BATCH:
            break
    return api_pb2.ListEventsResponse(events=found, last_position=position)


async def _newest_first(
    store: EventStore,
    registry: EventRegistry,
    selection: EventFilter,
    before: int,
    limit: int,
    reveal_secrets: bool,
) -> api_pb2.ListEventsResponse:
    """Matching events before `before`, the latest first, scanning back a window of
    BATCH positions at a time (the store reads forward only; a window of BATCH positions
    holds at most BATCH events, so a forward read of it misses none)."""
    found: list[api_pb2.Event] = []
    upper = min(before - 1, await store.head())
    position = upper + 1
    scanned = 0
    while upper > 0 and len(found) < limit and scanned < SCAN_BUDGET:
        low = max(0, upper - BATCH)
        batch = [r for r in await store.read_all(after=low, limit=BATCH, categories=selection.categories) if r.position <= upper]
        for recorded in reversed(batch):
            scanned += 1
            position = recorded.position
            if selection.matches(recorded):
                found.append(to_api(registry, recorded, reveal_secrets=reveal_secrets))
                if len(found) >= limit:
                    break
        if len(found) < limit:
            position = low + 1
        upper = low
    return api_pb2.ListEventsResponse(events=found, last_position=position if upper > 0 or len(found) >= limit else 0)


async def watch(
    store: EventStore,
    registry: EventRegistry,
    projection: Projection,
    request: api_pb2.WatchRequest,
    *,
    open: Callable[[], bool] = lambda: True,
    reveal_secrets: bool = False,
) -> AsyncIterator[api_pb2.Event]:
    """An application's events (every event when `application` is empty) after
    `after_position`, then each new one as it commits, until the client goes away or the
    server stops."""
    if request.after_position < 0:
        raise invalid("after_position", "must not be negative")
    selection = EventFilter(registry=registry, application=request.application)
    position = request.after_position
    while projection.running and open():
        # The projection folds every event, so its position passing what it was before
        # this read means the log has moved (in some category): read again from here.
        seen = projection.position
        batch = await store.read_all(after=position, limit=BATCH, categories=selection.categories)
        for recorded in batch:
            position = recorded.position
            if selection.matches(recorded):
                yield to_api(registry, recorded, reveal_secrets=reveal_secrets)
        if len(batch) < BATCH:
            await projection.wait_beyond(max(seen, position), timeout=WATCH_IDLE)

