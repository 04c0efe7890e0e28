"""A release survives losing a NATS node: the production layout (3 nodes, R3 streams) under
a kill -9 of the node a control-plane client is connected to.

docs/production.md tells operators to run NATS as a 3-node cluster with Convoy's streams at
three replicas and CONVOY_NATS_URL naming every node. This proves that layout does what it
promises, on real servers (tests/scale/natscluster.py). The relay, observation ingest,
desired state, the planner and one agent per runtime run in this process against the
embedded PostgreSQL; the bus clients get all three URLs (one comma-separated string, as
CONVOY_NATS_URL gives them) and each starts on a node the test chose, so the victim is known.
Three services are released to three runtimes, one runtime at a time; right after the first
runtime applied (inside its apply: before its agent could report or ack) the test SIGKILLs a
node — in one variant the node the relay publishes through (made to lead the events
stream), in the other the node that agent is connected to (made to lead the observations
stream). Clients move to the surviving nodes, and in the end: every event of the log is in
the events stream exactly once, in position order, with no gap; each runtime applied each
service once; no intent was issued twice; nothing was dead-lettered; the releases converged;
the planner's replay is clean. Then the node comes back and its replicas catch up with the
leaders'. A third test runs `convoy api` itself on CONVOY_NATS_URL + CONVOY_NATS_REPLICAS=3.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from eventstore import bus, natsauth
from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.relay import Relay, RelaySettings
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.agent.agent import Agent, AgentSettings
from services.agent.runtimes.base import Workload, WorkloadStatus
from services.agent.runtimes.memory import MemoryRuntime
from services.api.desired import DesiredState
from services.api.ingest import ObservationIngest
from services.api.natsauth_sync import NatsAuthSync
from services.planner.clock import SystemClock
from services.planner.model import status_name
from services.planner.replay import replay_check
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.e2e.processes import service_process
from tests.integration.test_agent_support import FAST, Plane
from tests.scale.natscluster import ClusterNode, NatsCluster

pytestmark = [pytest.mark.scale, pytest.mark.fault]

RUNTIMES = ["rt-a", "rt-b", "rt-c"]
SERVICES = ["web", "api", "worker"]
REPLICAS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    made = NatsCluster(root=tmp_path / "nats", size=3)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def starting_at(cluster: NatsCluster, index: int) -> str:
    """Every node's URL, comma-separated (CONVOY_NATS_URL's form), node `index` first."""
    urls = cluster.urls
    return ",".join(urls[index:] + urls[:index])


async def connect(cluster: NatsCluster, index: int, name: str, **options: Any) -> Client:
    """A bus client that starts on node `index` (then, on losing it, tries the others)."""
    return await bus.connect(starting_at(cluster, index), name=name, dont_randomize=True, **options)


def node_of(cluster: NatsCluster, nc: Client) -> ClusterNode:
    """The node a client is connected to right now."""
    return cluster.node_of(nc.connected_url.geturl() if nc.connected_url else None)


@contextlib.asynccontextmanager
async def control_plane(store: PostgresEventStore, nc: Client, instance: str) -> AsyncIterator[Plane]:
    """The API side's bus services (tests/integration/test_agent_support.control_plane's,
    with the streams at R3: a relay left at R1 would scale them back down)."""
    await bus.ensure_streams(nc.jetstream(), instance, replicas=REPLICAS)
    relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=instance, idle_poll=0.2, replicas=REPLICAS))
    ingest = ObservationIngest(nc=nc, store=store, instance=instance, settings=FAST)
    desired = DesiredState(nc=nc, store=store, instance=instance)
    sync = NatsAuthSync(store=store, nc=nc, instance=instance)
    async with relay, ingest, desired, sync:
        yield Plane(store, nc, instance, convoy_registry(), relay, ingest, desired, sync)


async def record(plane: Plane, stream: str, message: object) -> None:
    await plane.store.append(stream, [plane.registry.encode(message, actor="alice")])  # type: ignore[arg-type]


async def statuses(plane: Plane) -> dict[tuple[str, str], str]:
    """Latest status of each service's v1 per runtime ("" = the channel itself)."""
    found: dict[tuple[str, str], str] = {}
    for recorded in await plane.store.read_all(categories=["convergence"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.InstanceStatusChanged) and m.version == "v1":
            found[m.service, m.target.runtime] = status_name(m.new_status)
    return found


async def intents(plane: Plane) -> list[E.IntentIssued]:
    found = []
    for recorded in await plane.store.read_all(categories=["intent"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.IntentIssued):
            found.append(m)
    return found


async def assert_stream_is_the_log(js: JetStreamContext, store: PostgresEventStore, instance: str) -> int:
    """Once the relay caught up: stream sequence i holds log position i, for every i, each
    event once. Returns how many events that is."""
    stream = bus.events_stream(instance)

    async def caught_up() -> bool:
        head = await store.head()
        try:
            return (await js.stream_info(stream)).state.last_seq >= head
        except bus.NATS_ERRORS:  # the test's own client, while the stream elects a leader
            return False

    await eventually(caught_up, timeout=60, interval=0.1, message="the relay published the whole log")
    last = (await js.stream_info(stream)).state.last_seq
    log = await store.read_all(after=0, limit=last)
    on_bus = [await js.get_msg(stream, seq=seq) for seq in range(1, last + 1)]
    positions = [int((m.headers or {})[bus.H_POSITION]) for m in on_bus]
    assert positions == list(range(1, last + 1)), "the events stream has a gap, a duplicate or a reordering"
    assert [(m.headers or {})[bus.H_MSG_ID] for m in on_bus] == [str(e.event_id) for e in log]
    assert len(log) == last, "the stream holds events the log does not"
    return last


async def move_leader(cluster: NatsCluster, nc: Client, stream: str, index: int) -> None:
    """Make node `index` lead `stream` (a leader step-down naming it as the preferred
    successor), so the node a test kills is known to lead it."""
    wanted = cluster.nodes[index]

    async def leads() -> bool:
        leader = await cluster.stream_leader(stream)
        if leader is wanted:
            return True
        if leader is not None:
            with contextlib.suppress(*bus.NATS_ERRORS):  # asked again on the next round
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                                 b'{"placement":{"preferred":"%s"}}' % wanted.name.encode(), timeout=5)
        return False

    await eventually(leads, timeout=60, interval=0.2, message=f"{wanted.name} leads {stream}")


class KillingRuntime(MemoryRuntime):
    """The memory runtime, plus a fault hook: `on_applied` runs (once) right after its first
    rollout started, before the agent could report it or ack the intent."""

    def __init__(self, *, name: str) -> None:
        super().__init__(name=name)
        self.on_applied: Callable[[], None] | None = None

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        before = self.applies
        status = await super().apply(workload, repair=repair)
        hook = self.on_applied
        if self.applies > before and hook is not None:
            self.on_applied = None
            hook()
        return status


async def release_through_a_node_loss(
    cluster: NatsCluster, pg_store: PostgresEventStore, instance: str, *, victim: str
) -> None:
    """The scenario; `victim` is "relay" or "agent": whose node dies mid-release."""
    await cluster.wait_meta_leader()
    plane_nc = await connect(cluster, 0, "test-plane")
    # Agent i starts on node i+1 (mod 3): rt-a's agent on node 1, rt-c's beside the relay on node 0.
    agent_ncs = [
        await connect(cluster, (i + 1) % 3, f"test-agent-{rt}", inbox_prefix=natsauth.agent_inbox_prefix(instance, rt))
        for i, rt in enumerate(RUNTIMES)
    ]
    runtimes = {rt: KillingRuntime(name=rt) for rt in RUNTIMES}
    try:
        async with control_plane(pg_store, plane_nc, instance) as plane, contextlib.AsyncExitStack() as stack:
            js = plane_nc.jetstream()
            for stream in (bus.events_stream(instance), bus.observations_stream(instance), bus.dlq_stream(instance)):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == REPLICAS and info.cluster is not None
                assert len(info.cluster.replicas or []) == REPLICAS - 1, info.cluster
                await cluster.wait_stream_current(stream)
            relay_node = node_of(cluster, plane_nc)
            agent_node = node_of(cluster, agent_ncs[0])  # rt-a's: the first to apply
            assert relay_node is not agent_node
            dying = relay_node if victim == "relay" else agent_node
            on_victim = [nc for nc in (plane_nc, *agent_ncs) if node_of(cluster, nc) is dying]
            # The victim leads the stream its client writes to: a leader change comes with the loss.
            led = bus.events_stream(instance) if victim == "relay" else bus.observations_stream(instance)
            await move_leader(cluster, plane_nc, led, dying.index)
            killed: list[tuple[int, int]] = []

            def kill() -> None:  # mid-release: rt-a applied, nothing reported yet, the others wait
                cluster.kill(dying.index)
                killed.append((runtimes["rt-b"].applies, runtimes["rt-c"].applies))

            runtimes["rt-a"].on_applied = kill

            for rt in RUNTIMES:
                await plane.register(rt)
            await stack.enter_async_context(Planner(store=plane.store, registry=plane.registry, clock=SystemClock()))
            agents = []
            for rt, nc in zip(RUNTIMES, agent_ncs, strict=True):
                settings = AgentSettings(instance=instance, runtime=rt, heartbeat_interval=0.5, reconcile_interval=1.0,
                                         snapshot_timeout=2.0, subscription=FAST)
                agents.append(await stack.enter_async_context(Agent(nc=nc, settings=settings, runtime=runtimes[rt])))
            for agent in agents:
                await eventually(agent.ready.is_set, timeout=60, message=f"{agent.name} ready")

            channel = R.ReleaseChannel(name="prod", max_concurrent_runtimes=1,
                                       runtimes=[R.RuntimeBinding(runtime=rt) for rt in RUNTIMES])
            await record(plane, "app/shop", E.ApplicationCreated(application=R.Application(name="shop", release_channels=[channel])))
            for name in SERVICES:
                service = R.Service(application="shop", name=name, replicas=1,
                                    programs=[R.Program(name=name, image=f"example/{name}:1")])
                await record(plane, f"service/shop/{name}", E.ServiceConfigured(service=service, created=True))
                await record(plane, f"release/shop/{name}", E.ReleaseCreated(release=R.Release(
                    id=f"rel-{name}-v1", application="shop", service=name, version="v1", config=service)))

            await eventually(lambda: bool(killed), timeout=60, message="rt-a applied v1 (and the node was killed)")
            assert killed == [(0, 0)], "the node died after the other runtimes applied: not mid-release"
            everything = {(name, rt): "CONVERGED" for name in SERVICES for rt in ["", *RUNTIMES]}

            async def converged() -> bool:
                return await statuses(plane) == everything

            await eventually(converged, timeout=60, interval=0.2, message="the releases converged after the node loss")
            for nc in (plane_nc, *agent_ncs):
                assert nc.is_connected and node_of(cluster, nc) is not dying, f"{nc.options['name']} is not on a live node"
            assert [nc.options["name"] for nc in on_victim if nc.stats["reconnects"] < 1] == [], "the fault never hit them"
            # Each intent applied once: one rollout per service on every runtime, one intent each.
            assert {rt: r.applies for rt, r in runtimes.items()} == dict.fromkeys(RUNTIMES, len(SERVICES))
            issued = sorted((i.spec.service, i.target.runtime) for i in await intents(plane))
            assert issued == sorted((name, rt) for name in SERVICES for rt in RUNTIMES), "an intent issued twice (or never)"
            await assert_stream_is_the_log(js, plane.store, instance)
            report = await replay_check(plane.store, plane.registry)
            assert report.ok, report.differences[:5]
            dead_letters = (await js.stream_info(bus.dlq_stream(instance))).state.messages
            assert dead_letters == 0, "a message was dead-lettered during the node loss"

            # The node comes back and catches up: its replicas reach the leaders' last sequence.
            cluster.restart(dying.index)
            await cluster.wait_meta_leader()
            for stream in (bus.events_stream(instance), bus.observations_stream(instance)):
                await cluster.wait_stream_current(stream)
                replica = await cluster.stream_replica(dying, stream)
                assert replica is not None and replica.last_seq > 0, f"{dying.name} holds no replica of {stream}"
            await assert_stream_is_the_log(js, plane.store, instance)
    finally:
        for nc in (plane_nc, *agent_ncs):
            await nc.close()
        for runtime in runtimes.values():
            await runtime.close()


async def test_a_release_survives_killing_the_relays_nats_node(
    cluster: NatsCluster, pg_store: PostgresEventStore, subject_prefix: str
) -> None:
    await release_through_a_node_loss(cluster, pg_store, subject_prefix, victim="relay")


async def test_a_release_survives_killing_an_agents_nats_node(
    cluster: NatsCluster, pg_store: PostgresEventStore, subject_prefix: str
) -> None:
    await release_through_a_node_loss(cluster, pg_store, subject_prefix, victim="agent")


async def test_convoy_api_given_three_urls_makes_r3_streams_and_relays_through_a_node_loss(
    cluster: NatsCluster, tmp_path: Path, database_url: str, subject_prefix: str
) -> None:
    """The real entry point: `convoy api` with CONVOY_NATS_URL naming the three nodes in one
    string and CONVOY_NATS_REPLICAS=3 creates the streams at R3; the node its connection is
    on (found with /connz) is killed, and the relay goes on publishing through another."""
    instance = subject_prefix
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env = base | {
        "CONVOY_DATABASE_URL": database_url, "CONVOY_NATS_URL": ",".join(cluster.urls), "CONVOY_NATS_REPLICAS": "3",
        "CONVOY_INSTANCE": instance, "CONVOY_STATE_DIR": str(tmp_path / "state"),
        "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
    }
    client = f"convoy-api:{instance}"
    await cluster.wait_meta_leader()
    try:
        async with service_process(env, "api", "--grpc-port", "0", "--http-port", "0",
                                   ready="press Ctrl-C"):
            store = await PostgresEventStore.open(PostgresSettings(dsn=database_url, schema=instance))
            registry = convoy_registry()
            await eventually(lambda: cluster.node_serving(client), timeout=60, message="the API's connection")
            victim = await cluster.node_serving(client)
            assert victim is not None
            observer = await connect(cluster, (victim.index + 1) % 3, "test-observer")
            try:
                js = observer.jetstream()
                for stream in (bus.events_stream(instance), bus.observations_stream(instance), bus.dlq_stream(instance)):
                    info = await js.stream_info(stream)
                    assert info.config.num_replicas == REPLICAS, f"{stream} has {info.config.num_replicas} replicas"
                shop = R.Application(name="shop")
                await store.append("app/shop", [registry.encode(E.ApplicationCreated(application=shop), actor="alice")])
                await assert_stream_is_the_log(js, store, instance)

                cluster.kill(victim.index)
                web = R.Service(application="shop", name="web", replicas=1)
                await store.append("service/shop/web", [registry.encode(E.ServiceConfigured(service=web, created=True),
                                                                        actor="alice")])
                assert await assert_stream_is_the_log(js, store, instance) == await store.head()
                moved = await cluster.node_serving(client)
                assert moved is not None and moved is not victim
            finally:
                await observer.close()
                await store.close()
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {instance} CASCADE")
        finally:
            await conn.close()
