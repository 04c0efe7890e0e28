"""Event store benchmark: Convoy's append path and read-all against honest baselines, same
server, same run.

Starts its own embedded PostgreSQL (fsync on, the default) and nats-server in a temporary
folder, then measures, one after the other, at each writer count (1, 4, 16 and 64
concurrent writers, each appending single-event commands to distinct streams; every
system gets a fresh schema with Convoy's own tables and indexes, made by its migrations):

1. **convoy**: `PostgresEventStore.append` (group commit with every guarantee: gapless
   commit-ordered positions, optimistic concurrency, idempotent retries);
2. **group-commit**: the limit for this shape of work — one task draining a queue of
   pending single-event appends and writing each batch with one `unnest` INSERT (its own
   transaction) into the same table, no lock, no checks, positions from a counter; each
   writer awaits its batch's commit. Every column that varies per event in general (type,
   actor, category, version) is sent per row, as any general writer must;
3. **raw**: one INSERT per transaction on a dedicated connection per writer (no pool, so
   no reset round trip on release), positions from a sequence (neither gapless nor in
   commit order: what a naive event table does);
4. **eventsourcing**: the `eventsourcing` library's PostgreSQL application recorder, N
   threads (the `bench` extra installs it; without it the benchmark fails).

Then the relay's publish rate into JetStream (draining a backlog of stored events), and
read-all (paging through that log from position 0, 5,000 events a page) against a bare
asyncpg fetch of the same rows (same columns, same pages, one connection, the records
kept as asyncpg returns them). Each is measured cold and warm. Cold means: PostgreSQL
restarted (empty shared buffers) and the log's table and index files evicted from the
OS page cache (posix_fadvise DONTNEED while the server is down), so pages come from the
disk (or the device's cache); three rounds, the readers alternating, the best of each.
Warm: the same reads repeated, the two readers alternating, fifteen rounds, the best of each
(with five, the best of each still moved by ±20 % between runs on this machine).

Ratios compare runs on the same machine in the same minute, because this machine is
shared and noisy. Percentiles come from bench/stats.py. The last line is the
machine-readable summary (append figures at 64 writers):
RESULT append_eps=… ratio_vs_raw=… ratio_vs_eventsourcing=… relay_eps=… readall_eps=… p99_ms=…
       ratio_vs_group_commit=… readall_vs_fetch=… group_commit_eps=… raw_eps=… fetch_eps=…
       readall_cold_eps=… fetch_cold_eps=… readall_cold_vs_fetch=…
(`readall_eps` and `readall_vs_fetch` are warm; the `_cold` figures cold.)

`--curve` runs convoy, group-commit and raw at each writer count of `--curve-points`
(default 1,2,4,8,16,32,64,128,256) and prints one `CURVE append writers=N …` line per point;
eventsourcing runs at 64 writers only, for the RESULT line.

    .venv/bin/python bench/eventstore.py [--seconds 5] [--relay-events 100000] [--curve]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from bench.stats import curve_line, percentile, result_line  # noqa: E402
from eventstore import bus  # noqa: E402
from eventstore.embedded import NatsServer, PostgresServer  # noqa: E402
from eventstore.postgres import PostgresEventStore, PostgresSettings, migrate  # noqa: E402
from eventstore.types import AppendRequest, NewEvent  # noqa: E402

CONCURRENCY = (1, 4, 16, 64)
CURVE_POINTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOP = 64
"""The writer count the RESULT line reports."""
PAYLOAD = b"x" * 200
PAGE = 5000
WARM_ROUNDS = 15
COLD_ROUNDS = 3
COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, data, actor, "
    "causation_id, correlation_id, recorded_at"
)
"""The columns Convoy's read_all returns (RecordedEvent's fields)."""


class BaselineMissing(Exception):
    """A baseline could not run: the benchmark fails rather than print a ratio to nothing."""


@dataclass
class Run:
    name: str
    writers: int
    events: int
    seconds: float
    latencies: list[float]

    @property
    def eps(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def line(self) -> str:
        return (
            f"{self.name:<14} writers={self.writers:<3} events/s={self.eps:>9.0f} "
            f"p50_ms={self.pct(0.5):6.2f} p99_ms={self.pct(0.99):6.2f}"
        )


async def timed_writers(name: str, writers: int, seconds: float, op: Callable[[int, int], Awaitable[None]]) -> Run:
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal count
        k = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await op(w, k)
            latencies.append(time.perf_counter() - started)
            count += 1
            k += 1

    begin = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return Run(name, writers, count, time.perf_counter() - begin, latencies)


async def fresh_schema(dsn: str, schema: str) -> None:
    """Convoy's tables and indexes in a new schema (its migrations), for a baseline."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
    await migrate(dsn, schema)


