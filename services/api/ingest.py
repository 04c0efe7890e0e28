"""Observation ingest: agents' reports, from JetStream into the store, exactly once.

DESIGN.md #5: observations come back as events, so the planner sees one ordered log. A
durable subscription on the observations stream appends each Observation as
`ObservationRecorded` on `observation/<runtime>/<namespace>/<application>/<service>`,
actor `agent:<runtime>`, with the event id derived from the observation id (uuid5): a
redelivery, or an agent's retried publish, appends the same event again, which the store
answers with the original position and writes nothing.

Trust: the runtime named in the subject is the one NATS let the agent publish for (its
permissions allow only `convoy.<i>.obs.<its runtime>.>`), so an observation whose
`runtime` field names another runtime is an agent speaking for someone else — rejected.
Rejected and malformed messages go to the dead-letter subject at once with the reason
(retrying cannot fix them) and nothing is written. An unavailable store is waited out in
place: the batch is committed again, with backoff, until the store takes it, and nothing
else is pulled meanwhile — a nak'd observation would come back after later reports of the
same workload had been recorded, out of order. Heartbeats (core NATS
`convoy.<instance>.hb.<runtime>`) are kept in memory only — the last one per runtime — for
liveness queries and GetRuntime's `agent` (whether the agent's runtime answers it); a
malformed one is ignored with a warning, an oversized error text in one is cut to
`HEARTBEAT_ERROR_LIMIT` bytes.

Throughput and order: one durable subscription in batch mode. Everything a pull has
brought (up to `settings.batch` messages, 500 by default) is checked, then recorded in one store commit —
one `AppendRequest` per observation, in arrival order, so each workload's observations
keep the order they were published in and a redelivered one is recognised on its own
(the store answers it with its original position) — and only then acked. If the commit is
refused as a whole (an observation id already recorded with other details, which fails
every write it is part of, or input the store will not take), the batch is recorded again
observation by observation, where such an observation counts as a duplicate (the first
report stands) or is dead-lettered. A rejected message is dead-lettered without touching
the rest of its batch.

One consumer, one batch in flight: with batching it records thousands of observations per
second (bench/planner.py, docs/performance.md), and the log order is the publish order.
Several workers pulling from one consumer would record one workload's observations out of
order, so there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventstore import bus, natsauth
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.errors import DuplicateEventId, InvalidInput, Unavailable
from eventstore.subscriptions import (
    H_DLQ_CONSUMER,
    H_DLQ_DELIVERIES,
    H_DLQ_ERROR,
    H_DLQ_MSG_ID,
    H_DLQ_SEQUENCE,
    H_DLQ_STREAM,
    H_DLQ_SUBJECT,
    Delivery,
    DurableSubscription,
    SubscriptionSettings,
)
from eventstore.tasks import Backoff, describe
from eventstore.types import AppendRequest, EventStore, NewEvent, validate_stream_id
from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.api.domain.errors import clip, quote

log = structlog.get_logger("convoy.api.ingest")

EVENT_ID_NAMESPACE: Final = uuid.UUID("0b8f3a52-5c1e-4a51-8f0e-3f9b7a0c2d64")
"""uuid5 namespace: event id = uuid5(EVENT_ID_NAMESPACE, observation id)."""
HEARTBEAT: Final = "heartbeat"
DURABLE: Final = "api-ingest"
SETTINGS: Final = SubscriptionSettings(batch=500, max_ack_pending=2_000)
"""Up to 500 observations per pull, so per commit: on a loaded 2-core machine a batch
takes tens of milliseconds whatever its size, and 100 per batch could not keep up with a
fleet rollout (bench/planner.py); 1,000 was no faster. Two pulls may be pending at once
(the next is requested while a batch is recorded), hence max_ack_pending."""


UNEXPLAINED_RETRIES: Final = 3
"""In-place retries of a commit that failed for no reason the store named, before the
batch is handed back to the subscription's nak / dead-letter path."""

