"""Snapshot benchmark: restart-to-ready of the API's read model and the planner over a
log of a million events, with and without snapshots, and their peak RSS.

Starts its own embedded PostgreSQL in a temporary folder and writes a realistic log into
it: declarations (runtimes, applications with a staging and a prod channel, services),
then round after round of releases of every service, each planned by the real planner
(`plan`, its outputs recorded as the runner records them: intents, status changes,
with its checkpoint) and answered by agents (applied, healthy). Events are numbered as
the store numbers them — gapless positions, per-stream versions, the planner's uuid5
output ids — and loaded with COPY in big batches, because a million single appends would
take most of an hour. Then, each in a fresh child process (so RSS is its own):

1. the API's projection and the planner started with no snapshot store (fold from 0);
2. the same with snapshots: a first start takes them (the API every `--every` events
   while it catches up, the planner after its rebuild), a tail of `--tail` events is
   appended, and a second start loads the newest snapshot and folds only the tail.

Prints both, the last line with snapshots:
RESULT log_events=… api_ready_s=… planner_ready_s=… rss_mb=…   (rss: the larger of the two)

    .venv/bin/python bench/snapshots.py [--events 1000000] [--every 10000] [--tail 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import uvloop  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

from bench.stats import result_line  # noqa: E402
from eventstore.codec import convoy_registry  # noqa: E402
from eventstore.embedded import PostgresServer  # noqa: E402
from eventstore.pgsnapshots import PostgresSnapshotStore  # noqa: E402
from eventstore.postgres import PostgresEventStore, PostgresSettings  # noqa: E402
from eventstore.snapshots import SnapshotPolicy  # noqa: E402
from eventstore.types import NewEvent, RecordedEvent, stream_category  # noqa: E402
from schemas.convoy.v1 import convergence_pb2 as C  # noqa: E402
from schemas.convoy.v1 import events_pb2 as E  # noqa: E402
from schemas.convoy.v1 import resources_pb2 as R  # noqa: E402
from services.api.convergence import ConvergenceView  # noqa: E402
from services.api.projection import Projection  # noqa: E402
from services.planner.clock import FakeClock  # noqa: E402
from services.planner.engine import INPUT_CATEGORIES, Input, plan  # noqa: E402
from services.planner.model import PlannerState  # noqa: E402
from services.planner.runner import Planner, PlannerSettings, output_events  # noqa: E402

REGISTRY = convoy_registry()
SCHEMA = "bench_snapshots"
PLANNER = "planner"
COLUMNS = ("position", "stream_id", "category", "version", "event_id", "type", "schema_version", "data", "actor",
           "causation_id", "correlation_id", "recorded_at")


class Generator:
    """Numbers events as the store would and plans every input as the runner would."""

    def __init__(self, *, services: int, runtimes: int) -> None:
        self.services, self.runtimes = services, runtimes
        self.position = 0
        self.versions: dict[str, int] = {}
        self.rows: list[tuple[object, ...]] = []
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.state = PlannerState()
        self.intents: list[E.IntentIssued] = []
        self.checkpoint = 0
        self.round = 0

    def _record(self, stream: str, new: NewEvent) -> RecordedEvent:
        self.position += 1
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        recorded = RecordedEvent(self.position, stream, version, new.event_id, new.type, new.schema_version, new.data,
                                 new.actor, new.causation_id, new.correlation_id, self.now)
        self.rows.append((self.position, stream, stream_category(stream), version, new.event_id, new.type,
                          new.schema_version, new.data, new.actor, new.causation_id, new.correlation_id, self.now))
        return recorded

    def emit(self, stream: str, message: Message, actor: str = "user:ann") -> None:
        self.now += timedelta(milliseconds=1)
        recorded = self._record(stream, REGISTRY.encode(message, actor=actor, event_id=uuid.uuid4()))
        if stream.split("/", 1)[0] not in INPUT_CATEGORIES:
            return
        item = Input(message, recorded.position, recorded.event_id, actor, recorded.recorded_at)
        _, outputs = plan(self.state, item)
        for stream_id, new in output_events(REGISTRY, item, outputs, None):
            self._record(stream_id, new)
        for out in outputs:
            if isinstance(out.message, E.IntentIssued) and out.message.action == C.INTENT_ACTION_APPLY:
                self.intents.append(out.message)
        self.checkpoint = recorded.position

    def declare(self) -> None:
        names = [f"rt{i}" for i in range(self.runtimes)]
        for name in names:
            self.emit(f"runtime/{name}", E.RuntimeRegistered(runtime=R.Runtime(name=name, kind=R.RUNTIME_KIND_EXEC)))
        half = self.runtimes // 2
        staging = R.ReleaseChannel(name="staging", runtimes=[R.RuntimeBinding(runtime=r) for r in names[:half]])
        prod = R.ReleaseChannel(name="prod", runtimes=[R.RuntimeBinding(runtime=r) for r in names[half:]])
        prod.preconditions.add(channel_stable=R.ChannelStable(channel="staging"))
        self.emit("app/shop", E.ApplicationCreated(application=R.Application(name="shop", release_channels=[staging, prod])))
        for i in range(self.services):
            service = R.Service(application="shop", name=f"s{i}", replicas=1,
                                programs=[R.Program(name="main", image="registry.example/app:{{.Parameters.tag}}")])
            self.emit(f"service/shop/s{i}", E.ServiceConfigured(service=service, created=True))

    def release_round(self) -> None:
        self.round += 1
        version = f"v{self.round}"
        for i in range(self.services):
            config = self.state.catalog.services[("shop", f"s{i}")]
            release = R.Release(id=f"rel-s{i}-{version}", application="shop", service=f"s{i}", version=version,
                                config=config, parameters={"tag": version})
            self.emit(f"release/shop/s{i}", E.ReleaseCreated(release=release))
        for _ in range(6):  # agents: applied, healthy — until the prod channel is done too
            intents, self.intents = self.intents, []
            if not intents:
                break
            for intent in intents:
                for kind in (C.OBSERVATION_KIND_APPLIED, C.OBSERVATION_KIND_HEALTHY):
                    obs = C.Observation(
                        observation_id=str(uuid.uuid4()), runtime=intent.target.runtime,
                        namespace=intent.target.namespace, application="shop", service=intent.spec.service,
                        channel=intent.spec.channel, intent_id=intent.intent_id, generation=intent.generation,
                        kind=kind, spec_hash=intent.spec_hash,  # type: ignore[arg-type]
                    )
                    obs.observed_at.FromDatetime(self.now)
                    t = intent.target
                    self.emit(f"observation/{t.runtime}/{t.namespace}/shop/{intent.spec.service}",
                              E.ObservationRecorded(observation=obs), actor=f"agent:{t.runtime}")


async def load(dsn: str, generator: Generator, until: int, *, first: bool) -> None:
    """Generate up to `until` events, COPY them in, and set the planner's checkpoint."""
    if first:
        store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=SCHEMA))  # migrates
        await store.close()
        generator.declare()
    conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        # The measured starts appended too (the planner records its version): go on after them.
        generator.position = max(generator.position, await conn.fetchval("SELECT coalesce(max(position), 0) FROM events"))
        while generator.position < until:
            generator.release_round()
            if len(generator.rows) >= 50_000 or generator.position >= until:
                await conn.copy_records_to_table("events", records=generator.rows, columns=COLUMNS)
                generator.rows.clear()
                print(f"  log at {generator.position:,} events", flush=True)
        await conn.execute(
            "INSERT INTO tracking (name, position) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET position = $2",
            PLANNER, generator.checkpoint,
        )
    finally:
        await conn.close()


