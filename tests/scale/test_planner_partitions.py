"""Partitioned planning keeps the record per application: the same scripted log (several
applications sharing runtimes and a protection; releases, agents' observations, a runtime
paused and resumed, soak timers) planned by one planner and by 2 and 3 partitions gives,
for every application, the same outputs — ids, streams, types, bytes, order within each
stream — and `replay --check` holds a log written by N partitions to one planner's word.

The log is written once and copied row for row (recorded times included: they are the
planner's "now") into one schema per layout, so each layout plans exactly the same inputs.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from google.protobuf.message import Message

from eventstore import bus
from eventstore.codec import convoy_registry
from eventstore.embedded import NatsServer
from eventstore.sessionlock import LockSettings, SessionLock
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.api.planning import NatsPlannerClient
from services.planner.clock import FakeClock
from services.planner.engine import PLANNER_ACTOR
from services.planner.model import status_name
from services.planner.partitions import Partition, bucket, output_application, partition_names
from services.planner.render import default_namespace
from services.planner.replay import replay_check
from services.planner.responder import PlanResponder
from services.planner.runner import Planner, PlannerSettings
from services.planner.versions import history
from tests.conftest import eventually, fresh_store
from tests.e2e.processes import convoy
from tests.unit.planner.world import channel, seconds

pytestmark = pytest.mark.scale

REGISTRY = convoy_registry()
APPS = ["shop", "billing", "search", "media", "chat", "pay"]
"""Chosen so that 2 and 3 partitions each split them (every partition owns some)."""
SERVICES = {"shop": ["web", "cart"], "billing": ["api"], "search": ["index"], "media": ["thumbs", "cdn"], "chat": ["ws"],
            "pay": ["api", "ledger"]}
STAGING, PROD = ["s1"], ["p1", "p2"]
SOAK = 60


def script(now: datetime) -> list[tuple[str, Message]]:
    """(stream, input) of the whole scenario, in log order: the agents' observations are
    the ones they would send for the intents the planner issues (ids are deterministic)."""
    soak = R.ProtectionAttachment(protection="soak", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                  failure_behavior=R.FAILURE_BEHAVIOR_FAIL, duration=seconds(SOAK))
    log: list[tuple[str, Message]] = [
        (f"runtime/{r}", E.RuntimeRegistered(runtime=R.Runtime(name=r, kind=R.RUNTIME_KIND_EXEC))) for r in STAGING + PROD
    ]
    log.append(("protection/soak", E.ProtectionConfigured(protection=R.Protection(name="soak", agent_health=R.HealthCheck()))))
    for app in APPS:
        channels = [channel("staging", *STAGING), channel("prod", *PROD, stable="staging", protections=[soak])]
        log.append((f"app/{app}", E.ApplicationCreated(application=R.Application(name=app, release_channels=channels))))
        for svc in SERVICES[app]:
            config = R.Service(application=app, name=svc, replicas=1, programs=[R.Program(name=svc, image=f"example/{svc}:1")])
            log.append((f"service/{app}/{svc}", E.ServiceConfigured(service=config, created=True)))
    for app in APPS:
        for svc in SERVICES[app]:
            config = R.Service(application=app, name=svc, replicas=1, programs=[R.Program(name=svc, image=f"example/{svc}:2")])
            release = R.Release(id=f"rel-{app}-{svc}", application=app, service=svc, version="v2", config=config)
            log.append((f"release/{app}/{svc}", E.ReleaseCreated(release=release)))
    # A runtime every application uses is paused before prod deploys and resumed while it
    # does: the resume is one input with outputs (p2's intents) for every partition.
    log.append(("runtime/p2", E.RuntimePaused(name="p2", reason="maintenance")))
    log += observations("staging", STAGING, now)
    log += observations("prod", ["p1"], now)
    log.append(("runtime/p2", E.RuntimeResumed(name="p2", reason="done")))
    log += observations("prod", ["p2"], now)
    return log


def observations(channel_name: str, runtimes: list[str], now: datetime, generation: int = 1) -> list[tuple[str, Message]]:
    found: list[tuple[str, Message]] = []
    for app in APPS:
        for svc in SERVICES[app]:
            for runtime in runtimes:
                namespace = default_namespace(app, channel_name)
                for kind in (C.OBSERVATION_KIND_APPLIED, C.OBSERVATION_KIND_HEALTHY):
                    intent = f"int-{app}.{svc}.{runtime}.{namespace}.{generation}"
                    obs = C.Observation(
                        observation_id=f"obs-{intent}-{kind}", runtime=runtime, namespace=namespace, application=app,
                        service=svc, channel=channel_name, intent_id=intent, generation=generation, kind=kind,  # type: ignore[arg-type]
                    )
                    obs.observed_at.FromDatetime(now)
                    found.append((f"observation/{runtime}/{namespace}/{app}/{svc}", E.ObservationRecorded(observation=obs)))
    return found


Record = dict[str, dict[str, list[tuple[uuid.UUID, str, bytes]]]]
"""Per application, per stream, the planner's events in order: (id, type, bytes)."""


