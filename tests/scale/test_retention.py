"""Retention that loses nothing: the events stream forgets, agents still converge.

PostgreSQL is the record; the JetStream events stream has limits (bus.EventsRetention).
Here the limit is tiny (a few dozen messages), releases run through the planner on real
NATS and PostgreSQL until the intents that carry the current desired state are gone from
the stream, and then:

- a FRESH agent (no state, an empty runtime) converges from the desired-state snapshot,
  with nothing left on the stream to replay;
- a LAGGING agent, stopped while its runtime's intents were issued and dropped (its
  consumer's ack floor is below the stream's first sequence), restarts and converges;
- a RUNNING agent whose consumer was cut off while its intents were dropped notices the
  gap once it consumes again (services/agent/continuity.py) and resyncs;
- observation ingest and the consumers the control plane keeps in sync go on working on
  a stream whose first sequence moved.

Also: the limits reach an existing stream (ensure_streams updates it) and come from
validated settings; idempotency receipts expire after their TTL (an injected clock, no
waiting) and a retry after it is a new command.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client

from eventstore import bus, natsauth
from eventstore.codec import convoy_registry
from eventstore.embedded import NatsServer
from eventstore.errors import InvalidInput
from eventstore.postgres import PostgresEventStore
from eventstore.relay import Relay, RelaySettings
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from schemas.convoy.v1 import api_pb2
from services.agent.agent import Agent, AgentSettings
from services.agent.continuity import Continuity
from services.agent.runtimes.base import WorkloadKey
from services.agent.runtimes.memory import MemoryRuntime
from services.api.desired import DesiredState
from services.api.idempotency import ReceiptPurge
from services.api.ingest import ObservationIngest
from services.api.natsauth_sync import NatsAuthSync
from services.planner.clock import FakeClock
from services.planner.model import status_name
from services.planner.replay import replay_check
from services.planner.runner import Planner
from tests.conftest import eventually
from eventstore.settings import Settings
from tests.integration.test_agent_support import FAST, Plane
from tests.integration.test_api_grpc import CREATED, UNCHANGED, declaration_stub, declarations
from tests.integration.test_api_support import application, bearer, running_api, runtime

pytestmark = pytest.mark.scale

TINY = bus.EventsRetention(max_age=None, max_msgs=30)
"""About two releases' worth of messages: every release drops older ones."""
APP = "shop"
SERVICES = ("web", "api")
WAIT = 60.0


@contextlib.asynccontextmanager
async def tiny_plane(store: PostgresEventStore, nats_url: str, instance: str) -> AsyncIterator[Plane]:
    """The control plane's bus side (relay, ingest, desired state, consumer sync) with the
    tiny retention, given to the relay too (it applies the limits whenever it checks the
    streams)."""
    nc = await bus.connect(nats_url, name="test-retention-plane")
    registry = convoy_registry()
    try:
        await bus.ensure_streams(nc.jetstream(), instance, retention=TINY)
        relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=instance, idle_poll=0.2, retention=TINY))
        ingest = ObservationIngest(nc=nc, store=store, instance=instance, settings=FAST)
        desired = DesiredState(nc=nc, store=store, instance=instance)
        sync = NatsAuthSync(store=store, nc=nc, instance=instance, server=None, system_password=None)
        async with relay, ingest, desired, sync:
            yield Plane(store, nc, instance, registry, relay, ingest, desired, sync)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def agent_of(
    url: str, instance: str, runtime: str, cluster: MemoryRuntime, state_dir: Path | None
) -> AsyncIterator[Agent]:
    nc = await bus.connect(url, name=f"test-agent-{runtime}", inbox_prefix=natsauth.agent_inbox_prefix(instance, runtime))
    settings = AgentSettings(
        instance=instance, runtime=runtime, state_dir=state_dir, heartbeat_interval=0.2, reconcile_interval=0.5,
        snapshot_timeout=2.0, continuity_interval=0.2, subscription=FAST,
    )
    try:
        async with Agent(nc=nc, settings=settings, runtime=cluster) as agent:
            await eventually(agent.ready.is_set, timeout=WAIT, message=f"agent of {runtime} ready")
            yield agent
    finally:
        await nc.close()