# -- the measured child process -------------------------------------------------------


async def measure(dsn: str, what: str, snapshots: bool, every: int) -> dict[str, object]:
    started = time.perf_counter()
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=SCHEMA, pool_max=4))
    snapshot_store = PostgresSnapshotStore(pool=store.pool) if snapshots else None
    policy = SnapshotPolicy(every_events=every, every_seconds=None)
    result: dict[str, object] = {}
    try:
        if what == "api":
            projection = Projection(store=store, registry=REGISTRY, convergence=ConvergenceView(),
                                    snapshot_store=snapshot_store, snapshot_policy=policy, start_timeout=3600)
            await projection.start()
            result.update(ready_s=time.perf_counter() - started, loaded_from=projection.loaded_from,
                          folded=projection.folded, position=projection.position)
            if projection.snapshotter is not None:
                await projection.snapshotter.flush(600)
                result.update(snapshots_taken=projection.snapshotter.stats.taken,
                              capture_s=projection.snapshotter.stats.last_capture_s,
                              snapshot_bytes=projection.snapshotter.stats.last_bytes)
            await projection.stop()
        else:
            planner = Planner(store=store, registry=REGISTRY, clock=FakeClock(datetime(2026, 1, 1, tzinfo=UTC)),
                              settings=PlannerSettings(name=PLANNER), snapshot_store=snapshot_store, snapshot_policy=policy)
            await planner.start()
            await planner.ready.wait()
            result.update(ready_s=time.perf_counter() - started, loaded_from=planner.rebuilt.loaded_from,
                          folded=planner.rebuilt.folded, position=planner.state.position)
            if planner.snapshotter is not None and planner.rebuilt.loaded_from == 0:  # the seeding start takes one
                deadline = time.monotonic() + 600
                while planner.snapshotter.stats.taken == 0 and planner.snapshotter.stats.failed == 0:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)  # a benchmark, not a test: waiting for the background write
                result.update(snapshots_taken=planner.snapshotter.stats.taken,
                              capture_s=planner.snapshotter.stats.last_capture_s,
                              snapshot_bytes=planner.snapshotter.stats.last_bytes)
            await planner.stop()
    finally:
        await store.close()
    result["rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    across exec, so a child would report its parent's (the generator's) peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(dsn: str, what: str, snapshots: bool, every: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--dsn", dsn, "--every", str(every),
         *(["--with-snapshots"] if snapshots else [])],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="log size (at least)")
    parser.add_argument("--every", type=int, default=10_000, help="snapshot every this many events")
    parser.add_argument("--tail", type=int, default=5_000, help="events appended after the snapshots were taken")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--runtimes", type=int, default=10)
    parser.add_argument("--child", choices=["api", "planner"], help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--with-snapshots", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(uvloop.run(measure(args.dsn, args.child, args.with_snapshots, args.every))))
        return
    with tempfile.TemporaryDirectory(prefix="convoy-bench-") as tmp:
        pg = PostgresServer(data_dir=Path(tmp) / "postgres")
        with pg:
            generator = Generator(services=args.services, runtimes=args.runtimes)
            began = time.perf_counter()
            uvloop.run(load(pg.dsn, generator, args.events, first=True))
            print(f"log: {generator.position:,} events in {time.perf_counter() - began:.1f}s", flush=True)
            without = {what: child(pg.dsn, what, False, args.every) for what in ("api", "planner")}
            head_without = generator.position
            print(f"without snapshots: {json.dumps(without)}", flush=True)
            seeding = {what: child(pg.dsn, what, True, args.every) for what in ("api", "planner")}
            print(f"first start with snapshots (takes them): {json.dumps(seeding)}", flush=True)
            uvloop.run(load(pg.dsn, generator, generator.position + args.tail, first=False))
            with_ = {what: child(pg.dsn, what, True, args.every) for what in ("api", "planner")}
            print(f"with snapshots, after a tail of {args.tail:,}: {json.dumps(with_)}", flush=True)
            head = generator.position
            # the same figures without snapshots, for the note (bench/run reads only the RESULT line)
            print(result_line(figures(head_without, without)).replace("RESULT", "WITHOUT", 1))
            print(result_line(figures(head, with_)))


def figures(log_events: int, ready: dict[str, dict[str, object]]) -> dict[str, object]:
    """The RESULT figures of one pair of restarts; rss is the larger of the two processes'."""
    return {
        "log_events": log_events,
        "api_ready_s": f"{float(ready['api']['ready_s']):.2f}",  # type: ignore[arg-type]
        "planner_ready_s": f"{float(ready['planner']['ready_s']):.2f}",  # type: ignore[arg-type]
        "rss_mb": f"{max(float(ready[w]['rss_mb']) for w in ready):.0f}",  # type: ignore[arg-type]
    }

if __name__ == "__main__":
    main()