async def bench_convoy(dsn: str, writers: int, seconds: float) -> Run:
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=f"bench_convoy_{writers}"))
    run_id = uuid.uuid4().hex[:8]
    try:

        async def op(w: int, k: int) -> None:
            await store.append(f"bench/{run_id}-{w}-{k}", [NewEvent(type="convoy.v1.Bench", data=PAYLOAD)])

        return await timed_writers("convoy", writers, seconds, op)
    finally:
        await store.close()


_GROUP_INSERT = """
INSERT INTO events (position, stream_id, category, version, event_id, type, schema_version, data, actor)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::int[],
                     $8::bytea[], $9::text[])
"""


async def bench_group_commit(dsn: str, writers: int, seconds: float) -> Run:
    """One task, one connection: every append queued while a batch was written goes into
    the next batch, one multi-row INSERT (one transaction, one fsync) each, no checks."""
    schema = f"bench_gc_{writers}"
    await fresh_schema(dsn, schema)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    queue: list[tuple[str, NewEvent, asyncio.Future[int]]] = []
    wake = asyncio.Event()
    done = False
    head = 0

    async def loop() -> None:
        nonlocal head
        while True:
            await wake.wait()
            wake.clear()
            if not queue:
                if done:
                    return
                continue
            batch = queue[:]
            del queue[:]
            n = len(batch)
            events = [e for _, e, _ in batch]
            streams = [s for s, _, _ in batch]
            try:
                await conn.execute(
                    _GROUP_INSERT,
                    list(range(head + 1, head + n + 1)),
                    streams,
                    [s.split("/", 1)[0] for s in streams],
                    [1] * n,
                    [e.event_id for e in events],
                    [e.type for e in events],
                    [e.schema_version for e in events],
                    [e.data for e in events],
                    [e.actor for e in events],
                )
            except Exception as error:  # noqa: BLE001 - handed to every writer of the batch
                for _, _, future in batch:
                    future.set_exception(error)
                continue
            for i, (_, _, future) in enumerate(batch, start=head + 1):
                future.set_result(i)
            head += n

    committer = asyncio.create_task(loop(), name="bench-group-commit")
    run_id = uuid.uuid4().hex[:8]
    try:

        async def op(w: int, k: int) -> None:
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            queue.append((f"bench/{run_id}-{w}-{k}", NewEvent(type="convoy.v1.Bench", data=PAYLOAD), future))
            wake.set()
            await future

        return await timed_writers("group-commit", writers, seconds, op)
    finally:
        done = True
        wake.set()
        await committer
        await conn.close()