_T = TypeVar("_T")
HEARTBEAT_ERROR_LIMIT: Final = 1024
"""UTF-8 bytes of a heartbeat's runtime error kept (an agent cuts it there too)."""
DEFAULT_HEARTBEAT_INTERVAL: Final = 5.0
"""The interval assumed for a heartbeat that does not say (an older agent): the agent's default."""
MAX_HEARTBEAT_INTERVAL: Final = 3600.0
MISSED_BEATS: Final = 3
"""An agent counts as connected while its last heartbeat is at most this many intervals old."""


class Rejected(InvalidInput):
    """This message can never be ingested (malformed, or an agent speaking for another
    runtime): dead-letter it."""


@dataclass(frozen=True, slots=True)
class HeartbeatSeen:
    runtime: str
    agent_id: str
    sent_at: datetime
    workloads: int
    received: float
    """`time.monotonic()` when it arrived."""
    received_at: datetime = datetime.min.replace(tzinfo=UTC)
    """The wall clock when it arrived (UTC)."""
    interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between the agent's heartbeats."""
    runtime_availability: int = convergence_pb2.Heartbeat.RUNTIME_AVAILABILITY_UNSPECIFIED
    runtime_unavailable_since: datetime | None = None
    runtime_error: str = ""

    def age(self, now: float) -> float:
        """Seconds since it arrived, `now` being `time.monotonic()`."""
        return max(0.0, now - self.received)

    def connected(self, now: float) -> bool:
        """At most `MISSED_BEATS` intervals old."""
        return self.age(now) <= MISSED_BEATS * self.interval


@dataclass(slots=True)
class _Pending:
    """An observation of a batch, checked and encoded, waiting for the commit."""

    index: int
    delivery: Delivery
    observation_id: str
    stream: str
    event: NewEvent
    repeats: list[tuple[int, Delivery]] = field(default_factory=list)
    """Later messages of the same batch carrying the same observation id."""

    @property
    def indexes(self) -> list[int]:
        return [self.index, *(i for i, _ in self.repeats)]


_KNOWN_KINDS: Final = frozenset(convergence_pb2.ObservationKind.values()) - {convergence_pb2.OBSERVATION_KIND_UNSPECIFIED}


def event_id(observation_id: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_ID_NAMESPACE, observation_id)


def stream_of(observation: convergence_pb2.Observation) -> str:
    o = observation
    return validate_stream_id(f"observation/{o.runtime}/{o.namespace}/{o.application}/{o.service}")


