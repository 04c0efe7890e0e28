"""Helpers for the agent tests: a control plane (relay, ingest, desired state, consumers)
on real NATS and PostgreSQL, and ways to issue intents and read observations back."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client

from eventstore import bus, leases, natsauth
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.embedded import NatsServer
from eventstore.natstls import NatsTls
from eventstore.postgres import PostgresEventStore
from eventstore.relay import Relay, RelaySettings
from eventstore.subscriptions import SubscriptionSettings
from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
from services.api.desired import DesiredState
from services.api.ingest import ObservationIngest
from services.api.natsauth_sync import NatsAuthSync

FAST = SubscriptionSettings(fetch_timeout=1.0, heartbeat=0.25, retry_delay=0.05, max_deliver=3)


@dataclass
class Plane:
    store: PostgresEventStore
    nc: Client
    instance: str
    registry: EventRegistry
    relay: Relay
    ingest: ObservationIngest
    desired: DesiredState
    sync: NatsAuthSync

    async def register(
        self, runtime: str, *, bcrypt: str = "", exec_config: resources_pb2.ExecRuntimeConfig | None = None
    ) -> None:
        """Register an exec runtime: the local process runtime unless `exec_config` names
        other commands (then a subprocess agent runs the exec runtime with them)."""
        config = resources_pb2.Runtime(
            name=runtime,
            kind=resources_pb2.RUNTIME_KIND_EXEC,
            exec=resources_pb2.ExecRuntimeConfig(apply=["convoy-local"]) if exec_config is None else exec_config,
        )
        events = [self.registry.encode(events_pb2.RuntimeRegistered(runtime=config), actor="test")]
        await self.store.append(f"runtime/{runtime}", events)
        if bcrypt:
            await self.issue_credential(runtime, bcrypt)
        await self.sync.wait_synced()

    async def issue_credential(self, runtime: str, bcrypt: str, generation: int = 1) -> None:
        issued = events_pb2.AgentCredentialIssued(
            runtime=runtime, credential_id=f"cred-{uuid.uuid4().hex}", generation=generation, nats_password_bcrypt=bcrypt
        )
        await self.store.append(f"runtime/{runtime}", [self.registry.encode(issued, actor="test")])
        await self.sync.wait_synced()

    async def intent(
        self,
        runtime: str,
        *,
        service: str = "web",
        namespace: str = "prod",
        generation: int = 1,
        version: str = "v1",
        delete: bool = False,
        repair_drift: bool = False,
        intent_id: str | None = None,
        parameters: dict[str, str] | None = None,
    ) -> events_pb2.IntentIssued:
        spec = convergence_pb2.WorkloadSpec(
            application="shop", service=service, channel="prod", release_id=f"rel-{version}", version=version, replicas=2
        )
        spec.parameters.update(parameters or {})
        message = events_pb2.IntentIssued(
            intent_id=intent_id or f"intent-{service}-{generation}-{uuid.uuid4().hex[:6]}",
            target=convergence_pb2.Target(runtime=runtime, namespace=namespace),
            action=convergence_pb2.INTENT_ACTION_DELETE if delete else convergence_pb2.INTENT_ACTION_APPLY,
            spec=spec,
            spec_hash=hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:20],
            generation=generation,
            repair_drift=repair_drift,
        )
        await self.append_intent(message)
        return message

    async def append_intent(self, message: events_pb2.IntentIssued) -> None:
        stream = f"intent/{message.target.runtime}/{message.target.namespace}/{message.spec.application}/{message.spec.service}"
        await self.store.append(stream, [self.registry.encode(message, actor="planner")])

    async def observations(self, runtime: str, *, service: str = "web", namespace: str = "prod") -> list[convergence_pb2.Observation]:
        recorded = await self.store.read_stream(f"observation/{runtime}/{namespace}/shop/{service}")
        out = []
        for event in recorded:
            message = self.registry.decode(event).message
            assert isinstance(message, events_pb2.ObservationRecorded)
            assert event.actor == f"agent:{runtime}"
            out.append(message.observation)
        return out

    async def kinds(self, runtime: str, **where: str) -> list[str]:
        return [convergence_pb2.ObservationKind.Name(o.kind).removeprefix("OBSERVATION_KIND_") for o in await self.observations(runtime, **where)]


@contextlib.asynccontextmanager
async def control_plane(
    store: PostgresEventStore, nats_url: str, instance: str, *, server: NatsServer | None = None, system_password: str | None = None,
    tls: NatsTls | None = None,
) -> AsyncIterator[Plane]:
    options = {"user": natsauth.system_user(instance), "password": system_password} if system_password else {}
    nc = await bus.connect(nats_url, name="test-plane", tls=tls, **options)
    registry = convoy_registry()
    try:
        await bus.ensure_streams(nc.jetstream(), instance)
        await leases.ensure_bucket(nc.jetstream(), instance)
        relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=instance, idle_poll=0.2))
        ingest = ObservationIngest(nc=nc, store=store, instance=instance, settings=FAST)
        desired = DesiredState(nc=nc, store=store, instance=instance)
        sync = NatsAuthSync(store=store, nc=nc, instance=instance, server=server, system_password=system_password)
        async with relay, ingest, desired, sync:
            yield Plane(store, nc, instance, registry, relay, ingest, desired, sync)
    finally:
        await nc.close()