async def bench_raw(dsn: str, writers: int, seconds: float) -> Run:
    """One INSERT per transaction, a dedicated connection per writer (nothing to reset)."""
    schema = f"bench_raw_{writers}"
    await fresh_schema(dsn, schema)
    setup = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    await setup.execute(
        "CREATE SEQUENCE events_position OWNED BY events.position; "
        "ALTER TABLE events ALTER COLUMN position SET DEFAULT nextval('events_position')"
    )
    await setup.close()
    conns = await asyncio.gather(
        *(asyncpg.connect(dsn, server_settings={"search_path": schema}) for _ in range(writers))
    )
    sql = (
        "INSERT INTO events (stream_id, category, version, event_id, type, schema_version, data, actor) "
        "VALUES ($1, $2, 1, $3, $4, $5, $6, $7)"
    )
    run_id = uuid.uuid4().hex[:8]
    try:

        async def op(w: int, k: int) -> None:
            e = NewEvent(type="convoy.v1.Bench", data=PAYLOAD)
            await conns[w].execute(sql, f"bench/{run_id}-{w}-{k}", "bench", e.event_id, e.type, e.schema_version, e.data, e.actor)

        return await timed_writers("raw-asyncpg", writers, seconds, op)
    finally:
        await asyncio.gather(*(c.close() for c in conns))


def eventsourcing_available() -> str | None:
    """None if the `eventsourcing` baseline can run, else why not."""
    try:
        import psycopg  # noqa: F401
        from eventsourcing.postgres import PostgresApplicationRecorder  # noqa: F401
    except ImportError as error:
        return f"{error} (install the bench extra: pip install -e '.[bench]')"
    return None


def bench_eventsourcing(server: PostgresServer, writers: int, seconds: float) -> Run:
    import psycopg
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    schema = f"bench_es_{writers}"
    with psycopg.connect(f"postgresql://convoy:{server.password}@127.0.0.1:{server.port}/postgres", autocommit=True) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        c.execute(f"CREATE SCHEMA {schema}")
    datastore = PostgresDatastore(
        dbname="postgres", host="127.0.0.1", port=str(server.port), user="convoy",
        password=server.password, pool_size=writers, max_overflow=0, schema=schema,
    )
    with datastore:
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        latencies: list[float] = []
        counts = [0] * writers
        lock = threading.Lock()
        deadline = time.perf_counter() + seconds

        def writer(w: int) -> None:
            mine: list[float] = []
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "convoy.v1.Bench", PAYLOAD)])
                mine.append(time.perf_counter() - started)
                counts[w] += 1
            with lock:
                latencies.extend(mine)

        begin = time.perf_counter()
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return Run("eventsourcing", writers, sum(counts), time.perf_counter() - begin, latencies)


async def fill(store: PostgresEventStore, total: int) -> None:
    """Store `total` events fast (big multi-stream commits), for the relay and read-all runs."""
    batch = 1000
    for start in range(0, total, batch):
        await store.commit([
            AppendRequest(f"bench/fill-{i % 500}", [NewEvent(type="convoy.v1.Bench", data=PAYLOAD)])
            for i in range(start, min(total, start + batch))
        ])


async def bench_relay(dsn: str, nats_url: str, total: int) -> float:
    from eventstore.relay import Relay, RelaySettings

    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema="bench_relay"))
    await fill(store, total)
    nc = await bus.connect(nats_url, name="bench-relay")
    js = nc.jetstream()
    await bus.ensure_streams(js, "bench")
    relay = Relay(store=store, nc=nc, settings=RelaySettings(instance="bench"))
    head = await store.head()
    begin = time.perf_counter()
    await relay.start()
    try:
        while relay.stats().checkpoint < head:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - begin
    finally:
        await relay.stop()
        await nc.close()
        await store.close()
    return head / elapsed


async def read_all_convoy(dsn: str) -> tuple[int, float]:
    """(events, seconds) paging the whole log through `PostgresEventStore.read_all`."""
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema="bench_relay"))
    try:
        head = await store.head()
        begin = time.perf_counter()
        position, count = 0, 0
        while position < head:
            page = await store.read_all(after=position, limit=PAGE)
            count += len(page)
            position = page[-1].position
        return count, time.perf_counter() - begin
    finally:
        await store.close()