class ObservationIngest:
    """`await start()` … `await stop()`. `last_heartbeat(runtime)` / `alive(runtime, within=)`."""

    def __init__(
        self,
        *,
        nc: Client,
        store: EventStore,
        instance: str,
        registry: EventRegistry | None = None,
        settings: SubscriptionSettings = SETTINGS,
        durable: str = DURABLE,
        retry_base: float = 0.05,
        retry_cap: float = 2.0,
    ) -> None:
        """`retry_base`/`retry_cap`: the backoff of a commit retried in place while the
        store is unavailable."""
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self.instance = bus.validate_instance(instance)
        self._registry = registry or convoy_registry()
        self._prefix = f"convoy.{self.instance}.obs."
        self._subscription = DurableSubscription(
            nc,
            instance=instance,
            stream=bus.observations_stream(instance),
            durable=durable,
            filter_subjects=[bus.observations_subjects(instance)],
            batch_handler=self._handle_batch,
            settings=settings,
        )
        self._heartbeats: dict[str, HeartbeatSeen] = {}
        self._heartbeat_sub: Subscription | None = None
        self.recorded = 0
        self.duplicates = 0
        self.rejected = 0
        self.commits = 0
        """Store commits made (batches, and single appends when a batch fell back)."""
        self.store_retries = 0
        """Commits retried in place because the store was unavailable."""
        self._retry_base, self._retry_cap = retry_base, retry_cap

    async def start(self) -> None:
        await self._subscription.start()
        # Heartbeats arrive on core NATS (not stored anywhere): the subject names the
        # runtime, which the agent's NATS permissions tie to its credential.
        self._heartbeat_sub = await bus.guarded(
            "subscribing to heartbeats",
            lambda: self._nc.subscribe(natsauth.heartbeat_subjects(self.instance), cb=self._on_heartbeat),
        )

    async def stop(self) -> None:
        sub, self._heartbeat_sub = self._heartbeat_sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscriptions left
                await sub.unsubscribe()
        await self._subscription.stop()

    async def _on_heartbeat(self, msg: Msg) -> None:
        runtime = natsauth.runtime_of_heartbeat(self.instance, msg.subject)
        if runtime is None:
            return
        try:
            self._heartbeat(runtime, msg.data)
        except Rejected as rejected:
            log.warning("heartbeat ignored", runtime=runtime, reason=str(rejected))

    async def __aenter__(self) -> ObservationIngest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._subscription.running

    # -- liveness ------------------------------------------------------------------------

    def last_heartbeat(self, runtime: str) -> HeartbeatSeen | None:
        return self._heartbeats.get(runtime)

    def alive(self, runtime: str, *, within: float) -> bool:
        """A heartbeat from `runtime`'s agent arrived in the last `within` seconds."""
        seen = self._heartbeats.get(runtime)
        return seen is not None and time.monotonic() - seen.received <= within

    # -- handling ------------------------------------------------------------------------

    async def _handle_batch(self, deliveries: Sequence[Delivery]) -> list[Exception | None]:
        """Record a pull's observations in one commit; answer an outcome per message."""
        outcomes: list[Exception | None] = [None] * len(deliveries)
        pending: list[_Pending] = []
        first: dict[uuid.UUID, _Pending] = {}
        for index, delivery in enumerate(deliveries):
            try:
                item = self._prepare(index, delivery)
            except Rejected as rejected:
                try:
                    await self._dead_letter(delivery, str(rejected))
                except Exception as error:  # noqa: BLE001 - the bus is down: retry this one later
                    outcomes[index] = error
                continue
            except Exception as error:  # noqa: BLE001 - unexpected: this message retries, the batch goes on
                outcomes[index] = error
                continue
            if item is None:
                continue  # a heartbeat
            original = first.get(item.event.event_id)
            if original is not None:  # the same observation twice in one pull: recorded once
                original.repeats.append((index, delivery))
                continue
            first[item.event.event_id] = item
            pending.append(item)
        if pending:
            await self._record(pending, outcomes)
        return outcomes

    def _prepare(self, index: int, delivery: Delivery) -> _Pending | None:
        """The observation's event and stream; None for a heartbeat (noted here)."""
        runtime, rest = self._parse_subject(delivery.subject)
        if rest == [HEARTBEAT]:
            self._heartbeat(runtime, delivery.data)
            return None
        try:
            observation = convergence_pb2.Observation.FromString(delivery.data)
        except DecodeError as error:
            raise Rejected(f"payload is not an Observation: {error}") from error
        stream = self._check(runtime, observation)
        try:
            event = self._registry.encode(  # validates the event
                events_pb2.ObservationRecorded(observation=observation),
                actor=f"agent:{runtime}",
                event_id=event_id(observation.observation_id),
            )
        except InvalidInput as error:
            raise Rejected(f"the store refused the observation: {error}") from error
        return _Pending(index, delivery, observation.observation_id, stream, event)

    async def _record(self, pending: list[_Pending], outcomes: list[Exception | None]) -> None:
        try:
            results = await self._commit_in_place(pending, lambda: self._store.commit([AppendRequest(p.stream, (p.event,)) for p in pending]))
        except (DuplicateEventId, InvalidInput) as refused:
            # One observation refused fails the whole write: record them one by one.
            log.info("batch refused; recording its observations one by one", observations=len(pending), error=str(refused))
            await self._record_one_by_one(pending, outcomes)
            return
        except Exception as error:  # noqa: BLE001 - a fault that retrying in place did not cure
            for p in pending:
                for index in p.indexes:
                    outcomes[index] = error
            return
        self.commits += 1
        for p, result in zip(pending, results, strict=True):
            self._counted(p, duplicate=result.duplicate)

    async def _record_one_by_one(self, pending: list[_Pending], outcomes: list[Exception | None]) -> None:
        for position, p in enumerate(pending):
            try:
                result = await self._commit_in_place([p], lambda p=p: self._store.append(p.stream, [p.event]))  # type: ignore[misc]
                self.commits += 1
            except DuplicateEventId:
                # The same observation id reported again with other details (an agent that
                # restarted re-reports what it sees): the first report stands.
                log.info("observation already recorded", observation_id=p.observation_id)
                self._counted(p, duplicate=True)
                continue
            except InvalidInput as error:
                reason = f"the store refused the observation: {error}"
                for index, delivery in [(p.index, p.delivery), *p.repeats]:
                    try:
                        await self._dead_letter(delivery, reason)
                    except Exception as failure:  # noqa: BLE001 - the bus is down: retry it later
                        outcomes[index] = failure
                continue
            except Exception as error:  # noqa: BLE001 - not cured in place: this and the rest retry
                for rest in pending[position:]:
                    for index in rest.indexes:
                        outcomes[index] = error
                return
            self._counted(p, duplicate=result.duplicate)

    async def _commit_in_place(self, pending: list[_Pending], commit: Callable[[], Awaitable[_T]]) -> _T:
        """`commit()`, retried here while the store is unavailable (or fails in a way it
        did not explain) rather than by naking: a nak'd observation comes back after
        later ones of the same workload were recorded, out of order. The subscription pulls
        nothing else while this runs, and its pull request expires long before the ack wait
        does, so nothing is redelivered meanwhile; the messages are acked once committed. A store that refuses the write (InvalidInput) is
        answered at once; an unexplained failure is retried `UNEXPLAINED_RETRIES` times,
        then handed back to the subscription (nak, dead letter at last), so a bug cannot
        wedge the ingest forever."""
        backoff = Backoff(base=self._retry_base, cap=self._retry_cap)
        unexplained = retries = 0
        while True:
            try:
                result = await commit()
            except (DuplicateEventId, InvalidInput):
                raise
            except Exception as error:  # noqa: BLE001 - decided below: retry in place or hand back
                if not isinstance(error, Unavailable):
                    unexplained += 1
                    if unexplained > UNEXPLAINED_RETRIES:
                        log.error("recording observations failed", error=describe(error))
                        raise
                self.store_retries += 1
                retries += 1
                if retries == 1:
                    log.warning("store unavailable; retrying the batch in place", observations=len(pending), error=str(error))
            else:
                if retries:
                    log.info("store back; batch recorded", observations=len(pending), retries=retries)
                return result
            await asyncio.sleep(backoff.next())

    def _counted(self, p: _Pending, *, duplicate: bool) -> None:
        if duplicate:
            self.duplicates += 1
        else:
            self.recorded += 1
        self.duplicates += len(p.repeats)

    def _parse_subject(self, subject: str) -> tuple[str, list[str]]:
        if not subject.startswith(self._prefix):
            raise Rejected(f"subject {subject!r} is not an observation subject of instance {self.instance}")
        tokens = subject[len(self._prefix) :].split(".")
        try:
            runtime = bus.decode_token(tokens[0])
        except (InvalidInput, ValueError, UnicodeDecodeError) as error:
            raise Rejected(f"subject {subject!r} does not name a runtime: {error}") from error
        return runtime, tokens[1:]

    def _check(self, runtime: str, o: convergence_pb2.Observation) -> str:
        """`Rejected` unless the observation may be recorded; its stream otherwise."""
        if o.runtime != runtime:
            raise Rejected(
                f"observation {o.observation_id!r} claims runtime {o.runtime!r} but was published on the "
                f"subject of runtime {runtime!r}: an agent may only report for its own runtime"
            )
        missing = [name for name in ("observation_id", "namespace", "application", "service") if not getattr(o, name)]
        if missing:
            raise Rejected(f"observation lacks {', '.join(missing)}")
        if o.kind not in _KNOWN_KINDS:
            raise Rejected(f"observation {o.observation_id!r} has no known kind ({o.kind})")
        if len(o.observation_id) > 200:
            raise Rejected("observation id longer than 200 characters")
        try:
            return stream_of(o)
        except InvalidInput as error:
            raise Rejected(f"observation {o.observation_id!r} names an invalid workload: {error}") from error

    def _heartbeat(self, runtime: str, data: bytes) -> None:
        try:
            beat = convergence_pb2.Heartbeat.FromString(data)
        except DecodeError as error:
            raise Rejected(f"payload is not a Heartbeat: {error}") from error
        self._heartbeats[runtime] = heartbeat_seen(runtime, beat, received=time.monotonic(), received_at=datetime.now(UTC))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter at once (like the subscription's last attempt) and let it ack."""
        sub = self._subscription
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("Nats-")}
        if delivery.headers.get(bus.H_MSG_ID):
            headers[H_DLQ_MSG_ID] = delivery.headers[bus.H_MSG_ID]
        headers.update(
            {
                bus.H_MSG_ID: f"{sub.stream}:{sub.durable}:{delivery.stream_sequence}",
                H_DLQ_SUBJECT: delivery.subject,
                H_DLQ_STREAM: sub.stream,
                H_DLQ_SEQUENCE: str(delivery.stream_sequence),
                H_DLQ_CONSUMER: sub.durable,
                H_DLQ_DELIVERIES: str(delivery.attempt),
                H_DLQ_ERROR: " ".join(reason.split())[:1000] or "rejected",
            }
        )
        timeout = sub.settings.ack_timeout
        await bus.guarded(
            "dead-lettering an observation",
            lambda: self._js.publish(sub.dlq_subject, delivery.data, headers=headers, timeout=timeout),
        )
        self.rejected += 1
        log.warning("observation rejected", subject=delivery.subject, reason=headers[H_DLQ_ERROR])