async def record(plane: Plane, stream: str, message: object) -> None:
    await plane.store.append(stream, [plane.registry.encode(message, actor="alice")])  # type: ignore[arg-type]


async def status(plane: Plane, service: str, channel: str) -> tuple[str, str]:
    """(version, status) of a service in a channel, from the record."""
    last = ("", "")
    for recorded in await plane.store.read_all(categories=["convergence"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.InstanceStatusChanged) and not m.target.runtime and (m.service, m.channel) == (service, channel):
            last = (m.version, status_name(m.new_status))
    return last


async def intents_of(plane: Plane, runtime: str, service: str) -> list[E.IntentIssued]:
    found = []
    for recorded in await plane.store.read_all(categories=["intent"], limit=100_000):
        m = plane.registry.decode(recorded).message
        if isinstance(m, E.IntentIssued) and (m.target.runtime, m.spec.service) == (runtime, service):
            found.append(m)
    return found


async def on_stream(plane: Plane, runtime: str, namespace: str, service: str) -> bool:
    """Whether the events stream still holds any event of the runtime's intent stream for
    `service` (the planner's intents and checks requests)."""
    subject = bus.event_subject(plane.instance, f"intent/{runtime}/{namespace}/{APP}/{service}")
    try:
        await plane.nc.jetstream().get_last_msg(bus.events_stream(plane.instance), subject)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def stream_first(nc: Client, instance: str) -> int:
    return (await nc.jetstream().stream_info(bus.events_stream(instance))).state.first_seq


async def release(plane: Plane, service: str, version: str) -> None:
    config = R.Service(application=APP, name=service, replicas=1, programs=[R.Program(name=service, image=f"example/{service}:1")])
    await record(plane, f"release/{APP}/{service}", E.ReleaseCreated(
        release=R.Release(id=f"rel-{service}-{version}", application=APP, service=service, version=version, config=config)))


async def running(plane: Plane, cluster: MemoryRuntime, namespace: str, service: str) -> str:
    """The version the runtime runs for `service` ("" for none), by the intent it applied."""
    live = {s.key: s for s in await cluster.live()}
    found = live.get(WorkloadKey(namespace, APP, service))
    if found is None:
        return ""
    runtime = cluster.name
    return next((i.spec.version for i in await intents_of(plane, runtime, service) if i.intent_id == found.intent_id), "?")


@pytest.mark.fault
async def test_fresh_lagging_and_cut_off_agents_converge_after_the_stream_dropped_their_intents(
    pg_store: PostgresEventStore, own_nats: NatsServer, subject_prefix: str, tmp_path: Path
) -> None:
    async with tiny_plane(pg_store, own_nats.url, subject_prefix) as plane:
        instance = plane.instance
        for runtime in ("rt-a", "rt-b"):
            await record(plane, f"runtime/{runtime}", E.RuntimeRegistered(runtime=R.Runtime(name=runtime, kind=R.RUNTIME_KIND_EXEC)))
        # Two independent channels, one runtime each: a release deploys to both at once.
        application = R.Application(name=APP, release_channels=[
            R.ReleaseChannel(name="a", runtimes=[R.RuntimeBinding(runtime="rt-a")]),
            R.ReleaseChannel(name="b", runtimes=[R.RuntimeBinding(runtime="rt-b")]),
        ])
        await record(plane, f"app/{APP}", E.ApplicationCreated(application=application))
        for service in SERVICES:
            config = R.Service(application=APP, name=service, replicas=1, programs=[R.Program(name=service, image="x:1")])
            await record(plane, f"service/{APP}/{service}", E.ServiceConfigured(service=config, created=True))
        await plane.sync.wait_synced()
        info = await plane.nc.jetstream().stream_info(bus.events_stream(instance))
        assert (info.config.max_msgs, info.config.max_age) == (TINY.max_msgs, 0)

        cluster_a, cluster_b = MemoryRuntime(name="rt-a"), MemoryRuntime(name="rt-b")
        async with Planner(store=plane.store, registry=plane.registry, clock=FakeClock(datetime.now(UTC))):
            async with agent_of(own_nats.url, instance, "rt-a", cluster_a, tmp_path / "a"):
                async with agent_of(own_nats.url, instance, "rt-b", cluster_b, tmp_path / "b"):
                    for service in SERVICES:
                        await release(plane, service, "v1")
                    for service in SERVICES:
                        for channel in ("a", "b"):
                            await eventually(lambda: _is(plane, service, channel, "v1", "CONVERGED"), timeout=WAIT,
                                             message=f"{service} v1 converged in {channel}")
                [ns_a] = {i.target.namespace for i in await intents_of(plane, "rt-a", "web")}
                [ns_b] = {i.target.namespace for i in await intents_of(plane, "rt-b", "web")}

                # rt-b's agent is stopped. web v2 is issued to it, then api releases follow
                # until web's intents are gone from the stream and its consumer is behind it.
                await release(plane, "web", "v2")
                await eventually(lambda: _is(plane, "web", "a", "v2", "CONVERGED"), timeout=WAIT, message="web v2 in a")
                version = 1
                while await on_stream(plane, "rt-b", ns_b, "web") or await on_stream(plane, "rt-a", ns_a, "web"):
                    version += 1
                    await release(plane, "api", f"v{version}")
                    await eventually(lambda: _is(plane, "api", "a", f"v{version}", "CONVERGED"), timeout=WAIT,
                                     message=f"api v{version} in a")
                    assert version < 30, "the stream keeps web's intents however many releases follow"
                consumer = await plane.nc.jetstream().consumer_info(bus.events_stream(instance), natsauth.agent_consumer("rt-b"))
                assert await stream_first(plane.nc, instance) > consumer.ack_floor.stream_seq + 1
                assert await running(plane, cluster_b, ns_b, "web") == "v1"
                latest = f"v{version}"

            # (a) A fresh agent of rt-a: no state, an empty runtime, nothing of web left to replay.
            fresh = MemoryRuntime(name="rt-a")
            async with agent_of(own_nats.url, instance, "rt-a", fresh, None) as agent:
                await eventually(lambda: _runs(plane, fresh, ns_a, {"web": "v2", "api": latest}), timeout=WAIT,
                                 message="the fresh agent runs web v2 and the latest api")
                assert agent.stats.snapshots >= 1

                # The observations stream moves on too (purged while ingest is idle): ingest
                # must go on recording what the agents report next.
                await eventually(lambda: _ingest_idle(plane), timeout=WAIT, message="ingest caught up")
                observations = bus.observations_stream(instance)
                await plane.nc.jetstream().purge_stream(observations)
                assert (await plane.nc.jetstream().stream_info(observations)).state.first_seq > 1

                # (b) rt-b's agent comes back, its cluster and state as it left them.
                async with agent_of(own_nats.url, instance, "rt-b", cluster_b, tmp_path / "b"):
                    await eventually(lambda: _runs(plane, cluster_b, ns_b, {"web": "v2", "api": latest}), timeout=WAIT,
                                     message="the lagging agent runs web v2 and the latest api")
                    for service, wanted in (("web", "v2"), ("api", latest)):
                        await eventually(lambda: _is(plane, service, "b", wanted, "CONVERGED"), timeout=WAIT,
                                         message=f"{service} {wanted} converged in b")

                    # (c) rt-a's agent keeps running but its consumer is cut off while web v3 is
                    # issued and dropped: its continuity check (on the request path, which
                    # still works) finds the gap, with or without the consumer back.
                    await agent._subscription.stop()  # noqa: SLF001 - stands for a consumer that cannot reach the bus
                    gaps = agent.continuity.gaps
                    await release(plane, "web", "v3")
                    await eventually(lambda: _is(plane, "web", "b", "v3", "CONVERGED"), timeout=WAIT, message="web v3 in b")
                    while await on_stream(plane, "rt-a", ns_a, "web"):
                        version += 1
                        await release(plane, "api", f"v{version}")
                        await eventually(lambda: _is(plane, "api", "b", f"v{version}", "CONVERGED"), timeout=WAIT,
                                         message=f"api v{version} in b")
                        assert version < 60, "the stream keeps web's intents however many releases follow"
                    await agent._subscription.start()  # noqa: SLF001 - the bus is reachable again
                    latest = f"v{version}"
                    await eventually(lambda: _runs(plane, fresh, ns_a, {"web": "v3", "api": latest}), timeout=WAIT,
                                     message="the cut-off agent resynced to web v3 and the latest api")
                    assert agent.continuity.gaps > gaps
                    for service, wanted in (("web", "v3"), ("api", latest)):
                        for channel in ("a", "b"):
                            await eventually(lambda: _is(plane, service, channel, wanted, "CONVERGED"), timeout=WAIT,
                                             message=f"{service} {wanted} converged in {channel}")

        # Ingest recorded every agent's observations all along, on a stream that moved on.
        assert await stream_first(plane.nc, instance) > 1
        # Consumer sync started afresh (as by another API process) on the moved stream keeps
        # the agents' consumers and makes a new runtime's.
        async with NatsAuthSync(store=plane.store, nc=plane.nc, instance=instance, server=None, system_password=None) as sync:
            await record(plane, "runtime/rt-c", E.RuntimeRegistered(runtime=R.Runtime(name="rt-c", kind=R.RUNTIME_KIND_EXEC)))
            await sync.wait_synced()
            js = plane.nc.jetstream()
            for name in ("rt-a", "rt-b", "rt-c"):
                made = await js.consumer_info(bus.events_stream(instance), natsauth.agent_consumer(name))
                assert made.config.filter_subjects == bus.intent_filter(instance, name)
        report = await replay_check(plane.store, plane.registry)
        assert report.ok, report.differences[:5]


async def _ingest_idle(plane: Plane) -> bool:
    js = plane.nc.jetstream()
    stream = bus.observations_stream(plane.instance)
    consumers = await js.consumers_info(stream)
    return bool(consumers) and all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers)