async def read_all_fetch(dsn: str) -> tuple[int, float]:
    """The same pages with asyncpg alone: one connection, the same statement, the records
    as asyncpg returns them (no conversion to Convoy's types)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "bench_relay"})
    try:
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
        sql = f"SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        begin = time.perf_counter()
        position, count = 0, 0
        while position < head:
            page = await conn.fetch(sql, position, PAGE)
            count += len(page)
            position = page[-1][0]
        return count, time.perf_counter() - begin
    finally:
        await conn.close()


async def relation_files(dsn: str, schema: str) -> list[str]:
    """The data files (relative to the data folder) of `schema`.events and its indexes."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = $1::regclass "
            "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = $1::regclass)",
            f"{schema}.events",
        )
        return [r[0] for r in rows if r[0]]
    finally:
        await conn.close()


def evict(pgdata: Path, files: list[str]) -> int:
    """Drop these relations' pages from the OS page cache (the server must be stopped, so
    they are clean after its shutdown checkpoint). Returns the bytes evicted."""
    total = 0
    for rel in files:
        base = pgdata / rel
        for path in [base, *sorted(base.parent.glob(base.name + ".*")), *sorted(base.parent.glob(base.name + "_*"))]:
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


async def cold(pg: PostgresServer, files: list[str]) -> int:
    """Restart PostgreSQL with the log's files out of every cache."""
    await asyncio.to_thread(pg.stop)
    evicted = evict(pg.pgdata, files)
    await asyncio.to_thread(pg.start)
    return evicted


async def alternate(
    dsn: str, rounds: int, before: Callable[[], Awaitable[None]] | None = None
) -> tuple[int, dict[str, list[float]]]:
    """(events, rates): Convoy's read-all and the bare fetch, alternating for `rounds`
    rounds, each read after `before()` when given; the events/s of every read, per reader."""
    rates: dict[str, list[float]] = {"readall": [], "fetch": []}
    count = 0
    for _ in range(rounds):
        for name, reader in (("readall", read_all_convoy), ("fetch", read_all_fetch)):
            if before is not None:
                await before()
            count, seconds = await reader(dsn)
            rates[name].append(count / seconds)
    return count, rates


