"""Observations: what the agent saw, with ids that make every retry harmless.

An observation id is a UUID derived from what was observed — runtime, workload, intent,
generation, kind and a discriminator (which transition of a watch, which check interval,
which drift episode) — never from a clock or a random number. So a publish retried after
a lost ack, or the same fact observed again by a restarted agent, carries the same id:
JetStream drops it within its duplicate window (`Nats-Msg-Id` = the id) and the store
records it once (ingest derives the event id from it).

`Reporter` publishes with an awaited JetStream publish (nats-py's `publish_async` never
resolves when the server refuses the write) and retries while the bus is unavailable;
a refusal (a permission, a missing stream) is logged and retried more slowly, because
an observation that is never delivered is a deployment nobody hears about.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from nats.aio.client import Client

from eventstore import bus
from eventstore.errors import BusRejected, Unavailable
from eventstore.tasks import Backoff
from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import WorkloadKey, truncate

log = structlog.get_logger("convoy.agent.observations")

NAMESPACE: Final = uuid.UUID("5d3c5f0e-7d0c-4d59-9a57-6b1b0f7f2c11")
"""uuid5 namespace of observation ids."""

Kind = convergence_pb2.ObservationKind


def observation_id(runtime: str, key: WorkloadKey, intent_id: str, generation: int, kind: int, discriminator: str = "") -> str:
    name = "\x1f".join((runtime, str(key), intent_id, str(generation), Kind.Name(kind), discriminator))
    return str(uuid.uuid5(NAMESPACE, name))


@dataclass(frozen=True, slots=True)
class Subject:
    """What an observation is about: a workload and the intent it was applied with."""

    key: WorkloadKey
    intent_id: str = ""
    generation: int = 0
    spec_hash: str = ""
    channel: str = ""


def build(
    runtime: str,
    about: Subject,
    kind: int,
    *,
    discriminator: str = "",
    reason: str = "",
    message: str = "",
    check_id: str = "",
    ready_replicas: int = 0,
    desired_replicas: int = 0,
    observed_at: datetime | None = None,
) -> convergence_pb2.Observation:
    """An Observation with its deterministic id (`observed_at` defaults to now)."""
    if check_id:
        discriminator = f"{check_id}\x1f{discriminator}"
    observation = convergence_pb2.Observation(
        observation_id=observation_id(runtime, about.key, about.intent_id, about.generation, kind, discriminator),
        runtime=runtime,
        namespace=about.key.namespace,
        application=about.key.application,
        service=about.key.service,
        channel=about.channel,
        intent_id=about.intent_id,
        generation=about.generation,
        kind=kind,  # type: ignore[arg-type]
        reason=reason,
        message=truncate(message),
        spec_hash=about.spec_hash,
        check_id=check_id,
        ready_replicas=ready_replicas,
        desired_replicas=desired_replicas,
    )
    observation.observed_at.FromDatetime(observed_at or datetime.now(UTC))
    return observation


class Reporter:
    """Publishes observations of one runtime on `convoy.<instance>.obs.<runtime>.<ns>.<app>.<svc>`."""

    def __init__(
        self, nc: Client, *, instance: str, runtime: str, ack_timeout: float = 5.0, max_backoff: float = 2.0
    ) -> None:
        self._js = nc.jetstream()
        self.instance = bus.validate_instance(instance)
        self.runtime = runtime
        self._ack_timeout = ack_timeout
        self._max_backoff = max_backoff
        self.published = 0
        self.duplicates = 0

    def subject(self, key: WorkloadKey) -> str:
        return bus.observation_subject(self.instance, self.runtime, key.namespace, key.application, key.service)

    async def publish(self, observation: convergence_pb2.Observation) -> None:
        """Publish until JetStream has it (cancel to give up)."""
        key = WorkloadKey(observation.namespace, observation.application, observation.service)
        subject = self.subject(key)
        data = observation.SerializeToString(deterministic=True)
        headers = {bus.H_MSG_ID: observation.observation_id}
        backoff = Backoff(base=0.05, cap=self._max_backoff)
        while True:
            try:
                ack = await bus.guarded(
                    f"publishing an observation of {key}",
                    lambda: self._js.publish(subject, data, headers=headers, timeout=self._ack_timeout),
                )
            except Unavailable as error:
                log.info("observation not published yet; retrying", subject=subject, error=str(error))
                await asyncio.sleep(backoff.next())
                continue
            except BusRejected as error:
                log.error("observation refused by the bus; retrying", subject=subject, error=str(error))
                await asyncio.sleep(max(1.0, backoff.next()))
                continue
            self.published += 1
            if ack.duplicate:
                self.duplicates += 1
            return