async def record_per_application(store: PostgresEventStore) -> Record:
    found: Record = {}
    for event in await store.read_all(categories=["intent", "convergence", "gate", "timer"], limit=1_000_000):
        if event.actor != PLANNER_ACTOR:
            continue
        message = REGISTRY.decode(event).message
        app = output_application(message) or event.stream_id.split("/")[1]  # TimerFired: timer/<app>/...
        found.setdefault(app, {}).setdefault(event.stream_id, []).append((event.event_id, event.type, event.data))
    return found


async def decided_by_resume(store: PostgresEventStore) -> set[str]:
    """The applications the RuntimeResumed input has outputs for."""
    resumed = {e.event_id for e in await store.read_all(categories=["runtime"], limit=100) if e.type.endswith("RuntimeResumed")}
    return {
        output_application(REGISTRY.decode(e).message) or ""
        for e in await store.read_all(categories=["intent", "convergence"], limit=1_000_000)
        if e.causation_id in resumed
    }


async def converged(store: PostgresEventStore, version: str = "v2") -> bool:
    latest: dict[tuple[str, str, str], tuple[str, str]] = {}
    for event in await store.read_all(categories=["convergence"], limit=1_000_000):
        message = REGISTRY.decode(event).message
        if isinstance(message, E.InstanceStatusChanged) and not message.target.runtime:
            latest[(message.application, message.service, message.channel)] = (status_name(message.new_status), message.version)
    wanted = {(app, svc, ch) for app in APPS for svc in SERVICES[app] for ch in ("staging", "prod")}
    return set(latest) == wanted and set(latest.values()) == {("CONVERGED", version)}


@asynccontextmanager
async def copy_of(database_url: str, source: PostgresEventStore) -> AsyncIterator[PostgresEventStore]:
    """A new store holding exactly `source`'s events (row for row, recorded times too)."""
    async with fresh_store(database_url) as store:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"INSERT INTO {store.schema}.events SELECT * FROM {source.schema}.events ORDER BY position")
        finally:
            await conn.close()
        yield store


async def plan_with(store: PostgresEventStore, count: int, clock: FakeClock, inputs_end: int, version: str = "v2") -> None:
    """Run `count` partitions over the store: the scripted inputs, then the soak timers."""
    async with AsyncExitStack() as stack:
        planners = [
            await stack.enter_async_context(Planner(
                store=store, registry=REGISTRY, clock=clock,
                settings=PlannerSettings(name=Partition(k, count).name, partition=Partition(k, count)),
            ))
            for k in range(count)
        ]

        async def caught_up() -> bool:
            return all([await store.checkpoint(p.settings.name) >= inputs_end for p in planners])

        await eventually(caught_up, timeout=60, interval=0.05, message=f"{count} partition(s) planned the script")
        soaks = [t.fire_at for p in planners for t in p.state.timers.values() if t.purpose == "soak"]
        if soaks:  # (none left when the clock was already past them: they fired as they were scheduled)
            clock.advance(max(soaks) - clock.now() + timedelta(seconds=1))  # due: the timer shells fire them
        await eventually(lambda: converged(store, version), timeout=60, interval=0.05, message="every channel converged")
        if count > 1:
            assert all(p.stats.elsewhere for p in planners), "each partition left some inputs to the others"
        assert all(not p.rejections for p in planners)