async def bench_read_all(pg: PostgresServer) -> dict[str, float]:
    """The best of each reader, cold then warm (on a shared machine the fastest run is the
    one least disturbed by others)."""
    files = await relation_files(pg.dsn, "bench_relay")
    figures: dict[str, float] = {}
    # Cold: each read after its own restart and eviction (one cold read is at the mercy
    # of the disk's neighbours: single runs here ranged over ±40 %).
    evicted: list[int] = []

    async def restart() -> None:
        evicted.append(await cold(pg, files))

    count, colds = await alternate(pg.dsn, COLD_ROUNDS, restart)
    for name, rates in colds.items():
        figures[name + "_cold"] = max(rates)
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"{name + '_cold':<14} events/s={max(rates):>9.0f} ({count} events, {evicted[-1] / 1e6:.1f} MB evicted; runs: {runs})", flush=True)
    # Warm: both read once to load the cache, then alternate.
    await read_all_fetch(pg.dsn)
    _, warm = await alternate(pg.dsn, WARM_ROUNDS)
    for name, rates in warm.items():
        figures[name] = max(rates)
        print(f"{name + '_warm':<14} events/s={max(rates):>9.0f} (runs: {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
    return figures


async def measure_point(
    pg: PostgresServer, writers: int, seconds: float, *, with_eventsourcing: bool
) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    for name, bench in (("convoy", bench_convoy), ("group_commit", bench_group_commit), ("raw", bench_raw)):
        run = await bench(pg.dsn, writers, seconds)
        runs[name] = run
        print(run.line(), flush=True)
    if with_eventsourcing:
        run = await asyncio.to_thread(bench_eventsourcing, pg, writers, seconds)
        runs["eventsourcing"] = run
        print(run.line(), flush=True)
    for run in runs.values():
        if run.events == 0:
            raise BaselineMissing(f"{run.name} appended nothing at {writers} writers")
    return runs


async def main_async(args: argparse.Namespace, pg: PostgresServer, nats: NatsServer) -> None:
    if args.curve:
        points = sorted(set(args.curve_points) | {TOP})
    else:
        points = list(CONCURRENCY)
    runs: dict[int, dict[str, Run]] = {}
    for writers in points:
        with_es = writers == TOP or (not args.curve and writers in CONCURRENCY)
        runs[writers] = await measure_point(pg, writers, args.seconds, with_eventsourcing=with_es)
        if args.curve and writers in args.curve_points:
            r = runs[writers]
            print(curve_line("append", ("writers", writers), {
                "convoy_eps": f"{r['convoy'].eps:.0f}",
                "group_commit_eps": f"{r['group_commit'].eps:.0f}",
                "raw_eps": f"{r['raw'].eps:.0f}",
                "ratio_vs_group_commit": f"{r['convoy'].eps / r['group_commit'].eps:.2f}",
                "convoy_p99_ms": f"{r['convoy'].pct(0.99):.2f}",
            }), flush=True)
    relay_eps = await bench_relay(pg.dsn, nats.url, args.relay_events)
    print(f"relay          events/s={relay_eps:>9.0f} ({args.relay_events} events into JetStream)", flush=True)
    reads = await bench_read_all(pg)

    top = runs[TOP]
    convoy, gc, raw, es = top["convoy"], top["group_commit"], top["raw"], top["eventsourcing"]
    print(result_line({
        "append_eps": f"{convoy.eps:.0f}",
        "ratio_vs_raw": f"{convoy.eps / raw.eps:.2f}",
        "ratio_vs_eventsourcing": f"{convoy.eps / es.eps:.1f}",
        "relay_eps": f"{relay_eps:.0f}",
        "readall_eps": f"{reads['readall']:.0f}",
        "p99_ms": f"{convoy.pct(0.99):.1f}",
        "ratio_vs_group_commit": f"{convoy.eps / gc.eps:.2f}",
        "readall_vs_fetch": f"{reads['readall'] / reads['fetch']:.2f}",
        "group_commit_eps": f"{gc.eps:.0f}",
        "raw_eps": f"{raw.eps:.0f}",
        "fetch_eps": f"{reads['fetch']:.0f}",
        "readall_cold_eps": f"{reads['readall_cold']:.0f}",
        "fetch_cold_eps": f"{reads['fetch_cold']:.0f}",
        "readall_cold_vs_fetch": f"{reads['readall_cold'] / reads['fetch_cold']:.2f}",
        "load1": f"{os.getloadavg()[0]:.1f}",
    }), flush=True)


def _points(text: str) -> list[int]:
    points = [int(p) for p in text.split(",") if p.strip()]
    if not points or any(p < 1 for p in points):
        raise argparse.ArgumentTypeError("writer counts are positive integers, e.g. 1,4,16,64")
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each append run")
    parser.add_argument("--relay-events", type=int, default=100_000, help="backlog size for the relay and read-all runs")
    parser.add_argument("--curve", action="store_true", help="print a CURVE line per writer count of --curve-points")
    parser.add_argument("--curve-points", type=_points, default=list(CURVE_POINTS), help="writer counts, e.g. 1,4,16,64")
    args = parser.parse_args()
    missing = eventsourcing_available()
    if missing is not None:
        print(f"FAILED: the eventsourcing baseline cannot run: {missing}", file=sys.stderr, flush=True)
        return 1
    with tempfile.TemporaryDirectory(prefix="convoy-bench-") as tmp:
        pg = PostgresServer(data_dir=Path(tmp) / "postgres")
        nats = NatsServer(data_dir=Path(tmp) / "nats")
        with pg, nats:
            try:
                uvloop.run(main_async(args, pg, nats))
            except BaselineMissing as error:
                print(f"FAILED: {error}", file=sys.stderr, flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
