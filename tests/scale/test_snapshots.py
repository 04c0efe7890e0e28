"""Snapshots bound restarts without changing what is folded: the API's read model and the
planner's state restarted from a snapshot in PostgreSQL equal the fold from position 0
over a realistic log (declarations, releases through approvals and a soak timer, agents'
reports, deletes, tokens, secrets); the restart folds only the tail; a snapshot of
another fold version, or a corrupt one, is ignored and the fold starts from 0 (or from
an older good one); and an instance's service role may keep them."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from eventstore import instances
from eventstore.codec import convoy_registry
from eventstore.embedded import PostgresServer
from eventstore.memory import MemoryEventStore
from eventstore.pgsnapshots import PostgresSnapshotStore
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.snapshots import MemorySnapshotStore, SnapshotPolicy, SnapshotStore, seal
from services.api import snapshots as api_snapshots
from services.api.convergence import ConvergenceView
from services.api.projection import Projection
from services.planner import snapshots as planner_snapshots
from services.planner.clock import FakeClock
from services.planner.engine import INPUT_CATEGORIES
from services.planner.versions import CURRENT
from services.planner.runner import InputRejected, Planner, PlannerSettings, RebuildReport, SnapshotSource, rebuild
from tests.conftest import eventually
from tests.isolation.store_env import Instance, provision
from tests.scale.logs import PLANNER, Clock, LogBuilder
from tests.unit.planner.world import faulty_engine

pytestmark = pytest.mark.scale
REGISTRY = convoy_registry()
OFTEN = SnapshotPolicy(every_events=40, every_seconds=None)
TAKE_NONE = SnapshotPolicy(enabled=False)


async def projection(
    store: PostgresEventStore | MemoryEventStore, snapshots: SnapshotStore | None, policy: SnapshotPolicy = OFTEN
) -> Projection:
    started = Projection(store=store, registry=REGISTRY, convergence=ConvergenceView(), snapshot_store=snapshots,
                         snapshot_policy=policy)
    await started.start()
    return started


def picture(p: Projection) -> tuple[object, ...]:
    assert p._convergence is not None
    channels, releases = p._convergence.export()
    return p.state, dict(p.versions), p.position, [c.SerializeToString(deterministic=True) for c in channels], releases


async def test_api_restart_from_a_snapshot_folds_the_tail_and_equals_the_fold_from_zero(pg_store: PostgresEventStore) -> None:
    log = LogBuilder(pg_store, Clock(datetime.now(UTC)))
    await log.declare()
    for version in ("v1", "v2"):
        await log.round(version)
    snapshots = PostgresSnapshotStore(pool=pg_store.pool)

    first = await projection(pg_store, snapshots)  # folds from 0 and snapshots on the way
    assert first.loaded_from == 0 and first.folded == await pg_store.head()
    await first.snapshotter.flush()  # type: ignore[union-attr]
    assert first.snapshotter is not None and first.snapshotter.stats.taken >= 1
    snapped = first.snapshotter.stats.last_position
    await first.stop()

    await log.round("v3")
    await log.pause_and_resume()
    head = await pg_store.head()
    stored = await snapshots.stored("api", api_snapshots.KIND)
    assert 1 <= len(stored) <= 2 and stored[0].position == snapped

    restarted = await projection(pg_store, snapshots)
    zero = await projection(pg_store, None)
    try:
        assert restarted.loaded_from == snapped > 0
        assert restarted.folded == head - snapped  # only the tail
        assert zero.folded == head
        assert picture(restarted) == picture(zero)
        assert len(picture(zero)[3]) >= 6  # type: ignore[arg-type]  # the convergence view is in it
        assert restarted.state.tokens["t1"].revoked and "gone" not in restarted.state.secrets
        assert "temp" not in restarted.state.applications and restarted.state.secret_key_id == "k2"
    finally:
        await restarted.stop()
        await zero.stop()


async def test_planner_restart_from_a_snapshot_equals_the_rebuild_from_zero(pg_store: PostgresEventStore) -> None:
    log = LogBuilder(pg_store, Clock(datetime.now(UTC)))
    await log.declare()
    await log.round("v1")
    snapshots = PostgresSnapshotStore(pool=pg_store.pool)
    settings = PlannerSettings(name=PLANNER)

    async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)), settings=settings,
                       snapshot_store=snapshots, snapshot_policy=OFTEN) as first:
        await eventually(lambda: first.ready.is_set(), timeout=60, message="the planner rebuilt")
        assert first.snapshotter is not None
        await eventually(lambda: first.snapshotter.stats.taken >= 1, timeout=60, message="a snapshot was stored")
        snapped = first.snapshotter.stats.last_position
    assert snapped == await pg_store.checkpoint(PLANNER)

    for version in ("v2", "v3"):
        await log.round(version)
    await log.pause_and_resume()
    checkpoint = await pg_store.checkpoint(PLANNER)
    assert checkpoint > snapped
    timers_seen = sum(1 for e in await pg_store.read_all(limit=100_000, categories=["timer"]))
    assert timers_seen > 0  # the soak's timers are in the tail

    async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)), settings=settings,
                       snapshot_store=snapshots, snapshot_policy=SnapshotPolicy(enabled=False)) as restarted:
        await eventually(lambda: restarted.ready.is_set(), timeout=60, message="the planner rebuilt from the snapshot")
        from_zero = await rebuild(pg_store, REGISTRY, upto=checkpoint)
        inputs_after = len(await pg_store.read_all(after=snapped, limit=100_000, to_position=checkpoint,
                                                   categories=list(INPUT_CATEGORIES)))
        assert restarted.rebuilt.loaded_from == snapped
        assert restarted.rebuilt.folded == inputs_after  # only the tail
        assert restarted.state == from_zero
        assert planner_snapshots.capture(restarted.state).SerializeToString(deterministic=True) == \
            planner_snapshots.capture(from_zero).SerializeToString(deterministic=True)  # same order too
        assert from_zero.catalog.releases and from_zero.convergences


async def test_a_snapshot_of_another_fold_version_or_corrupt_is_ignored() -> None:
    clock = Clock()
    store = MemoryEventStore(clock=clock)
    log = LogBuilder(store, clock)
    await log.declare()
    await log.round("v1")
    snapshots = MemorySnapshotStore()
    good = await projection(store, snapshots)
    await good.snapshotter.flush()  # type: ignore[union-attr]
    [kept, *_] = await snapshots.stored("api", api_snapshots.KIND)
    await good.stop()
    zero = await projection(store, None)
    expected = picture(zero)
    await zero.stop()

    # Another fold version (a build that folds differently wrote it): ignored.
    foreign = dataclasses.replace(kept, fold_version="api-0+events.0000", position=kept.position + 1)
    snapshots.replace(foreign)
    restarted = await projection(store, snapshots, TAKE_NONE)
    assert restarted.loaded_from == kept.position  # not the foreign one: the older good one
    assert picture(restarted) == expected
    await restarted.stop()

    # A corrupt body (one flipped byte), and a body of garbage under a good envelope.
    body = bytearray(kept.body)
    body[-5] ^= 0xFF
    snapshots.replace(dataclasses.replace(kept, body=bytes(body)))
    snapshots.replace(seal(name="api", kind=api_snapshots.KIND, fold_version=kept.fold_version,
                           position=kept.position - 1, payload=b"\x0a\xff\xff not a snapshot"))
    restarted = await projection(store, snapshots, TAKE_NONE)
    assert restarted.loaded_from == 0 and restarted.folded == await store.head()
    assert picture(restarted) == expected
    await restarted.stop()


async def test_a_planner_snapshot_beyond_the_checkpoint_or_of_another_version_is_not_used() -> None:
    clock = Clock()
    store = MemoryEventStore(clock=clock)
    log = LogBuilder(store, clock)
    await log.declare()
    await log.round("v1")
    checkpoint = await store.checkpoint(PLANNER)
    state = await rebuild(store, REGISTRY, upto=checkpoint)
    snapshots = MemorySnapshotStore()
    payload = planner_snapshots.capture(state).SerializeToString()
    version = planner_snapshots.fold_version(CURRENT.version, REGISTRY)
    await snapshots.save(seal(name=PLANNER, kind="planner", fold_version=version + "x", position=checkpoint, payload=payload))
    await snapshots.save(seal(name=PLANNER, kind="planner", fold_version=version, position=checkpoint + 10, payload=payload))
    report = RebuildReport()
    again = await rebuild(store, REGISTRY, upto=checkpoint, snapshot=SnapshotSource(snapshots, PLANNER), report=report)
    assert report.loaded_from == 0 and again == state


@pytest.fixture
async def instance(embedded_postgres: PostgresServer) -> AsyncIterator[Instance]:
    created = await provision(embedded_postgres.dsn, f"snap_{uuid.uuid4().hex[:8]}")
    try:
        yield created
    finally:
        await instances.delete(embedded_postgres.dsn, created.name, force=True)


async def test_the_service_role_keeps_the_newest_two_snapshots(instance: Instance) -> None:
    store = await PostgresEventStore.open(PostgresSettings(dsn=instance.dsn, schema=instance.name))
    try:
        snapshots = PostgresSnapshotStore(pool=store.pool)
        for position in (10, 20, 30, 30):  # the last one replaces the row at 30
            await snapshots.save(seal(name="api", kind="api", fold_version="f", position=position, payload=b"x" * position))
        stored = await snapshots.stored("api", "api")
        assert [s.position for s in stored] == [30, 20]
        assert await snapshots.stored("planner", "planner") == []
    finally:
        await store.close()


async def test_an_input_rejected_in_the_tail_is_skipped_and_the_fold_restarts_from_the_snapshot() -> None:
    clock = Clock()
    store = MemoryEventStore(clock=clock)
    log = LogBuilder(store, clock)
    await log.declare()
    await log.round("v1")
    snapshots = MemorySnapshotStore()
    snapped = await store.checkpoint(PLANNER)
    state = await rebuild(store, REGISTRY, upto=snapped)
    await snapshots.save(seal(name=PLANNER, kind="planner", fold_version=planner_snapshots.fold_version(CURRENT.version, REGISTRY),
                              position=snapped, payload=planner_snapshots.capture(state).SerializeToString()))
    await log.release("shop", "s2", "boom")  # the faulty planner raises half way through this one
    await log.round("v2")
    checkpoint = await store.checkpoint(PLANNER)

    faulty = faulty_engine()
    told: list[int] = []

    async def rejected(failed: InputRejected) -> None:
        told.append(failed.recorded.position)

    report = RebuildReport()
    from_snapshot = await rebuild(store, REGISTRY, upto=checkpoint, engine=faulty, on_rejected=rejected,
                                  snapshot=SnapshotSource(snapshots, PLANNER), report=report)
    from_zero = await rebuild(store, REGISTRY, upto=checkpoint, engine=faulty, rejected=frozenset(told))
    assert len(told) == 1 and told[0] > snapped and report.loaded_from == snapped
    assert from_snapshot == from_zero
    assert "rel-shop-s2-boom" not in from_snapshot.catalog.releases  # refolded without it, not half way
    assert "rel-shop-s2-v2" in from_snapshot.catalog.releases
