"""A bus outage is not charged to a release (DESIGN.md: a fault of Convoy's own never
fails a healthy release).

The whole path on real servers: the planner (with a clock the test moves), the relay,
observation ingest, desired state and a real agent, with the embedded nats-server
SIGSTOPped while a release is deployed — the intent is recorded, but no agent can hear of
it. The test moves the planner's clock past the progress deadline while the bus is stopped:
the release must wait (DEPLOYING, the reason naming the agent), not fail or roll back; and
once the bus is back, the agent's late HEALTHY converges it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from eventstore import bus, natsauth
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.agent.agent import Agent, AgentSettings
from services.agent.runtimes.memory import MemoryRuntime
from services.planner.clock import FakeClock
from services.planner.engine import DEADLINE_GRACE, DEFAULT_PROGRESS_DEADLINE
from services.planner.model import status_name
from services.planner.replay import replay_check
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.integration.test_agent_support import FAST, Plane, control_plane

pytestmark = pytest.mark.fault  # `make stress` runs these again and again

RUNTIME = "rt-outage"


@pytest.fixture
async def plane(pg_store: PostgresEventStore, own_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Plane]:
    async with control_plane(pg_store, own_nats.url, subject_prefix) as made:
        yield made


async def record(plane: Plane, stream: str, message: object, actor: str = "alice") -> None:
    await plane.store.append(stream, [plane.registry.encode(message, actor=actor)])  # type: ignore[arg-type]


async def channel_history(plane: Plane) -> list[tuple[str, str, str]]:
    """(version, old, new) of every channel-level status change of shop/web in staging."""
    found = []
    for recorded in await plane.store.read_all(categories=["convergence"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.InstanceStatusChanged) and not m.target.runtime:
            found.append((m.version, status_name(m.old_status), status_name(m.new_status)))
    return found


async def current(plane: Plane) -> tuple[str, str, str]:
    """(version, status, reason) of shop/web in staging, from the record."""
    last = ("", "", "")
    for recorded in await plane.store.read_all(categories=["convergence"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.InstanceStatusChanged) and not m.target.runtime:
            last = (m.version, status_name(m.new_status), m.reason)
    return last


async def intents(plane: Plane) -> list[E.IntentIssued]:
    found = []
    for recorded in await plane.store.read_all(categories=["intent"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.IntentIssued):
            found.append(m)
    return found


async def deadline_fired(plane: Plane) -> bool:
    for recorded in await plane.store.read_all(categories=["timer"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.TimerFired) and "deadline" in m.timer_id:
            return True
    return False


async def test_a_bus_outage_past_the_deadline_fails_no_release_and_the_late_healthy_converges(
    plane: Plane, own_nats: NatsServer
) -> None:
    await plane.register(RUNTIME)
    application = R.Application(name="shop", release_channels=[
        R.ReleaseChannel(name="staging", runtimes=[R.RuntimeBinding(runtime=RUNTIME)])])
    service = R.Service(application="shop", name="web", replicas=1, programs=[R.Program(name="web", image="example/web:1")])
    await record(plane, "app/shop", E.ApplicationCreated(application=application))
    await record(plane, "service/shop/web", E.ServiceConfigured(service=service, created=True))

    clock = FakeClock(datetime.now(UTC))
    runtime = MemoryRuntime(name=RUNTIME)
    nc = await bus.connect(own_nats.url, name="test-agent", inbox_prefix=natsauth.agent_inbox_prefix(plane.instance, RUNTIME))
    settings = AgentSettings(instance=plane.instance, runtime=RUNTIME, heartbeat_interval=0.2, reconcile_interval=0.5,
                             snapshot_timeout=2.0, subscription=FAST)
    stopped = False
    try:
        async with Planner(store=plane.store, registry=plane.registry, clock=clock), Agent(
            nc=nc, settings=settings, runtime=runtime
        ) as agent:
            await eventually(agent.ready.is_set, message="agent ready")
            release = lambda version: E.ReleaseCreated(release=R.Release(  # noqa: E731
                id=f"rel-{version}", application="shop", service="web", version=version, config=service))
            await record(plane, "release/shop/web", release("v1"))
            await eventually(lambda: _at(plane, "v1", "CONVERGED"), message="v1 converged")

            os.kill(own_nats.pid, signal.SIGSTOP)  # the bus stops answering; nothing of it is dead
            stopped = True
            await record(plane, "release/shop/web", release("v2"))
            await eventually(lambda: _has_intent(plane, "v2"), message="the v2 intent recorded (the bus cannot carry it)")
            clock.advance(DEFAULT_PROGRESS_DEADLINE + DEADLINE_GRACE + timedelta(minutes=1))
            await eventually(lambda: deadline_fired(plane), message="the progress deadline passed")
            await eventually(lambda: _reason_has(plane, "has not taken the intent"), message="the reason names the agent")
            version, status, _ = await current(plane)
            assert (version, status) == ("v2", "DEPLOYING")
            assert not [i for i in await intents(plane) if i.rollback], "a rollback was started during the outage"

            os.kill(own_nats.pid, signal.SIGCONT)
            stopped = False
            await eventually(lambda: _at(plane, "v2", "CONVERGED"), timeout=60, message="v2 converged after the outage")
    finally:
        if stopped:
            os.kill(own_nats.pid, signal.SIGCONT)
        await nc.close()
        await runtime.close()

    history = await channel_history(plane)
    assert not [h for h in history if h[2] in ("FAILED", "ROLLING_BACK", "ROLLED_BACK")], history
    assert runtime.applies == 2  # v1 and v2, nothing rolled back
    [namespace] = {i.target.namespace for i in await intents(plane)}
    v2 = [o.kind for o in await plane.observations(RUNTIME, namespace=namespace) if o.generation == 2]
    assert C.OBSERVATION_KIND_RECEIVED in v2 and C.OBSERVATION_KIND_HEALTHY in v2
    report = await replay_check(plane.store, plane.registry)
    assert report.ok, report.differences[:5]


async def _at(plane: Plane, version: str, status: str) -> bool:
    v, s, _ = await current(plane)
    return (v, s) == (version, status)


async def _has_intent(plane: Plane, version: str) -> bool:
    return any(i.spec.version == version for i in await intents(plane))


async def _reason_has(plane: Plane, text: str) -> bool:
    return text in (await current(plane))[2]
