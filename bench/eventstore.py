"""Event store benchmark: Convoy's append path against two baselines, same server, same run.

Starts its own embedded PostgreSQL (fsync on, the default) and nats-server in a temporary
folder, then measures, one after the other:

1. Convoy append throughput and latency with 1, 4, 16 and 64 concurrent writers, each
   appending single-event commands to distinct streams;
2. raw asyncpg at the same concurrency: a pool of N connections, one INSERT per
   transaction into a table shaped like Convoy's (the baseline);
3. the `eventsourcing` library's PostgreSQL application recorder doing the same work
   (installed only for this benchmark: `pip install 'eventsourcing[postgres]'`), N threads;
4. the relay's publish rate into JetStream (draining a backlog of stored events);
5. read-all rate (paging through the log from position 0).

Ratios compare runs on the same machine in the same minute, because this machine is
shared and noisy. The last line is the machine-readable summary:
RESULT append_eps=… ratio_vs_raw=… ratio_vs_eventsourcing=… relay_eps=… readall_eps=… p99_ms=…
(all at 64 writers).

    .venv/bin/python bench/eventstore.py [--seconds 5] [--relay-events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
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

from eventstore import bus  # noqa: E402
from eventstore.embedded import NatsServer, PostgresServer  # noqa: E402
from eventstore.postgres import PostgresEventStore, PostgresSettings  # noqa: E402
from eventstore.types import AppendRequest, NewEvent  # noqa: E402

CONCURRENCY = (1, 4, 16, 64)
PAYLOAD = b"x" * 200


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
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

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


async def bench_convoy(dsn: str, writers: int, seconds: float) -> Run:
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=f"bench_convoy_{writers}"))
    run_id = uuid.uuid4().hex[:8]
    try:

        async def op(w: int, k: int) -> None:
            await store.append(f"bench/{run_id}-{w}-{k}", [NewEvent(type="convoy.v1.Bench", data=PAYLOAD)])

        return await timed_writers("convoy", writers, seconds, op)
    finally:
        await store.close()


async def bench_raw(dsn: str, writers: int, seconds: float) -> Run:
    """One INSERT per transaction, a pool of N: what a naive event table does."""
    schema = f"bench_raw_{writers}"
    setup = await asyncpg.connect(dsn)
    await setup.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    await setup.execute(
        f"CREATE TABLE {schema}.events (position bigserial PRIMARY KEY, stream_id text NOT NULL, "
        "category text NOT NULL, version bigint NOT NULL, event_id uuid NOT NULL UNIQUE, type text NOT NULL, "
        "schema_version int NOT NULL, data bytea NOT NULL, actor text NOT NULL, causation_id uuid, "
        "correlation_id uuid, recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
        "UNIQUE (stream_id, version))"
    )
    await setup.execute(f"CREATE INDEX ON {schema}.events (category, position)")
    await setup.close()
    pool = await asyncpg.create_pool(dsn, min_size=writers, max_size=writers)
    assert pool is not None
    sql = (
        f"INSERT INTO {schema}.events (stream_id, category, version, event_id, type, schema_version, data, actor) "
        "VALUES ($1, 'bench', 1, $2, 'convoy.v1.Bench', 1, $3, 'system')"
    )
    run_id = uuid.uuid4().hex[:8]
    try:

        async def op(w: int, k: int) -> None:
            async with pool.acquire() as conn:
                await conn.execute(sql, f"bench/{run_id}-{w}-{k}", uuid.uuid4(), PAYLOAD)

        return await timed_writers("raw-asyncpg", writers, seconds, op)
    finally:
        await pool.close()


def bench_eventsourcing(server: PostgresServer, writers: int, seconds: float) -> Run | None:
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError:
        print("eventsourcing not installed (pip install 'eventsourcing[postgres]'); skipping", flush=True)
        return None
    import psycopg

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


async def bench_read_all(dsn: str) -> float:
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema="bench_relay"))
    try:
        head = await store.head()
        begin = time.perf_counter()
        position, count = 0, 0
        while position < head:
            page = await store.read_all(after=position, limit=5000)
            count += len(page)
            position = page[-1].position
        return count / (time.perf_counter() - begin)
    finally:
        await store.close()


async def main_async(args: argparse.Namespace, pg: PostgresServer, nats: NatsServer) -> None:
    runs: dict[tuple[str, int], Run] = {}
    for writers in CONCURRENCY:
        for name, bench in (("convoy", bench_convoy), ("raw", bench_raw)):
            run = await bench(pg.dsn, writers, args.seconds)
            runs[(name, writers)] = run
            print(run.line(), flush=True)
        es = await asyncio.to_thread(bench_eventsourcing, pg, writers, args.seconds)
        if es is not None:
            runs[("eventsourcing", writers)] = es
            print(es.line(), flush=True)
    relay_eps = await bench_relay(pg.dsn, nats.url, args.relay_events)
    print(f"relay          events/s={relay_eps:>9.0f} ({args.relay_events} events into JetStream)", flush=True)
    readall_eps = await bench_read_all(pg.dsn)
    print(f"read-all       events/s={readall_eps:>9.0f}", flush=True)

    top = runs[("convoy", 64)]
    raw = runs[("raw", 64)]
    es_run = runs.get(("eventsourcing", 64))
    ratio_es = f"{top.eps / es_run.eps:.1f}" if es_run else "n/a"
    print(
        f"RESULT append_eps={top.eps:.0f} ratio_vs_raw={top.eps / raw.eps:.1f} ratio_vs_eventsourcing={ratio_es} "
        f"relay_eps={relay_eps:.0f} readall_eps={readall_eps:.0f} p99_ms={top.pct(0.99):.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each append run")
    parser.add_argument("--relay-events", type=int, default=100_000, help="backlog size for the relay run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convoy-bench-") as tmp:
        pg = PostgresServer(data_dir=Path(tmp) / "postgres")
        nats = NatsServer(data_dir=Path(tmp) / "nats")
        with pg, nats:
            uvloop.run(main_async(args, pg, nats))


if __name__ == "__main__":
    main()
