"""API benchmark: command throughput and latency over gRPC and REST, beside bare servers.

Starts an embedded PostgreSQL and three servers, each in its own child process (so the
clients' CPU is not the server's): Convoy's API server, a bare `grpc.aio` echo server and
a bare aiohttp handler. The echo server answers the very method the clients call
(`RuntimeService/LabelRuntime`, an empty `WriteResult`, at once) with the API server's
gRPC options; the bare handler answers the REST route (`PUT /v1/runtimes/{name}/labels`)
with a tiny JSON body. So the clients, channel, connector, metadata and request bytes are
the same for Convoy and its baseline, and the ratio says what Convoy's work costs on top
of the transport.

Against Convoy each client relabels its own runtime in a loop with a fresh idempotency key
— a cheap command that still goes the whole way: authentication, role check, idempotency
key, decide, append (group commit, fsync), answer. Every answer is checked: a failed call or
an answer that did not record a change fails the benchmark (exit 1), it is never counted.
Each phase runs for `--seconds` after a short unmeasured warm-up, in the order echo,
Convoy gRPC, bare REST, Convoy REST. The servers run on asyncio's own event loop, as
`convoy up` and `convoy api` do (`--loop uvloop` to compare); the clients on uvloop.

Throughput on a shared machine moves with whatever else runs, so the benchmark also
reports each server process's CPU time per call (from /proc, Linux; for Convoy also
PostgreSQL's: the postmaster and its live backends) and the load average.
Percentiles come from bench/stats.py.

Last line: RESULT grpc_cps=… grpc_p99_ms=… rest_rps=… grpc_cpu_ms=… rest_cpu_ms=… load1=…
echo_cps=… bare_rps=… grpc_vs_echo=… rest_vs_bare=… echo_cpu_ms=… bare_cpu_ms=… grpc_pg_cpu_ms=…
rest_pg_cpu_ms=…

With `--curve` it measures every phase at each client count of `--curve-points`
(default 1,4,16,32,64,128) and prints one `CURVE api clients=…` line per point; the RESULT
line is the point at `--clients`.

    .venv/bin/python bench/api.py [--seconds 5] [--clients 32] [--curve [--curve-points 1,4,16]]
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import uvloop  # noqa: E402

from bench.stats import curve_line, result_line, summarize  # noqa: E402
from eventstore.embedded import PostgresServer  # noqa: E402
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, resources_pb2  # noqa: E402

DEFAULT_CURVE = (1, 4, 16, 32, 64, 128)
LABEL_METHOD = "LabelRuntime"
RUNTIME_SERVICE = "convoy.v1.RuntimeService"


class BenchFailure(Exception):
    """A call failed or answered something other than success: the run measures nothing."""


# ---------------------------------------------------------------------------------------
# The servers (child processes)


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def serve_convoy(dsn: str, state: Path, ports_file: Path) -> None:
    """The API server on port 0 until SIGTERM (composed like `convoy up`: a pool of 32
    connections, see cli/main.py; structlog configured as `convoy up` does, JSON lines to
    a file — every call's log line is rendered, as in production)."""
    from cli import logging as convoy_logging
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from services.api.server import ApiServer

    log_file = (state.parent / "convoy-server.log").open("w")
    convoy_logging.configure("json", stream=log_file)

    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema="bench_api", pool_max=32))
    server = ApiServer(store=store, state_dir=state, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0")
    ports = await server.start()
    ports_file.write_text(json.dumps({"grpc": ports.grpc, "http": ports.http}))
    await _until_sigterm()
    writes = store.writes_committed
    print(f"server: {writes} writes in {store.batches_committed} commits ({writes / max(store.batches_committed, 1):.1f} per commit)", flush=True)
    await server.stop()
    await store.close()


async def serve_echo(ports_file: Path) -> None:
    """The bare gRPC baseline: LabelRuntime answers an empty WriteResult at once (no
    parsing, no work), on a server built with the API server's options."""
    from services.api.grpc_transport import MAX_MESSAGE_BYTES

    answer = api_pb2.WriteResult().SerializeToString()

    async def label(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
    )
    handler = grpc.unary_unary_rpc_method_handler(label)  # bytes in, bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(RUNTIME_SERVICE, {LABEL_METHOD: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports_file.write_text(json.dumps({"grpc": port}))
    await _until_sigterm()
    await server.stop(1)


async def serve_bare(ports_file: Path) -> None:
    """The bare REST baseline: an aiohttp handler on the same route answering a tiny JSON
    body (it reads the request body, as any handler of a PUT must)."""
    from aiohttp import web

    async def label(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"changed": True})

    app = web.Application()
    app.router.add_put("/v1/runtimes/{name}/labels", label)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ports_file.write_text(json.dumps({"http": int(runner.addresses[0][1])}))
    await _until_sigterm()
    await runner.cleanup()


