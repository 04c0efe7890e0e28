"""API benchmark: command throughput and latency over gRPC and REST, 32 concurrent clients.

Starts an embedded PostgreSQL, runs the API server in a child process (so the clients'
CPU is not the server's), registers one runtime per client, then for a fixed time each
client relabels its own runtime in a loop — a cheap command that still goes the whole way:
authentication, role check, idempotency key, decide, append (group commit, fsync), answer.
Then the same over REST/JSON.

Throughput on a shared machine moves with whatever else runs, so the benchmark also
reports the server process's CPU time per command in each phase (from /proc, Linux) and
the load average: a change that makes commands cheaper shows there even when the
throughput is drowned in noise.

Last line: RESULT grpc_cps=… grpc_p99_ms=… rest_rps=… grpc_cpu_ms=… rest_cpu_ms=… load1=…

    .venv/bin/python bench/api.py [--seconds 5] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import grpc.aio  # noqa: E402
import uvloop  # noqa: E402

from eventstore.embedded import PostgresServer  # noqa: E402
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, resources_pb2  # noqa: E402


async def serve(dsn: str, state: Path, ports_file: Path) -> None:
    """Child process: the API server on port 0 until SIGTERM (composed like `convoy up`:
    a pool of 32 connections, see cli/main.py)."""
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from services.api.server import ApiServer

    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema="bench_api", pool_max=32))
    server = ApiServer(store=store, state_dir=state, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0")
    ports = await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ports_file.write_text(json.dumps({"grpc": ports.grpc, "http": ports.http}))
    await stop.wait()
    writes = store.writes_committed
    print(f"server: {writes} writes in {store.batches_committed} commits ({writes / max(store.batches_committed, 1):.1f} per commit)", flush=True)
    await server.stop()
    await store.close()


async def run_clients(clients: int, seconds: float, op: Callable[[int, int], Awaitable[None]]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal count
        k = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await op(c, k)
            latencies.append(time.perf_counter() - started)
            count += 1
            k += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return count / (time.perf_counter() - began), latencies


def pct(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(ports: dict[str, int], token: str, server_pid: int, args: argparse.Namespace) -> None:
    auth = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        runtimes = api_pb2_grpc.RuntimeServiceStub(channel)
        for c in range(args.clients):
            await runtimes.ApplyRuntime(
                api_pb2.ApplyRuntimeRequest(
                    runtime=resources_pb2.Runtime(name=f"bench-{c}", kind=resources_pb2.RUNTIME_KIND_KUBERNETES)
                ),
                metadata=auth,
            )

        async def label_grpc(c: int, k: int) -> None:
            await runtimes.LabelRuntime(
                api_pb2.LabelRuntimeRequest(name=f"bench-{c}", labels={"round": f"g{k}"}),
                metadata=(*auth, ("idempotency-key", uuid.uuid4().hex)),
            )

        cpu = cpu_seconds(server_pid)
        grpc_cps, grpc_lat = await run_clients(args.clients, args.seconds, label_grpc)
        grpc_cpu = (cpu_seconds(server_pid) - cpu) * 1000 / max(len(grpc_lat), 1)
    print(
        f"grpc  commands/s={grpc_cps:8.0f} p50_ms={pct(grpc_lat, 0.5):6.2f} p99_ms={pct(grpc_lat, 0.99):6.2f} "
        f"server_cpu_ms/command={grpc_cpu:.2f}",
        flush=True,
    )

    base = f"http://127.0.0.1:{ports['http']}"
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector, headers={"authorization": f"Bearer {token}"}) as http:

        async def label_rest(c: int, k: int) -> None:
            async with http.put(
                f"{base}/v1/runtimes/bench-{c}/labels",
                json={"labels": {"round": f"r{k}"}},
                headers={"idempotency-key": uuid.uuid4().hex},
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"REST answered {response.status}: {await response.text()}")
                await response.read()

        cpu = cpu_seconds(server_pid)
        rest_rps, rest_lat = await run_clients(args.clients, args.seconds, label_rest)
        rest_cpu = (cpu_seconds(server_pid) - cpu) * 1000 / max(len(rest_lat), 1)
    print(
        f"rest  requests/s={rest_rps:8.0f} p50_ms={pct(rest_lat, 0.5):6.2f} p99_ms={pct(rest_lat, 0.99):6.2f} "
        f"server_cpu_ms/request={rest_cpu:.2f}",
        flush=True,
    )
    print(
        f"RESULT grpc_cps={grpc_cps:.0f} grpc_p99_ms={pct(grpc_lat, 0.99):.1f} rest_rps={rest_rps:.0f} "
        f"grpc_cpu_ms={grpc_cpu:.2f} rest_cpu_ms={rest_cpu:.2f} load1={os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--serve", nargs=3, metavar=("DSN", "STATE", "PORTS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        dsn, state, ports_file = args.serve
        uvloop.run(serve(dsn, Path(state), Path(ports_file)))
        return
    with tempfile.TemporaryDirectory(prefix="convoy-bench-api-") as tmp:
        root = Path(tmp)
        with PostgresServer(data_dir=root / "postgres") as pg:
            ports_file = root / "ports.json"
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", pg.dsn, str(root / "state"), str(ports_file)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                deadline = time.monotonic() + 60
                while not ports_file.exists():
                    if child.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the API server did not start")
                    time.sleep(0.05)
                ports = json.loads(ports_file.read_text())
                token = (root / "state" / "admin-token").read_text().strip()
                uvloop.run(bench(ports, token, child.pid, args))
            finally:
                child.send_signal(signal.SIGTERM)
                child.wait(30)


if __name__ == "__main__":
    main()
