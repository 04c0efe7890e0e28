"""How big each store grows per release: PostgreSQL's log, the JetStream events stream and
the idempotency receipts (docs/production.md, "How big each store grows").

A release here is what a client does to ship one service: one `Deploy` through the API,
with an `Idempotency-Key` (so one receipt), which the planner rolls through the
application's channels — staging (1 runtime), then prod (`--runtimes` − 1 runtimes,
"staging stable" precondition) — to `--runtimes` real agents (memory runtime) that
report RECEIVED, APPLIED, PROGRESSING and HEALTHY. Everything as `convoy up` composes it,
in this process, against an embedded nats-server and PostgreSQL in a temporary folder: the
API, the relay, observation ingest, desired state, consumer sync and the planner. The
events stream has no limits here, so it holds everything the log does.

Releases run one after the other (each until converged in prod), `--services` services in
turn. After a warm-up release per service, the stores are measured, `--releases` releases
run, and they are measured again; the difference is the growth:

- PostgreSQL: `pg_total_relation_size('events')` (heap, TOAST and indexes) and
  `pg_indexes_size('events')`, and for receipts `pg_total_relation_size('api_idempotency')`
  (a table's size grows in 8 KiB pages, so small runs round);
- JetStream: the events stream's `state.bytes` (its file store, one replica).

Last line: RESULT releases=… runtimes=… events_per_release=… pg_bytes_per_event=…
pg_index_bytes_per_event=… js_bytes_per_msg=… receipt_bytes=… pg_mb_per_1000=… js_mb_per_1000=…
receipts_mb_per_1000=… (measured: docs/production.md, "How big each store grows"; 1,000
releases to 3 runtimes take about 6 minutes on 2 busy cores)

    .venv/bin/python bench/growth.py [--releases 1000] [--runtimes 3] [--services 10]
    .venv/bin/python bench/growth.py --releases 100                # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import result_line  # noqa: E402

INSTANCE = "growth"
APP = "shop"


async def main(args: argparse.Namespace) -> None:
    import grpc.aio

    from eventstore import bus, natsauth
    from eventstore.codec import convoy_registry
    from eventstore.embedded import NatsServer, PostgresServer
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from eventstore.relay import Relay, RelaySettings
    from eventstore.subscriptions import SubscriptionSettings
    from schemas.convoy.v1 import api_pb2, api_pb2_grpc
    from schemas.convoy.v1 import events_pb2 as E
    from schemas.convoy.v1 import resources_pb2 as R
    from services.agent.agent import Agent, AgentSettings
    from services.agent.runtimes.memory import MemoryRuntime
    from services.api.desired import DesiredState
    from services.api.ingest import ObservationIngest
    from services.api.natsauth_sync import NatsAuthSync
    from services.api.server import ApiServer
    from services.planner.clock import SystemClock
    from services.planner.model import status_name
    from services.planner.runner import Planner

    registry = convoy_registry()
    unlimited = bus.EventsRetention(max_age=None, max_msgs=None)
    fast = SubscriptionSettings(fetch_timeout=1.0, heartbeat=0.25, retry_delay=0.05, max_deliver=3)
    runtimes = [f"rt-{i}" for i in range(args.runtimes)]
    services = [f"svc-{i}" for i in range(args.services)]

    with tempfile.TemporaryDirectory(prefix="convoy-bench-growth-") as tmp, NatsServer(
        data_dir=Path(tmp) / "nats"
    ) as nats_server, PostgresServer(data_dir=Path(tmp) / "pg") as pg:
        store = await PostgresEventStore.open(PostgresSettings(dsn=pg.dsn, schema=INSTANCE))
        nc = await bus.connect(nats_server.url, name="bench-growth")
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(store.close)
            stack.push_async_callback(nc.close)
            js = nc.jetstream()
            await bus.ensure_streams(js, INSTANCE, retention=unlimited)

            async def record(stream: str, message: object) -> None:
                await store.append(stream, [registry.encode(message, actor="bench")])  # type: ignore[arg-type]

            for name in runtimes:
                await record(f"runtime/{name}", E.RuntimeRegistered(runtime=R.Runtime(name=name, kind=R.RUNTIME_KIND_EXEC)))
            prod = R.ReleaseChannel(name="prod", runtimes=[R.RuntimeBinding(runtime=r) for r in runtimes[1:]])
            prod.preconditions.add(channel_stable=R.ChannelStable(channel="staging"))
            await record(f"app/{APP}", E.ApplicationCreated(application=R.Application(name=APP, release_channels=[
                R.ReleaseChannel(name="staging", runtimes=[R.RuntimeBinding(runtime=runtimes[0])]), prod])))
            for name in services:
                config = R.Service(application=APP, name=name, replicas=1, programs=[R.Program(name=name, image=f"example/{name}:1")])
                await record(f"service/{APP}/{name}", E.ServiceConfigured(service=config, created=True))

            for component in (
                Relay(store=store, nc=nc, settings=RelaySettings(instance=INSTANCE, idle_poll=0.2, retention=unlimited)),
                ObservationIngest(nc=nc, store=store, instance=INSTANCE, settings=fast),
                DesiredState(nc=nc, store=store, instance=INSTANCE),
                NatsAuthSync(store=store, nc=nc, instance=INSTANCE, server=None, system_password=None),
                Planner(store=store, registry=registry, clock=SystemClock()),
            ):
                await stack.enter_async_context(component)  # type: ignore[arg-type]
            for name in runtimes:
                agent_nc = await bus.connect(nats_server.url, name=f"bench-agent-{name}",
                                             inbox_prefix=natsauth.agent_inbox_prefix(INSTANCE, name))
                stack.push_async_callback(agent_nc.close)
                settings = AgentSettings(instance=INSTANCE, runtime=name, heartbeat_interval=5.0, reconcile_interval=60.0,
                                         subscription=fast)
                await stack.enter_async_context(Agent(nc=agent_nc, settings=settings, runtime=MemoryRuntime(name=name)))
            api = ApiServer(store=store, state_dir=Path(tmp) / "state", grpc_address="127.0.0.1:0", http_address=None)
            ports = await api.start()
            stack.push_async_callback(api.stop)
            admin = (Path(tmp) / "state" / "admin-token").read_text().strip()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}")
            stack.push_async_callback(channel.close)
            releases = api_pb2_grpc.ReleaseServiceStub(channel)
            converged: dict[str, str] = {}
            seen = 0

            async def follow() -> None:
                """The last CONVERGED version per service in prod, from the log."""
                nonlocal seen
                batch = await store.read_all(after=seen, categories=["convergence"], limit=10_000)
                for recorded in batch:
                    seen = recorded.position
                    m = registry.decode(recorded).message
                    if (isinstance(m, E.InstanceStatusChanged) and not m.target.runtime and m.channel == "prod"
                            and status_name(m.new_status) == "CONVERGED"):
                        converged[m.service] = m.version

            count = 0

            async def release(service: str) -> None:
                nonlocal count
                count += 1
                version = f"v{count}"
                metadata = (("authorization", f"Bearer {admin}"), ("idempotency-key", f"bench-{count}"))
                await releases.Deploy(api_pb2.DeployRequest(application=APP, service=service, version=version),
                                      metadata=metadata)
                deadline = time.monotonic() + 60
                while converged.get(service) != version:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"release {version} of {service} did not converge within 60 s")
                    await asyncio.sleep(0.02)
                    await follow()

            async def measure() -> dict[str, int]:
                async with store._pool.acquire() as conn:  # noqa: SLF001 - a benchmark reads sizes
                    sizes = await conn.fetchrow(
                        "SELECT pg_total_relation_size('events') AS total, pg_indexes_size('events') AS indexes, "
                        "pg_total_relation_size('api_idempotency') AS receipts, "
                        "(SELECT count(*) FROM api_idempotency) AS receipt_rows"
                    )
                # Wait for the relay to publish everything, so the stream matches the log.
                head = await store.head()
                while (info := await js.stream_info(bus.events_stream(INSTANCE))).state.messages < head:
                    await asyncio.sleep(0.05)
                return {"events": head, "pg": sizes["total"], "pg_idx": sizes["indexes"], "receipts": sizes["receipts"],
                        "receipt_rows": sizes["receipt_rows"], "js": info.state.bytes, "msgs": info.state.messages}

            for service in services:  # warm-up: every service once
                await release(service)
            before = await measure()
            started = time.monotonic()
            for n in range(args.releases):
                await release(services[n % len(services)])
                if (n + 1) % 100 == 0:
                    print(f"{n + 1} releases, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            after = await measure()

    events = after["events"] - before["events"]
    msgs = after["msgs"] - before["msgs"]
    receipts = after["receipt_rows"] - before["receipt_rows"]
    per_1000 = 1000 / args.releases
    pg_bytes = after["pg"] - before["pg"]
    js_bytes = after["js"] - before["js"]
    print(f"{args.releases} releases in {time.monotonic() - started:.0f} s at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
          file=sys.stderr)
    result = {
        "releases": args.releases,
        "runtimes": args.runtimes,
        "events_per_release": f"{events / args.releases:.1f}",
        "pg_bytes_per_event": f"{pg_bytes / events:.0f}",
        "pg_index_bytes_per_event": f"{(after['pg_idx'] - before['pg_idx']) / events:.0f}",
        "js_bytes_per_msg": f"{js_bytes / msgs:.0f}",
        "receipt_bytes": f"{(after['receipts'] - before['receipts']) / max(receipts, 1):.0f}",
        "pg_mb_per_1000": f"{pg_bytes * per_1000 / 1e6:.1f}",
        "js_mb_per_1000": f"{js_bytes * per_1000 / 1e6:.1f}",
        "receipts_mb_per_1000": f"{(after['receipts'] - before['receipts']) * per_1000 / 1e6:.2f}",
    }
    print(result_line(result), flush=True)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", type=int, default=1000)
    parser.add_argument("--runtimes", type=int, default=3, help="1 in staging, the rest in prod (at least 2)")
    parser.add_argument("--services", type=int, default=10)
    arguments = parser.parse_args()
    if arguments.runtimes < 2:
        parser.error("--runtimes must be at least 2 (staging and prod)")
    asyncio.run(main(arguments))
