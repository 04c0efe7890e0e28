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
(retrying cannot fix them) and nothing is written; only an unavailable store makes a
message be retried. Heartbeats (`…obs.<runtime>.heartbeat`) are kept in memory only —
the last one per runtime — for liveness queries.

Throughput: each observation is one append (one fsync, shared by group commit with
concurrent ones). `workers` > 1 pulls from the one durable consumer with several
handlers at once, so appends share commits (bench/agents.py); the price is that
observations of one workload published milliseconds apart may be recorded in a different
order than observed — readers order them by `observed_at` / generation, not by position.
With `workers=1` the log order is the publish order.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client

from eventstore import bus
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.errors import DuplicateEventId, InvalidInput
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
from eventstore.types import EventStore, validate_stream_id
from schemas.convoy.v1 import convergence_pb2, events_pb2

log = structlog.get_logger("convoy.api.ingest")

EVENT_ID_NAMESPACE: Final = uuid.UUID("0b8f3a52-5c1e-4a51-8f0e-3f9b7a0c2d64")
"""uuid5 namespace: event id = uuid5(EVENT_ID_NAMESPACE, observation id)."""
HEARTBEAT: Final = "heartbeat"
DURABLE: Final = "api-ingest"


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
        settings: SubscriptionSettings = SubscriptionSettings(),
        durable: str = DURABLE,
        workers: int = 1,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self.instance = bus.validate_instance(instance)
        self._registry = registry or convoy_registry()
        self._prefix = f"convoy.{self.instance}.obs."
        if workers < 1:
            raise InvalidInput("ingest needs at least one worker")
        self._workers = [
            DurableSubscription(
                nc,
                instance=instance,
                stream=bus.observations_stream(instance),
                durable=durable,
                filter_subjects=[bus.observations_subjects(instance)],
                handler=self._handle,
                settings=settings,
            )
            for _ in range(workers)
        ]
        self._subscription = self._workers[0]
        self._heartbeats: dict[str, HeartbeatSeen] = {}
        self.recorded = 0
        self.duplicates = 0
        self.rejected = 0

    async def start(self) -> None:
        for worker in self._workers:
            await worker.start()

    async def stop(self) -> None:
        for worker in self._workers:
            await worker.stop()

    async def __aenter__(self) -> ObservationIngest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return all(worker.running for worker in self._workers)

    # -- liveness ------------------------------------------------------------------------

    def last_heartbeat(self, runtime: str) -> HeartbeatSeen | None:
        return self._heartbeats.get(runtime)

    def alive(self, runtime: str, *, within: float) -> bool:
        """A heartbeat from `runtime`'s agent arrived in the last `within` seconds."""
        seen = self._heartbeats.get(runtime)
        return seen is not None and time.monotonic() - seen.received <= within

    # -- handling ------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._ingest(delivery)
        except Rejected as rejected:
            await self._dead_letter(delivery, str(rejected))

    async def _ingest(self, delivery: Delivery) -> None:
        runtime, rest = self._parse_subject(delivery.subject)
        if rest == [HEARTBEAT]:
            self._heartbeat(runtime, delivery.data)
            return
        try:
            observation = convergence_pb2.Observation.FromString(delivery.data)
        except DecodeError as error:
            raise Rejected(f"payload is not an Observation: {error}") from error
        self._check(runtime, observation)
        try:
            event = self._registry.encode(
                events_pb2.ObservationRecorded(observation=observation),
                actor=f"agent:{runtime}",
                event_id=event_id(observation.observation_id),
            )
            result = await self._store.append(stream_of(observation), [event])
        except DuplicateEventId:
            # The same observation id reported again with other details (an agent that
            # restarted re-reports what it sees): the first report stands.
            self.duplicates += 1
            log.info("observation already recorded", observation_id=observation.observation_id)
            return
        except InvalidInput as error:
            raise Rejected(f"the store refused the observation: {error}") from error
        if result.duplicate:
            self.duplicates += 1
        else:
            self.recorded += 1

    def _parse_subject(self, subject: str) -> tuple[str, list[str]]:
        if not subject.startswith(self._prefix):
            raise Rejected(f"subject {subject!r} is not an observation subject of instance {self.instance}")
        tokens = subject[len(self._prefix) :].split(".")
        try:
            runtime = bus.decode_token(tokens[0])
        except (InvalidInput, ValueError, UnicodeDecodeError) as error:
            raise Rejected(f"subject {subject!r} does not name a runtime: {error}") from error
        return runtime, tokens[1:]

    def _check(self, runtime: str, o: convergence_pb2.Observation) -> None:
        if o.runtime != runtime:
            raise Rejected(
                f"observation {o.observation_id!r} claims runtime {o.runtime!r} but was published on the "
                f"subject of runtime {runtime!r}: an agent may only report for its own runtime"
            )
        missing = [name for name in ("observation_id", "namespace", "application", "service") if not getattr(o, name)]
        if missing:
            raise Rejected(f"observation lacks {', '.join(missing)}")
        if o.kind == convergence_pb2.OBSERVATION_KIND_UNSPECIFIED or o.kind not in convergence_pb2.ObservationKind.values():
            raise Rejected(f"observation {o.observation_id!r} has no known kind ({o.kind})")
        if len(o.observation_id) > 200:
            raise Rejected("observation id longer than 200 characters")
        try:
            stream_of(o)
        except InvalidInput as error:
            raise Rejected(f"observation {o.observation_id!r} names an invalid workload: {error}") from error

    def _heartbeat(self, runtime: str, data: bytes) -> None:
        try:
            beat = convergence_pb2.Heartbeat.FromString(data)
        except DecodeError as error:
            raise Rejected(f"payload is not a Heartbeat: {error}") from error
        if beat.runtime != runtime:
            raise Rejected(f"heartbeat claims runtime {beat.runtime!r} on the subject of runtime {runtime!r}")
        self._heartbeats[runtime] = HeartbeatSeen(
            runtime=runtime,
            agent_id=beat.agent_id,
            sent_at=beat.sent_at.ToDatetime(),
            workloads=beat.workloads,
            received=time.monotonic(),
        )

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