async def _is(plane: Plane, service: str, channel: str, version: str, wanted: str) -> bool:
    return await status(plane, service, channel) == (version, wanted)


async def _runs(plane: Plane, cluster: MemoryRuntime, namespace: str, versions: dict[str, str]) -> bool:
    return {s: await running(plane, cluster, namespace, s) for s in versions} == versions


# -- the limits ---------------------------------------------------------------------------


async def test_an_existing_events_stream_gets_the_limits(own_nats: NatsServer, subject_prefix: str) -> None:
    nc = await bus.connect(own_nats.url, name="test-retention-limits")
    try:
        js = nc.jetstream()
        unlimited = bus.EventsRetention(max_age=None, max_msgs=None)
        await bus.ensure_streams(js, subject_prefix, retention=unlimited)
        stream = bus.events_stream(subject_prefix)
        for n in range(10):
            await js.publish(bus.event_subject(subject_prefix, f"release/shop/web{n}"), b"x")
        before = await js.stream_info(stream)
        assert (before.config.max_msgs, before.config.max_bytes, before.config.max_age) == (-1, -1, 0)
        limited = bus.EventsRetention(max_age=3600.0, max_bytes=1 << 20, max_msgs=4)
        await bus.ensure_streams(js, subject_prefix, retention=limited)
        after = await js.stream_info(stream)
        assert (after.config.max_msgs, after.config.max_bytes, after.config.max_age) == (4, 1 << 20, 3600.0)
        assert (after.state.messages, after.state.first_seq, after.state.last_seq) == (4, 7, 10)
        default = next(c for c in bus.stream_configs(subject_prefix) if c.name == stream)
        assert (default.max_age, default.max_msgs, default.max_bytes) == (bus.EVENTS_MAX_AGE, bus.EVENTS_MAX_MSGS, -1)
    finally:
        await nc.close()