# ---------------------------------------------------------------------------------------
# The clients


@dataclass(frozen=True)
class Phase:
    rate: float
    """Successful calls per second."""
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    """Server CPU milliseconds per call."""
    calls: int
    pg_cpu_ms: float
    """PostgreSQL's CPU milliseconds per call (its processes alive at the end)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int | None) -> dict[int, float]:
    """CPU seconds of a process and each of its live children (PostgreSQL: the postmaster
    and its backends), by pid — a difference of two of these is per process, so a
    backend that started in between counts from 0 and one that ended is left out."""
    if pid is None:
        return {}
    found = {pid: cpu_seconds(pid)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found[int(entry.name)] = cpu_seconds(int(entry.name))
    return found


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def run_clients(
    clients: int, seconds: float, op: Callable[[int, int], Awaitable[None]], *, server_pid: int, warmup: float,
    pg_pid: int | None,
) -> Phase:
    """`clients` loops calling `op(client, k)` for `warmup` (not measured) then `seconds`.
    `op` raises on any failure; the first failure ends the phase and is raised."""
    latencies: list[float] = []
    measuring = False
    stop_at = time.perf_counter() + warmup
    counter = iter(range(1 << 62))

    async def client(c: int) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await op(c, next(counter))
            if measuring:
                latencies.append((time.perf_counter() - started) * 1000)

    async def phase() -> None:
        async with asyncio.TaskGroup() as group:
            for c in range(clients):
                group.create_task(client(c))

    try:
        if warmup > 0:
            await phase()
        measuring = True
        cpu = cpu_seconds(server_pid)
        pg = tree_cpu(pg_pid)
        began = time.perf_counter()
        stop_at = began + seconds
        await phase()
        elapsed = time.perf_counter() - began
    except* BenchFailure as group:
        raise group.exceptions[0] from None
    used = cpu_seconds(server_pid) - cpu
    pg_used = _used(pg, tree_cpu(pg_pid))
    if not latencies:
        raise BenchFailure("no call completed in the phase")
    summary = summarize(latencies)
    n = len(latencies)
    return Phase(n / elapsed, summary.p50, summary.p99, used * 1000 / n, n, pg_used * 1000 / n)


@dataclass(frozen=True)
class Servers:
    convoy_grpc: int
    convoy_http: int
    echo_grpc: int
    bare_http: int
    convoy_pid: int
    echo_pid: int
    bare_pid: int
    token: str
    pg_pid: int | None


def _grpc_failure(error: grpc.aio.AioRpcError, what: str) -> BenchFailure:
    return BenchFailure(f"{what} answered {error.code().name}: {error.details()}")


class Bench:
    def __init__(self, servers: Servers, *, seconds: float, warmup: float) -> None:
        self.s = servers
        self.seconds = seconds
        self.warmup = warmup
        self.auth = (("authorization", f"Bearer {servers.token}"),)
        self.registered = 0

    async def register(self, runtimes: api_pb2_grpc.RuntimeServiceStub, clients: int) -> None:
        for c in range(self.registered, clients):
            await runtimes.ApplyRuntime(
                api_pb2.ApplyRuntimeRequest(
                    runtime=resources_pb2.Runtime(name=f"bench-{c}", kind=resources_pb2.RUNTIME_KIND_KUBERNETES)
                ),
                metadata=self.auth,
            )
        self.registered = max(self.registered, clients)

    async def grpc_phase(self, port: int, pid: int, clients: int, *, convoy: bool) -> Phase:
        what = "Convoy gRPC" if convoy else "the echo server"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            runtimes = api_pb2_grpc.RuntimeServiceStub(channel)
            if convoy:
                await self.register(runtimes, clients)

            async def label(c: int, k: int) -> None:
                try:
                    answer = await runtimes.LabelRuntime(
                        api_pb2.LabelRuntimeRequest(name=f"bench-{c}", labels={"round": f"g{k}"}),
                        metadata=(*self.auth, ("idempotency-key", uuid.uuid4().hex)),
                    )
                except grpc.aio.AioRpcError as error:
                    raise _grpc_failure(error, what) from None
                if convoy and not (answer.changed and answer.position > 0):
                    raise BenchFailure(f"Convoy gRPC answered no recorded change: {answer}")

            return await run_clients(
                clients, self.seconds, label, server_pid=pid, warmup=self.warmup, pg_pid=self.s.pg_pid if convoy else None
            )

    async def rest_phase(self, port: int, pid: int, clients: int, *, convoy: bool) -> Phase:
        what = "Convoy REST" if convoy else "the bare aiohttp handler"
        base = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector, headers={"authorization": f"Bearer {self.s.token}"}) as http:

            async def label(c: int, k: int) -> None:
                try:
                    async with http.put(
                        f"{base}/v1/runtimes/bench-{c}/labels",
                        json={"labels": {"round": f"r{k}"}},
                        headers={"idempotency-key": uuid.uuid4().hex},
                    ) as response:
                        body = await response.read()
                except aiohttp.ClientError as error:
                    raise BenchFailure(f"{what}: {error!r}") from None
                if response.status != 200:
                    raise BenchFailure(f"{what} answered {response.status}: {body[:300]!r}")
                answer = json.loads(body)
                if not answer.get("changed") or (convoy and not int(answer.get("position", 0))):
                    raise BenchFailure(f"{what} answered no recorded change: {answer}")

            return await run_clients(
                clients, self.seconds, label, server_pid=pid, warmup=self.warmup, pg_pid=self.s.pg_pid if convoy else None
            )

    async def point(self, clients: int) -> dict[str, Phase]:
        s = self.s
        phases: dict[str, Phase] = {}
        for name, measure in (
            ("echo", lambda: self.grpc_phase(s.echo_grpc, s.echo_pid, clients, convoy=False)),
            ("grpc", lambda: self.grpc_phase(s.convoy_grpc, s.convoy_pid, clients, convoy=True)),
            ("bare", lambda: self.rest_phase(s.bare_http, s.bare_pid, clients, convoy=False)),
            ("rest", lambda: self.rest_phase(s.convoy_http, s.convoy_pid, clients, convoy=True)),
        ):
            p = phases[name] = await measure()
            print(
                f"clients={clients:<4} {name:5} calls/s={p.rate:8.0f} p50_ms={p.p50_ms:7.2f} p99_ms={p.p99_ms:7.2f} "
                f"server_cpu_ms/call={p.cpu_ms:.3f} postgres_cpu_ms/call={p.pg_cpu_ms:.3f} calls={p.calls}",
                flush=True,
            )
        return phases


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def curve_figures(p: dict[str, Phase]) -> dict[str, object]:
    return {
        "grpc_cps": round(p["grpc"].rate),
        "echo_cps": round(p["echo"].rate),
        "grpc_vs_echo": _ratio(p["grpc"].rate, p["echo"].rate),
        "grpc_p99_ms": round(p["grpc"].p99_ms, 1),
        "rest_rps": round(p["rest"].rate),
        "bare_rps": round(p["bare"].rate),
        "rest_vs_bare": _ratio(p["rest"].rate, p["bare"].rate),
    }


def result_figures(p: dict[str, Phase]) -> dict[str, object]:
    return {
        "grpc_cps": round(p["grpc"].rate),
        "grpc_p99_ms": round(p["grpc"].p99_ms, 1),
        "rest_rps": round(p["rest"].rate),
        "grpc_cpu_ms": round(p["grpc"].cpu_ms, 2),
        "rest_cpu_ms": round(p["rest"].cpu_ms, 2),
        "load1": round(os.getloadavg()[0], 1),
        "echo_cps": round(p["echo"].rate),
        "bare_rps": round(p["bare"].rate),
        "grpc_vs_echo": _ratio(p["grpc"].rate, p["echo"].rate),
        "rest_vs_bare": _ratio(p["rest"].rate, p["bare"].rate),
        "echo_cpu_ms": round(p["echo"].cpu_ms, 3),
        "bare_cpu_ms": round(p["bare"].cpu_ms, 3),
        "grpc_pg_cpu_ms": round(p["grpc"].pg_cpu_ms, 2),
        "rest_pg_cpu_ms": round(p["rest"].pg_cpu_ms, 2),
    }


async def bench(servers: Servers, args: argparse.Namespace) -> None:
    runner = Bench(servers, seconds=args.seconds, warmup=args.warmup)
    points = args.curve_points if args.curve else ()
    measured: dict[int, dict[str, Phase]] = {}
    for clients in points:
        measured[clients] = await runner.point(clients)
        print(curve_line("api", ("clients", clients), curve_figures(measured[clients])), flush=True)
    at_default = measured.get(args.clients) or await runner.point(args.clients)
    print(result_line(result_figures(at_default)), flush=True)


# ---------------------------------------------------------------------------------------
# Composition


class Child:
    """One server child process and the ports it bound."""

    def __init__(self, root: Path, name: str, argv: list[str], *, loop: str) -> None:
        self.ports_file = root / f"{name}.ports.json"
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--loop", loop, "--serve", name, str(self.ports_file), *argv],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def ports(self, deadline: float) -> dict[str, int]:
        while not self.ports_file.exists():
            if self.process.poll() is not None:
                raise SystemExit(f"FAILED: the {self.name} server exited ({self.process.returncode}) before it listened")
            if time.monotonic() > deadline:
                raise SystemExit(f"FAILED: the {self.name} server did not start within 60 s")
            time.sleep(0.02)
        time.sleep(0.01)  # written in one call; a partial read is retried below
        for _ in range(50):
            try:
                return json.loads(self.ports_file.read_text())
            except json.JSONDecodeError:
                time.sleep(0.02)
        raise SystemExit(f"FAILED: the {self.name} server wrote an unreadable ports file")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _points(text: str) -> tuple[int, ...]:
    points = tuple(int(p) for p in text.split(",") if p.strip())
    if not points or min(points) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers, e.g. 1,4,16")
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each phase (default seconds/10, at most 0.5)")
    parser.add_argument("--curve", action="store_true", help="measure at each of --curve-points client counts")
    parser.add_argument("--curve-points", type=_points, default=DEFAULT_CURVE)
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio",
        help="the servers' event loop (default asyncio, as `convoy up` and `convoy api` run)",
    )
    parser.add_argument("--serve", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, ports_file, *rest = args.serve
        run = uvloop.run if args.loop == "uvloop" else asyncio.run
        if kind == "convoy":
            dsn, state = rest
            run(serve_convoy(dsn, Path(state), Path(ports_file)))
        elif kind == "echo":
            run(serve_echo(Path(ports_file)))
        elif kind == "bare":
            run(serve_bare(Path(ports_file)))
        else:
            raise SystemExit(f"unknown server {kind!r}")
        return
    if args.warmup is None:
        args.warmup = min(0.5, args.seconds / 10)
    with tempfile.TemporaryDirectory(prefix="convoy-bench-api-") as tmp:
        root = Path(tmp)
        with PostgresServer(data_dir=root / "postgres") as pg:
            children = [
                Child(root, "convoy", [pg.dsn, str(root / "state")], loop=args.loop),
                Child(root, "echo", [], loop=args.loop),
                Child(root, "bare", [], loop=args.loop),
            ]
            try:
                deadline = time.monotonic() + 60
                convoy, echo, bare = (c.ports(deadline) for c in children)
                token = (root / "state" / "admin-token").read_text().strip()
                servers = Servers(
                    convoy_grpc=convoy["grpc"], convoy_http=convoy["http"], echo_grpc=echo["grpc"], bare_http=bare["http"],
                    convoy_pid=children[0].process.pid, echo_pid=children[1].process.pid,
                    bare_pid=children[2].process.pid, token=token, pg_pid=pg.pid,
                )
                try:
                    uvloop.run(bench(servers, args))
                except BenchFailure as failure:
                    print(f"FAILED: {failure} (no RESULT: a failed call is not a measurement)", flush=True)
                    raise SystemExit(1) from None
            finally:
                for child in children:
                    child.stop()


if __name__ == "__main__":
    main()