def heartbeat_seen(
    runtime: str, beat: convergence_pb2.Heartbeat, *, received: float, received_at: datetime
) -> HeartbeatSeen:
    """A heartbeat published on `runtime`'s subject, checked: `Rejected` when it speaks
    for another runtime or holds what no agent sends; its error text is cut to
    `HEARTBEAT_ERROR_LIMIT` bytes."""
    if beat.runtime != runtime:
        raise Rejected(f"heartbeat claims runtime {quote(beat.runtime)} on the subject of runtime {quote(runtime)}")
    if len(beat.agent_id) > 200:
        raise Rejected(f"heartbeat agent id {quote(beat.agent_id)} is longer than 200 characters")
    if beat.workloads < 0:
        raise Rejected(f"heartbeat counts {beat.workloads} workloads")
    availability = beat.runtime_availability
    if availability not in convergence_pb2.Heartbeat.RuntimeAvailability.values():
        raise Rejected(f"heartbeat has no known runtime availability ({availability})")
    interval = DEFAULT_HEARTBEAT_INTERVAL
    if beat.HasField("interval"):
        interval = beat.interval.seconds + beat.interval.nanos / 1e9
        if not 0 < interval <= MAX_HEARTBEAT_INTERVAL:
            raise Rejected(f"heartbeat interval {interval}s is not between 0 and {MAX_HEARTBEAT_INTERVAL:.0f}s")
    try:
        sent_at = beat.sent_at.ToDatetime(tzinfo=UTC)
        since = beat.runtime_unavailable_since.ToDatetime(tzinfo=UTC) if beat.HasField("runtime_unavailable_since") else None
    except (ValueError, OverflowError) as error:
        raise Rejected(f"heartbeat has an invalid timestamp: {error}") from error
    unavailable = availability == convergence_pb2.Heartbeat.RUNTIME_AVAILABILITY_UNAVAILABLE
    return HeartbeatSeen(
        runtime=runtime,
        agent_id=beat.agent_id,
        sent_at=sent_at,
        workloads=beat.workloads,
        received=received,
        received_at=received_at,
        interval=interval,
        runtime_availability=availability,
        runtime_unavailable_since=since if unavailable else None,
        runtime_error=clip(beat.runtime_error, limit=HEARTBEAT_ERROR_LIMIT) if unavailable else "",
    )