async def test_n_partitions_record_per_application_what_one_planner_does(database_url: str) -> None:
    now = datetime.now(UTC)
    async with fresh_store(database_url) as original:
        for n, (stream, message) in enumerate(script(now)):
            await original.append(stream, [REGISTRY.encode(message, actor="alice", event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"script/{n}"))])
        inputs_end = await original.head()
        records: dict[int, Record] = {}
        for count in (1, 2, 3):
            async with copy_of(database_url, original) as store:
                await plan_with(store, count, FakeClock(now), inputs_end)
                records[count] = await record_per_application(store)
                if count == 1:
                    resumed_for = await decided_by_resume(store)
                report = await replay_check(store, REGISTRY, names=partition_names(count))
                assert report.ok, report.differences
                assert report.outputs > 0 and not report.upgraded
        single = records[1]
        assert sorted(single) == sorted(APPS)
        # Every layout splits the applications differently, and the runtime pause reached all.
        assert {bucket(app, 2) for app in APPS} == {0, 1} and {bucket(app, 3) for app in APPS} == {0, 1, 2}
        assert any(s.startswith("timer/") for app in APPS for s in single[app])
        assert resumed_for == set(APPS), "the resume (one input) decided something for every application"
        for count in (2, 3):
            for app in APPS:
                assert records[count][app] == single[app], f"{app} with {count} partitions"


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_each_application_lands_on_exactly_one_partition(count: int) -> None:
    names = [f"app-{i}" for i in range(500)] + APPS
    for name in names:
        owners = [k for k in range(count) if Partition(k, count).owns(name)]
        assert owners == [bucket(name, count)], name
    # Stable across processes and runs: SHA-256, not Python's salted hash().
    assert [bucket(app, 3) for app in APPS] == [int.from_bytes(hashlib.sha256(a.encode()).digest()[:8], "big") % 3 for a in APPS]
    if count > 1:
        assert len({bucket(name, count) for name in names}) == count  # every partition gets some


def test_partition_names_and_parsing() -> None:
    assert Partition.parse("1/3") == Partition(1, 3) and Partition(1, 3).name == "planner-1-of-3"
    assert Partition().name == "planner" and partition_names(2) == ["planner-0-of-2", "planner-1-of-2"]
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            Partition.parse(bad)


def test_shared_inputs_reach_every_partition_and_per_application_ones_only_their_owner() -> None:
    two = [Partition(0, 2), Partition(1, 2)]
    paused = E.RuntimePaused(name="p1")
    assert all(p.takes(paused, "runtime/p1") for p in two)
    infra = E.ResourceLinked(resource=R.Resource(name="db", scope=R.RESOURCE_SCOPE_INFRASTRUCTURE))
    assert all(p.takes(infra, "resource/infra/db") for p in two)
    for app in APPS:
        release = E.ReleaseCreated(release=R.Release(id="r", application=app, service="web"))
        fired = E.TimerFired(timer_id=f"tmr/{app}/1/soak")
        assert [p.takes(release, f"release/{app}/web") for p in two].count(True) == 1
        assert [p.takes(fired, f"timer/{app}/web/prod") for p in two] == [p.owns(app) for p in two]