def test_retention_settings_are_validated_with_clear_errors() -> None:
    settings = Settings.from_env({
        "HOME": "/h", "CONVOY_EVENTS_MAX_AGE": "36h", "CONVOY_EVENTS_MAX_BYTES": "2GiB",
        "CONVOY_EVENTS_MAX_MSGS": "unlimited", "CONVOY_IDEMPOTENCY_TTL": "2d",
    })
    assert settings.events_retention == bus.EventsRetention(max_age=36 * 3600.0, max_bytes=2 << 30, max_msgs=None)
    assert settings.idempotency_ttl == 2 * 86400.0
    defaults = Settings.from_env({"HOME": "/h"})
    assert defaults.events_retention == bus.EventsRetention() and defaults.idempotency_ttl == 24 * 3600.0
    for name, value, message in [
        ("CONVOY_EVENTS_MAX_AGE", "a week", "must be a positive duration such as 7d"),
        ("CONVOY_EVENTS_MAX_AGE", "0", "must be a positive duration"),
        ("CONVOY_EVENTS_MAX_BYTES", "lots", "must be a positive size such as 20GiB"),
        ("CONVOY_EVENTS_MAX_MSGS", "-5", "must be a positive number of messages"),
        ("CONVOY_IDEMPOTENCY_TTL", "unlimited", "must be a positive duration"),
        ("CONVOY_IDEMPOTENCY_TTL", "10s", "must be at least 60s"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            Settings.from_env({"HOME": "/h", name: value})


def test_continuity_counts_only_what_reached_the_agent() -> None:
    state = Continuity()
    state.snapshot(10)  # a snapshot covering the stream up to 10
    state.delivered(14)  # other runtimes' messages in between: a jump, not a gap by itself
    assert not state.check(5, 14, seen=14) and state.covered == 14
    state.delivered(20)
    assert state.check(16, 25, seen=20)  # 15 is gone, and it may have been ours
    state.snapshot(30)
    assert (state.covered, state.gaps) == (30, 1)
    # A delivery after the reading does not count: a drop the reading did not show may precede it.
    state.delivered(40)
    assert not state.check(31, 40, seen=30) and state.covered == 30
    # A stream deleted and made again (a restore) ends before what was covered: start over.
    assert state.check(1, 12, seen=40) and (state.covered, state.seen, state.gaps) == (0, 0, 2)
    state.snapshot(12)
    assert not state.check(1, 15, seen=12) and state.covered == 12


# -- idempotency receipts ------------------------------------------------------------------


async def test_receipts_expire_after_the_ttl_and_a_later_retry_is_a_new_command(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    clock = [now]
    purge = ReceiptPurge(store=pg_store, ttl=24 * 3600.0, batch=2, clock=lambda: clock[0])
    async with running_api(pg_store, tmp_path / "state") as api:
        request = declarations(runtime(), application())
        async with declaration_stub(api.grpc_target) as sets:
            keys = [f"commit-{n}" for n in range(5)]
            for key in keys:
                await sets.ApplyDeclarations(request, metadata=(*bearer(api.admin), ("idempotency-key", key)))
            keyed = (*bearer(api.admin), ("idempotency-key", keys[0]))
            first = await sets.ApplyDeclarations(request, metadata=keyed)
            assert [r.outcome for r in first.results] == [CREATED, CREATED]  # replayed: the first answer

            clock[0] = now + timedelta(hours=23)
            assert await purge.purge() == 0
            assert await sets.ApplyDeclarations(request, metadata=keyed) == first  # within the TTL: replayed

            clock[0] = now + timedelta(hours=24, minutes=1)
            assert await purge.purge() == 6  # the five keys' and the bootstrap token's, in batches of 2
            again = await sets.ApplyDeclarations(request, metadata=keyed)
            assert [r.outcome for r in again.results] == [UNCHANGED, UNCHANGED]  # decided anew, not replayed
    assert purge.stats == type(purge.stats)(purged=6, rounds=2, failures=0)


async def test_the_purge_runs_as_a_supervised_task(pg_store: PostgresEventStore) -> None:
    async with ReceiptPurge(store=pg_store, interval=3600.0) as purge:
        await eventually(lambda: purge.stats.rounds == 1, message="the first purge round")
    assert purge.stats.failures == 0
