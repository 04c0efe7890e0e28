"""The agent against real NATS and PostgreSQL: intents in through the relay, observations
back into the store through ingest, a fresh agent converging from the desired state, and
/healthz following the bus."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from eventstore import bus, natsauth
from eventstore.embedded import NatsServer
from eventstore.errors import Unavailable
from eventstore.postgres import PostgresEventStore
from eventstore.subscriptions import H_DLQ_ERROR
from schemas.convoy.v1 import api_pb2, convergence_pb2
from services.agent.agent import Agent, AgentSettings
from services.agent.runtimes.base import Phase, WorkloadKey
from services.agent.runtimes.memory import FAIL_PARAMETER, MemoryRuntime
from services.api.ingest import ObservationIngest
from tests.conftest import eventually
from tests.integration.test_agent_support import FAST, Plane, control_plane
from tests.integration.test_api_support import grpc_stubs, running_api

WEB = WorkloadKey("prod", "shop", "web")


@pytest.fixture
async def plane(pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Plane]:
    async with control_plane(pg_store, embedded_nats.url, subject_prefix) as made:
        yield made


def settings(plane: Plane, runtime: str, **overrides: object) -> AgentSettings:
    values: dict[str, object] = {
        "instance": plane.instance,
        "runtime": runtime,
        "heartbeat_interval": 0.2,
        "reconcile_interval": 0.2,
        "snapshot_timeout": 2.0,
        "subscription": FAST,
    }
    values.update(overrides)
    return AgentSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_agent(url: str, agent_settings: AgentSettings, runtime: MemoryRuntime) -> AsyncIterator[Agent]:
    nc = await bus.connect(
        url, name="test-agent", inbox_prefix=natsauth.agent_inbox_prefix(agent_settings.instance, agent_settings.runtime)
    )
    try:
        agent = Agent(nc=nc, settings=agent_settings, runtime=runtime)
        async with agent:
            await eventually(agent.ready.is_set, message="agent ready")
            yield agent
    finally:
        await nc.close()
        await runtime.close()


async def test_an_intent_is_applied_and_observed_in_the_store(plane: Plane, embedded_nats: NatsServer) -> None:
    await plane.register("rt-a")
    runtime = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime) as agent:
        intent = await plane.intent("rt-a", generation=1)

        async def healthy() -> bool:
            return "HEALTHY" in await plane.kinds("rt-a")

        await eventually(healthy, message="HEALTHY observation in the store")
        observed = await plane.observations("rt-a")
        assert [convergence_pb2.ObservationKind.Name(o.kind) for o in observed][:2] == [
            "OBSERVATION_KIND_RECEIVED",
            "OBSERVATION_KIND_APPLIED",
        ]
        for o in observed:
            assert (o.intent_id, o.generation, o.spec_hash, o.runtime) == (intent.intent_id, 1, intent.spec_hash, "rt-a")
        status = await runtime.status(WEB)
        assert (status.phase, status.generation) == (Phase.HEALTHY, 1)
        await eventually(lambda: plane.ingest.alive("rt-a", within=5.0), message="heartbeat seen")
        assert agent.stats.applied == 1


async def test_the_same_intent_twice_is_applied_once(plane: Plane, embedded_nats: NatsServer) -> None:
    await plane.register("rt-a")
    runtime = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime) as agent:
        intent = await plane.intent("rt-a", generation=1)
        await plane.append_intent(intent)  # the planner's retry: a second event, same intent
        await eventually(lambda: agent.stats.intents == 2, message="both deliveries handled")
        assert runtime.applies == 1
        assert agent.stats.duplicates == 1

        async def one_of_each() -> bool:
            kinds = await plane.kinds("rt-a")
            return "HEALTHY" in kinds and kinds.count("RECEIVED") == 1 and kinds.count("APPLIED") == 1

        await eventually(one_of_each, message="one RECEIVED, one APPLIED, HEALTHY")


async def test_an_older_generation_after_a_newer_one_is_ignored(plane: Plane, embedded_nats: NatsServer) -> None:
    await plane.register("rt-a")
    runtime = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime) as agent:
        newer = await plane.intent("rt-a", generation=2, version="v2")
        await plane.intent("rt-a", generation=1, version="v1")
        await eventually(lambda: agent.stats.intents == 2, message="both intents handled")
        status = await runtime.status(WEB)
        assert (status.generation, status.spec_hash) == (2, newer.spec_hash)
        assert runtime.applies == 1 and agent.stats.stale == 1


async def test_failures_and_deletes_are_reported(plane: Plane, embedded_nats: NatsServer) -> None:
    await plane.register("rt-a")
    runtime = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime):
        await plane.intent("rt-a", service="api", generation=1, parameters={FAIL_PARAMETER: "crash_loop"})
        await plane.intent("rt-a", generation=1)
        await plane.intent("rt-a", generation=2, delete=True)

        async def reported() -> bool:
            failed = [o for o in await plane.observations("rt-a", service="api") if o.kind == convergence_pb2.OBSERVATION_KIND_FAILED]
            return bool(failed) and failed[0].reason == "crash_loop" and "DELETED" in await plane.kinds("rt-a")

        await eventually(reported, message="FAILED(crash_loop) and DELETED")
        assert (await runtime.status(WEB)).phase is Phase.ABSENT


class BrokenOnNul(MemoryRuntime):
    """A runtime that raises what the local runtime raised for a NUL in an argument
    (`ValueError: embedded null byte`): an error it does not explain."""

    async def apply(self, workload: Any, *, repair: bool = False) -> Any:
        if any("\x00" in value for value in workload.spec.parameters.values()):
            raise ValueError("embedded null byte")
        return await super().apply(workload, repair=repair)


async def test_an_intent_the_runtime_cannot_carry_out_is_reported_failed_and_later_ones_go_through(
    plane: Plane, embedded_nats: NatsServer
) -> None:
    await plane.register("rt-a")
    runtime = BrokenOnNul(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime) as agent:
        await plane.intent("rt-a", generation=1, version="v9", parameters={"docroot": "\x00"})

        async def failed() -> list[convergence_pb2.Observation]:
            return [o for o in await plane.observations("rt-a") if o.kind == convergence_pb2.OBSERVATION_KIND_FAILED]

        await eventually(failed, message="FAILED reported for generation 1")
        [report] = await failed()
        assert (report.generation, report.reason) == (1, "apply_error")
        assert "ValueError: embedded null byte" in report.message
        await plane.intent("rt-a", generation=2, version="v10")

        async def healthy() -> bool:
            return any(o.generation == 2 and o.kind == convergence_pb2.OBSERVATION_KIND_HEALTHY for o in await plane.observations("rt-a"))

        await eventually(healthy, message="generation 2 applied and healthy")
        assert agent.stats.failed == 1
    assert await dead_lettered_agent(plane, "rt-a") == 0


@pytest.mark.fault
async def test_an_intent_waits_out_an_unavailable_runtime_longer_than_its_redeliveries(
    plane: Plane, embedded_nats: NatsServer
) -> None:
    """FAST allows 3 deliveries (~0.15 s of backoff): the runtime stays down until both
    workloads' intents have been retried more often than that, then comes back; both are
    applied, nothing is dead-lettered."""
    await plane.register("rt-a")
    runtime = MemoryRuntime(name="rt-a")
    quick = settings(plane, "rt-a", unavailable_retry=0.02, unavailable_retry_cap=0.05)
    async with running_agent(embedded_nats.url, quick, runtime) as agent:
        runtime.outage(True)
        await plane.intent("rt-a", generation=1)
        await plane.intent("rt-a", service="api", generation=1)
        await eventually(lambda: agent.stats.parked >= 2, message="both intents wait for the runtime")
        tries = runtime.refused
        await eventually(lambda: runtime.refused >= tries + 2 * FAST.max_deliver, message="retried past the redeliveries")
        runtime.outage(False)

        async def both_healthy() -> bool:
            kinds = {(o.service, o.kind) for s in ("web", "api") for o in await plane.observations("rt-a", service=s)}
            return {("web", convergence_pb2.OBSERVATION_KIND_HEALTHY), ("api", convergence_pb2.OBSERVATION_KIND_HEALTHY)} <= kinds

        await eventually(both_healthy, message="both applied once the runtime is back")
        assert runtime.applies == 2
    assert await dead_lettered_agent(plane, "rt-a") == 0


async def dead_lettered_agent(plane: Plane, runtime: str) -> int:
    info = await plane.nc.jetstream().stream_info(bus.dlq_stream(plane.instance), subjects_filter=">")
    subjects = info.state.subjects or {}
    return sum(n for subject, n in subjects.items() if subject == bus.dlq_subject(plane.instance, natsauth.agent_consumer(runtime)))


async def test_drift_is_reported_and_repaired_when_asked(plane: Plane, embedded_nats: NatsServer) -> None:
    await plane.register("rt-a")
    runtime = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime) as agent:
        await plane.intent("rt-a", generation=1, repair_drift=True)
        await eventually(lambda: runtime.applies == 1, message="applied")
        runtime.tamper(WEB)

        async def drift_reported() -> bool:
            return "DRIFTED" in await plane.kinds("rt-a")

        await eventually(drift_reported, message="DRIFTED in the store")
        await eventually(lambda: agent.stats.repaired >= 1, message="drift repaired")
        await eventually(lambda: not runtime._live[WEB].status.drifted, message="live workload matches again")


async def test_a_fresh_agent_converges_from_the_desired_state(
    plane: Plane, embedded_nats: NatsServer, tmp_path: Path
) -> None:
    await plane.register("rt-a")
    first = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a", state_dir=tmp_path), first) as agent:
        await plane.intent("rt-a", generation=1, version="v1")
        newest = await plane.intent("rt-a", generation=2, version="v2")
        await plane.intent("rt-a", service="api", generation=1)
        await plane.intent("rt-a", service="gone", generation=1)
        await plane.intent("rt-a", service="gone", generation=2, delete=True)
        await eventually(lambda: agent.stats.intents == 5, message="all intents handled")

    # Killed; a new agent with an empty state folder and an empty runtime (a rebuilt cluster).
    fresh = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a", state_dir=tmp_path / "new"), fresh) as again:
        live = {s.key: s for s in await fresh.live()}
        assert set(live) == {WEB, WorkloadKey("prod", "shop", "api")}
        assert (live[WEB].generation, live[WEB].spec_hash) == (2, newest.spec_hash)
        assert again.stats.snapshots == 1 and fresh.applies == 2

    # Restarted with its state but an emptied runtime: it re-applies, too.
    emptied = MemoryRuntime(name="rt-a")
    async with running_agent(embedded_nats.url, settings(plane, "rt-a", state_dir=tmp_path), emptied):
        assert {s.key for s in await emptied.live()} == {WEB, WorkloadKey("prod", "shop", "api")}


async def test_bad_observations_are_dead_lettered_and_nothing_is_written(plane: Plane) -> None:
    js = plane.nc.jetstream()
    subject = bus.observation_subject(plane.instance, "rt-a", "prod", "shop", "web")
    await js.publish(subject, b"\xff\xff not protobuf")
    foreign = convergence_pb2.Observation(
        observation_id="o-1", runtime="rt-b", namespace="prod", application="shop", service="web",
        kind=convergence_pb2.OBSERVATION_KIND_HEALTHY,
    )
    await js.publish(subject, foreign.SerializeToString())
    unnamed = convergence_pb2.Observation(observation_id="o-2", runtime="rt-a", kind=convergence_pb2.OBSERVATION_KIND_HEALTHY)
    await js.publish(subject, unnamed.SerializeToString())
    await eventually(lambda: plane.ingest.rejected == 3, message="three rejections")

    dlq = await js.pull_subscribe(bus.dlq_subject(plane.instance, "api-ingest"), durable=None, stream=bus.dlq_stream(plane.instance))
    try:
        messages = await dlq.fetch(3, timeout=5)
        reasons = [m.headers[H_DLQ_ERROR] for m in messages if m.headers]
    finally:
        await dlq.unsubscribe()
    assert any("not an Observation" in r for r in reasons)
    assert any("claims runtime 'rt-b'" in r for r in reasons)
    assert any("lacks namespace" in r for r in reasons)
    assert await plane.store.read_all(categories=["observation"]) == []
    assert plane.ingest.recorded == 0


async def test_a_redelivered_observation_is_recorded_once(plane: Plane) -> None:
    js = plane.nc.jetstream()
    subject = bus.observation_subject(plane.instance, "rt-a", "prod", "shop", "web")
    observation = convergence_pb2.Observation(
        observation_id="o-same", runtime="rt-a", namespace="prod", application="shop", service="web",
        kind=convergence_pb2.OBSERVATION_KIND_HEALTHY, intent_id="i-1", generation=1,
    )
    # Different Nats-Msg-Ids: JetStream keeps both, so ingest sees the observation twice.
    for msg_id in ("a", "b"):
        await js.publish(subject, observation.SerializeToString(), headers={bus.H_MSG_ID: msg_id})
    await eventually(lambda: plane.ingest.recorded + plane.ingest.duplicates == 2, message="both handled")
    assert (plane.ingest.recorded, plane.ingest.duplicates) == (1, 1)
    assert len(await plane.store.read_all(categories=["observation"])) == 1


def observation(observation_id: str, *, service: str = "web", runtime: str = "rt-a", **fields: object) -> convergence_pb2.Observation:
    return convergence_pb2.Observation(
        observation_id=observation_id, runtime=runtime, namespace="prod", application="shop", service=service,
        kind=fields.pop("kind", convergence_pb2.OBSERVATION_KIND_HEALTHY), **fields,  # type: ignore[arg-type]
    )


async def publish(plane: Plane, *items: convergence_pb2.Observation | tuple[str, bytes], msg_id: str = "") -> None:
    """Publish observations (on their workload's subject) or raw (subject, payload) pairs,
    each with its own Nats-Msg-Id so JetStream keeps repeats."""
    js = plane.nc.jetstream()
    for n, item in enumerate(items):
        if isinstance(item, tuple):
            subject, data = item
        else:
            subject = bus.observation_subject(plane.instance, item.runtime, item.namespace, item.application, item.service)
            data = item.SerializeToString()
        await js.publish(subject, data, headers={bus.H_MSG_ID: f"{msg_id}{n}-{uuid.uuid4().hex}"})


async def dead_lettered(plane: Plane, count: int) -> list[str]:
    js = plane.nc.jetstream()
    dlq = await js.pull_subscribe(bus.dlq_subject(plane.instance, "api-ingest"), durable=None, stream=bus.dlq_stream(plane.instance))
    try:
        messages = await dlq.fetch(count, timeout=5)
    finally:
        await dlq.unsubscribe()
    return [m.headers[H_DLQ_ERROR] for m in messages if m.headers]


async def ingest_drained(plane: Plane) -> bool:
    info = await plane.nc.jetstream().consumer_info(bus.observations_stream(plane.instance), "api-ingest")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_backlog_is_recorded_in_a_few_commits_in_publish_order(plane: Plane) -> None:
    """Everything a pull brings goes to the store in one commit, each workload's
    observations in publish order; a redelivered observation among them is answered by
    the store as the retry it is, without splitting the batch."""
    sent = [observation(f"o-{n:02d}", service=("web", "api", "db")[n % 3], generation=n) for n in range(60)]
    await publish(plane, sent[0])
    await eventually(lambda: plane.ingest.recorded == 1, message="o-00 recorded")
    await plane.ingest.stop()  # observations pile up, as while the API is down
    await publish(plane, *sent)  # o-00 again, then 59 new ones
    commits = plane.ingest.commits
    await plane.ingest.start()
    await eventually(lambda: plane.ingest.recorded == 60, message="backlog recorded")
    assert plane.ingest.duplicates == 1
    assert plane.ingest.commits - commits <= 10, "one commit per pull, not one per observation"
    for service in ("web", "api", "db"):
        recorded = [o.observation_id for o in await plane.observations("rt-a", service=service)]
        assert recorded == [o.observation_id for o in sent if o.service == service]
    await eventually(lambda: ingest_drained(plane), message="all acked")


async def test_repeats_in_a_batch_are_recorded_once_and_the_first_report_stands(plane: Plane) -> None:
    """A batch holding an observation id already recorded with other details makes the
    store refuse the batch as one write; the ingest then records it observation by
    observation, where that one is a duplicate (the first report stands). An exact
    redelivery and an observation published twice in one batch are recorded once too."""
    await publish(plane, observation("o-0", generation=1))
    await publish(plane, observation("o-1", generation=1, reason="first"))
    await eventually(lambda: plane.ingest.recorded == 2, message="o-0 and o-1 recorded")
    await plane.ingest.stop()
    await publish(
        plane,
        observation("o-0", generation=1),  # redelivered as is
        observation("n-1", generation=2),
        observation("o-1", generation=1, reason="re-reported after a restart"),
        observation("n-2", generation=3),
        observation("n-2", generation=3),  # published twice
        observation("n-3", generation=4),
    )
    await plane.ingest.start()
    await eventually(lambda: plane.ingest.recorded + plane.ingest.duplicates == 8, message="all handled")
    assert (plane.ingest.recorded, plane.ingest.duplicates, plane.ingest.rejected) == (5, 3, 0)
    recorded = await plane.observations("rt-a")
    assert [o.observation_id for o in recorded] == ["o-0", "o-1", "n-1", "n-2", "n-3"]
    assert recorded[1].reason == "first"
    await eventually(lambda: ingest_drained(plane), message="all acked")


async def test_bad_messages_do_not_poison_their_batch(plane: Plane) -> None:
    await plane.ingest.stop()
    subject = bus.observation_subject(plane.instance, "rt-a", "prod", "shop", "web")
    beat = convergence_pb2.Heartbeat(runtime="rt-a", agent_id="agent-1", workloads=2)
    await publish(
        plane,
        observation("g-1"),
        (subject, b"\xff\xff not protobuf"),
        observation("g-2", service="api"),
        (bus.observation_subject(plane.instance, "rt-a", "heartbeat"), beat.SerializeToString()),
        (subject, observation("f-1", runtime="rt-b").SerializeToString()),  # speaking for another runtime
        observation("g-3"),
    )
    await plane.ingest.start()
    await eventually(lambda: plane.ingest.recorded == 3 and plane.ingest.rejected == 2, message="batch handled")
    assert [o.observation_id for o in await plane.observations("rt-a")] == ["g-1", "g-3"]
    assert [o.observation_id for o in await plane.observations("rt-a", service="api")] == ["g-2"]
    reasons = await dead_lettered(plane, 2)
    assert any("not an Observation" in r for r in reasons) and any("claims runtime 'rt-b'" in r for r in reasons)
    seen = plane.ingest.last_heartbeat("rt-a")
    assert seen is not None and seen.agent_id == "agent-1"
    await eventually(lambda: ingest_drained(plane), message="all acked")


class FlakyStore:
    """The store, but its commits fail as if PostgreSQL were down until `heal()`;
    `failures` counts the commits refused."""

    def __init__(self, store: PostgresEventStore) -> None:
        self._store = store
        self.failures = 0
        self.healed = False

    def heal(self) -> None:
        self.healed = True

    async def commit(self, *args: Any, **kwargs: Any) -> Any:
        if not self.healed:
            self.failures += 1
            raise Unavailable("the database is restarting")
        return await self._store.commit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.fault
async def test_a_batch_the_store_could_not_take_is_retried_in_order_and_acked_only_after_its_commit(plane: Plane) -> None:
    """The store is down when r-0 arrives; r-1 … r-4 of the same workload arrive while it
    is retried. All are recorded in publish order once the store is back: r-0 is waited
    out in place, not nak'd to come back after the others."""
    await plane.ingest.stop()
    flaky = FlakyStore(plane.store)
    ingest = ObservationIngest(nc=plane.nc, store=flaky, instance=plane.instance, settings=FAST)  # type: ignore[arg-type]
    sent = [observation(f"r-{n}", generation=n) for n in range(5)]
    async with ingest:
        await publish(plane, sent[0])
        await eventually(lambda: flaky.failures >= 2, message="r-0's commit refused, and tried again")
        await publish(plane, *sent[1:])
        info = await plane.nc.jetstream().stream_info(bus.observations_stream(plane.instance))
        assert info.state.messages == 5
        flaky.heal()
        await eventually(lambda: ingest.recorded == 5, message="recorded once the store is back")
        await eventually(lambda: ingest_drained(plane), message="acked after the commit")
    assert [o.observation_id for o in await plane.observations("rt-a")] == [o.observation_id for o in sent]
    assert ingest.rejected == 0 and ingest.duplicates == 0 and ingest.store_retries >= 2


@pytest.mark.fault
async def test_healthz_fails_when_the_bus_is_lost_longer_than_the_threshold(
    own_nats: NatsServer, subject_prefix: str
) -> None:
    agent_settings = AgentSettings(
        instance=subject_prefix, runtime="rt-h", health_address="127.0.0.1:0", bus_loss_threshold=0.3,
        snapshot_timeout=0.5, subscription=FAST,
    )
    nc = await bus.connect(own_nats.url, name="test-agent-health")
    runtime = MemoryRuntime(name="rt-h")
    try:
        async with Agent(nc=nc, settings=agent_settings, runtime=runtime) as agent, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{agent.health_port}/healthz"

            async def status() -> int:
                async with http.get(url) as response:
                    return response.status

            assert await status() == 200
            own_nats.stop()
            await eventually(lambda: not nc.is_connected, message="disconnected")
            assert agent.liveness.lost_for() < 0.3 or await status() == 503
            await eventually(lambda: _is(status, 503), message="/healthz 503 after the threshold")
            own_nats.start()
            await eventually(lambda: _is(status, 200), message="/healthz 200 after reconnecting")
    finally:
        await nc.close()
        await runtime.close()


async def _is(status: object, expected: int) -> bool:
    return await status() == expected  # type: ignore[operator]


# -- the agent's runtime, as the API tells it ------------------------------------------------

AVAILABLE = convergence_pb2.Heartbeat.RUNTIME_AVAILABILITY_AVAILABLE
UNAVAILABLE = convergence_pb2.Heartbeat.RUNTIME_AVAILABILITY_UNAVAILABLE


async def test_get_runtime_says_when_the_agents_runtime_is_unavailable_and_when_it_is_back(
    plane: Plane, embedded_nats: NatsServer, tmp_path: Path
) -> None:
    await plane.register("rt-a")
    head = await plane.store.head()
    runtime = MemoryRuntime(name="rt-a")
    async with (
        running_api(plane.store, tmp_path / "state", heartbeats=plane.ingest.last_heartbeat) as api,
        grpc_stubs(api.grpc_target) as stubs,
        running_agent(embedded_nats.url, settings(plane, "rt-a"), runtime) as agent,
    ):

        async def agent_state() -> api_pb2.RuntimeState.Agent:
            request = api_pb2.GetRuntimeRequest(name="rt-a", min_position=head)
            state = await stubs.runtimes.GetRuntime(request, metadata=api.admin_metadata)
            return state.agent

        async def is_(availability: int) -> bool:
            seen = await agent_state()
            return seen.connected and seen.runtime_availability == availability

        await eventually(lambda: is_(AVAILABLE), message="GetRuntime: agent connected, runtime available")
        seen = await agent_state()
        assert seen.agent_id == agent.settings.agent_id and not seen.runtime_error
        assert not seen.HasField("runtime_unavailable_since")

        runtime.outage(True)  # every runtime call fails from now: reconcile notices first
        await eventually(lambda: is_(UNAVAILABLE), message="GetRuntime: runtime unavailable")
        seen = await agent_state()
        assert "unavailable (simulated outage)" in seen.runtime_error
        assert seen.HasField("runtime_unavailable_since") and seen.connected
        async with aiohttp.ClientSession() as http:
            url = f"{api.base_url}/v1/runtimes/rt-a"
            async with http.get(url, headers={"Authorization": f"Bearer {api.admin}"}) as response:
                assert response.status == 200
                rest = (await response.json())["agent"]
        assert rest["runtimeAvailability"] == "RUNTIME_AVAILABILITY_UNAVAILABLE" and rest["connected"] is True
        assert "simulated outage" in rest["runtimeError"] and rest["runtimeUnavailableSince"]

        runtime.outage(False)
        await eventually(lambda: is_(AVAILABLE), message="GetRuntime: runtime available again")
        seen = await agent_state()
        assert not seen.runtime_error and not seen.HasField("runtime_unavailable_since")
        listed = await stubs.runtimes.ListRuntimes(api_pb2.ListRuntimesRequest(), metadata=api.admin_metadata)
        assert [(r.runtime.name, r.agent.connected, r.agent.runtime_availability) for r in listed.runtimes] == [
            ("rt-a", True, AVAILABLE)
        ]


async def test_ingest_ignores_malformed_heartbeats_and_keeps_going(plane: Plane) -> None:
    subject = natsauth.heartbeat_subject(plane.instance, "rt-a")

    def beat(agent_id: str, **fields: Any) -> bytes:
        message = convergence_pb2.Heartbeat(runtime="rt-a", agent_id=agent_id, **fields)
        message.sent_at.GetCurrentTime()
        return message.SerializeToString()

    huge = "connection refused to https://k8s.example:6443 " + "x" * 100_000
    bad_time = convergence_pb2.Heartbeat(runtime="rt-a", agent_id="bad-time")
    bad_time.sent_at.seconds = 10**12
    with capture_logs() as logs:
        for data in (
            beat("oversized", runtime_availability=UNAVAILABLE, runtime_error=huge),
            beat("bad-kind", runtime_availability=7),
            bad_time.SerializeToString(),
            beat("x" * 100_000),
            b"\xff\xff not protobuf",
            convergence_pb2.Heartbeat(runtime="rt-b" * 10_000, agent_id="speaking-for-another").SerializeToString(),
        ):
            await plane.nc.publish(subject, data)
        await plane.nc.flush()

        def oversized_seen() -> bool:
            seen = plane.ingest.last_heartbeat("rt-a")
            return seen is not None and seen.agent_id == "oversized"

        await eventually(oversized_seen, message="the oversized heartbeat kept, cut")
        kept = plane.ingest.last_heartbeat("rt-a")
        assert kept is not None and kept.runtime_error.startswith("connection refused to https://k8s.example:6443 ")
        assert len(kept.runtime_error.encode()) <= 1024
        await eventually(lambda: sum(e["event"] == "heartbeat ignored" for e in logs) == 5, message="5 ignored")
        await plane.nc.publish(subject, beat("last", runtime_availability=AVAILABLE))
        await eventually(lambda: getattr(plane.ingest.last_heartbeat("rt-a"), "agent_id", "") == "last", message="last")
    assert plane.ingest.running
    ignored = [e for e in logs if e["event"] == "heartbeat ignored"]
    assert max(len(str(e)) for e in logs) < 2048
    reasons = " | ".join(e["reason"] for e in ignored)
    for words in ("no known runtime availability (7)", "invalid timestamp", "longer than 200", "not a Heartbeat", "claims runtime"):
        assert words in reasons, reasons


async def test_an_oversized_heartbeat_error_is_cut_to_its_limit(plane: Plane) -> None:
    subject = natsauth.heartbeat_subject(plane.instance, "rt-a")
    message = convergence_pb2.Heartbeat(
        runtime="rt-a", agent_id="agent-1", runtime_availability=UNAVAILABLE, runtime_error="é" * 50_000
    )
    message.runtime_unavailable_since.GetCurrentTime()
    await plane.nc.publish(subject, message.SerializeToString())
    await eventually(lambda: plane.ingest.last_heartbeat("rt-a") is not None, message="heartbeat seen")
    seen = plane.ingest.last_heartbeat("rt-a")
    assert seen is not None and seen.runtime_unavailable_since is not None
    assert len(seen.runtime_error.encode()) <= 1024 and seen.runtime_error.endswith("(100000 bytes)")