async def test_a_new_partition_layout_starts_where_the_previous_one_stopped(database_url: str, tmp_path: Path) -> None:
    """One planner planned a release; then 2 partitions take over the log: they start at its
    checkpoint (not from 0), plan the next release, and the whole record replays clean."""
    now = datetime.now(UTC)
    async with fresh_store(database_url) as store:
        for n, (stream, message) in enumerate(script(now)):
            await store.append(stream, [REGISTRY.encode(message, actor="alice", event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"script/{n}"))])
        clock = FakeClock(now)
        await plan_with(store, 1, clock, await store.head())
        handed_over = await store.checkpoint("planner")
        outputs_before = len(await store.read_all(categories=["intent", "convergence"], limit=1_000_000))
        later: list[tuple[str, Message]] = []
        for app in APPS:
            for svc in SERVICES[app]:
                config = R.Service(application=app, name=svc, replicas=1, programs=[R.Program(name=svc, image=f"example/{svc}:3")])
                later.append((f"release/{app}/{svc}", E.ReleaseCreated(release=R.Release(
                    id=f"rel-{app}-{svc}-v3", application=app, service=svc, version="v3", config=config))))
        later += observations("staging", STAGING, now, generation=2) + observations("prod", PROD, now, generation=2)
        for n, (stream, message) in enumerate(later):
            await store.append(stream, [REGISTRY.encode(message, actor="alice", event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"later/{n}"))])
        await plan_with(store, 2, clock, await store.head(), version="v3")
        versions = {name: (await history(store, REGISTRY, name))[0] for name in partition_names(2)}
        assert all(v.starts == (handed_over,) for v in versions.values()), versions  # adopted, not refolded from 0
        issued = Counter()
        for event in await store.read_all(categories=["intent"], limit=1_000_000):
            message = REGISTRY.decode(event).message
            issued[(message.target.runtime, message.target.namespace, message.spec.service, message.spec.application,
                    message.generation)] += 1
        assert max(issued.values()) == 1 and len(await store.read_all(categories=["intent", "convergence"], limit=1_000_000)) > outputs_before
        report = await replay_check(store, REGISTRY, names=partition_names(2))
        assert report.ok and not report.upgraded, (report.differences, report.upgraded)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")} | {
            "CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": store.schema,
            "CONVOY_STATE_DIR": str(tmp_path / "state"), "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
        }
        code, out = await convoy(env, "replay", "--check", "--partitions", "2")
        assert code == 0 and "0 difference(s)" in out, out
        code, out = await convoy(env, "replay", "--check", "--partitions", "3")
        assert code == 1 and "no planner planner-0-of-3" in out, out


async def test_the_partition_that_owns_the_application_answers_its_dry_run(
    pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str
) -> None:
    """Every planner hears every dry-run query; the leader of the owning partition answers,
    the other partition and a standby stay silent."""
    now = datetime.now(UTC)
    for n, (stream, message) in enumerate(script(now)):
        await pg_store.append(stream, [REGISTRY.encode(message, actor="alice", event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"script/{n}"))])
    head = await pg_store.head()
    clock = FakeClock(now)

    def planner(k: int) -> Planner:
        part = Partition(k, 2)
        lock = SessionLock(dsn=pg_store.settings.dsn, key=pg_store.lock_key(f"planner:{part.name}"), name=part.name,
                           settings=LockSettings(poll=0.05))
        return Planner(store=pg_store, registry=REGISTRY, clock=clock, settings=PlannerSettings(partition=part), lock=lock)

    nc = await bus.connect(embedded_nats.url, name="partitions-test")
    try:
        async with AsyncExitStack() as stack:
            leaders = [await stack.enter_async_context(planner(k)) for k in (0, 1)]
            for p in leaders:
                await p.ready.wait()
            standby = await stack.enter_async_context(planner(0))
            await standby.standing_by.wait()
            responders = [await stack.enter_async_context(PlanResponder(nc=nc, planner=p, instance=subject_prefix))
                          for p in [*leaders, standby]]

            async def caught_up() -> bool:
                return all([await pg_store.checkpoint(p.settings.name) >= head for p in leaders])

            await eventually(caught_up, timeout=60, message="both partitions planned the script")
            client = NatsPlannerClient(nc=nc, instance=subject_prefix, timeout=10)
            for app in APPS:
                svc = SERVICES[app][0]
                config = R.Service(application=app, name=svc, replicas=1, programs=[R.Program(name=svc, image=f"example/{svc}:9")])
                query = api_pb2.PlannerQuery(release=R.Release(id=f"dry-{app}", application=app, service=svc, version="v9",
                                                               config=config), actor="alice")
                plan = await client.plan(query)
                assert {step.channel for step in plan.steps} >= {"staging"}, (app, plan)
            owned = [sum(1 for app in APPS if bucket(app, 2) == k) for k in (0, 1)]
            await eventually(lambda: [r.answered for r in responders] == [*owned, 0] and
                             [r.elsewhere for r in responders] == [len(APPS) - owned[0], len(APPS) - owned[1], len(APPS) - owned[0]],
                             timeout=60, message="each query answered by its owner only")
            assert standby.role == "standby"
    finally:
        await nc.close()
