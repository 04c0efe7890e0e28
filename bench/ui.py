"""UI benchmark: server time of the fleet view, 1,000 services × 3 channels on one page.

Issue 11: GET /ui/fleet?size=1000 must render in at most 1 s of server time. The fleet is
the planner benchmark's (`bench/planner.py`): services dealt over applications, each with
the channels staging (5 runtimes), canary (5, "staging stable") and prod (40, "canary
stable"), so every (service, channel) has 5 or 40 targets. Two shapes by default, each in
its own PostgreSQL schema and its own API server: 10 applications × 100 services (the
figure of the RESULT line) and 1 application × 1,000 services (`one_app_ms`).

Data: the catalog (runtimes, applications, services, releases v1 and v2) and the
planner's InstanceStatusChanged events — channel-level and per target, to the
convergence streams, actor "planner" — appended straight to the store with the codec
registry, as the planner would have recorded them. Only each release's last change per
channel and per target is written (the read model keeps only the latest; the whole
history would only make the setup longer). The mix, by service: 40% run v2 everywhere,
15% v1 everywhere, 15% v2 waiting for approval in prod, 10% v2 deploying in canary, 5%
verifying in prod, 10% v2 rolled back in staging (a probe's HTML body in the reason), 5%
failed in prod (2 of 40 targets). So no cell is empty.

Server: `services.api.server.ApiServer` (HTTP listener only) in a child process on the
embedded PostgreSQL, composed like `bench/api.py`'s (structlog configured as `convoy up`
does, JSON lines to a file). Its projection folds the log at start; the view, the handler
layer and Jinja run as in production. The child adds one aiohttp middleware that puts a
`Server-Timing: app;dur=<ms>` header on every answer: the time from the request's
routing to the complete response object (handler, three reads per application through
`Api`, the view, rendering) — **server time**. Writing the body to the socket is not in
it; the client-observed time (this process, aiohttp on loopback, the whole body read)
is reported beside it.

Sign-in as a person does: GET /ui/login (nonce cookie + field), POST /ui/login with the
bootstrap admin token; then `--warmup` requests and `--requests` timed ones, one at a time.
Baselines in the same run, same data, same server:
- `rest_ms`: what a JSON client pays for the same data — GET /v1/applications/{app}/convergence
  for every application, server times summed per round (`ratio` = fleet_view_ms / rest_ms);
- `page100_ms`: the fleet view with size=100 (one page of the default paging).

Medians and p90s are bench/stats.py's nearest-rank percentiles, as in every benchmark.

Last line: RESULT services=1000 channels=3 fleet_view_ms=<median> p90_ms=… client_ms=… rest_ms=… ratio=… page100_ms=… one_app_ms=… cpu_ms=… live_ms=… live_page_ms=… load1=…

    .venv/bin/python bench/ui.py                       # both shapes, 20 timed requests each
    .venv/bin/python bench/ui.py --shapes 10x100 --profile /tmp/fleet.prof   # cProfile of the server
    .venv/bin/python bench/ui.py --services 100 --requests 3 --warmup 1     # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import uvloop  # noqa: E402

from api import cpu_seconds  # noqa: E402  (bench/api.py)
from planner import CHANNELS, runtime_names  # noqa: E402  (bench/planner.py: the same fleet)

from bench.stats import percentile, result_line  # noqa: E402
from eventstore.embedded import PostgresServer  # noqa: E402

TARGET_MS = 1000.0
ADMIN_ACTOR = "bench"
PLANNER_ACTOR = "planner"


# ---------------------------------------------------------------------------------------
# The fleet: what the planner would have recorded


@dataclass(frozen=True)
class Shape:
    apps: int
    per_app: int

    @property
    def name(self) -> str:
        return f"{self.apps}x{self.per_app}"

    @property
    def services(self) -> int:
        return self.apps * self.per_app

    def fleet(self) -> list[tuple[str, str]]:
        return [(f"app{a:02d}", f"svc{a * self.per_app + i:04d}") for a in range(self.apps) for i in range(self.per_app)]


def parse_shape(text: str) -> Shape:
    apps, sep, per_app = text.partition("x")
    if not sep or not apps.isdigit() or not per_app.isdigit() or int(apps) < 1 or int(per_app) < 1:
        raise argparse.ArgumentTypeError(f"a shape is APPSxSERVICES (10x100), not {text!r}")
    return Shape(int(apps), int(per_app))


@dataclass(frozen=True)
class Change:
    """One InstanceStatusChanged: channel-level when `runtime` is empty."""

    channel: str
    release: int  # 1 or 2
    old: int
    new: int
    reason: str
    runtime: str = ""
    rollback: int = 0  # the release rolled back to (0: none)


def scenario(index: int) -> str:
    """The state a service is in, by its index (a fixed mix, see the module docstring)."""
    slot = index % 20
    for name, upto in (("v2", 8), ("v1", 11), ("approval", 14), ("deploying", 16), ("verifying", 17),
                       ("rolledback", 19), ("failed", 20)):
        if slot < upto:
            return name
    raise AssertionError(slot)


def changes(index: int, runtimes: dict[str, list[str]]) -> Iterator[Change]:
    """The last status change of each release per channel and per target, in log order."""
    from schemas.convoy.v1 import convergence_pb2 as S

    def converged(channel: str, release: int) -> Iterator[Change]:
        for r in runtimes[channel]:
            yield Change(channel, release, S.INSTANCE_STATUS_VERIFYING, S.INSTANCE_STATUS_CONVERGED, "healthy", r)
        yield Change(channel, release, S.INSTANCE_STATUS_VERIFYING, S.INSTANCE_STATUS_CONVERGED,
                     f"v{release} converged on {len(runtimes[channel])} runtime(s)")

    names = [c for c, _, _ in CHANNELS]
    for channel in names:
        yield from converged(channel, 1)
    kind = scenario(index)
    if kind == "v1":
        return
    staging, canary, prod = names
    waiting = S.INSTANCE_STATUS_WAITING_PRECONDITIONS
    if kind == "v2":
        for channel in names:
            yield from converged(channel, 2)
    elif kind == "approval":
        yield from converged(staging, 2)
        yield from converged(canary, 2)
        yield Change(prod, 2, waiting, S.INSTANCE_STATUS_WAITING_APPROVAL,
                     "waiting for 1 approval of prod-signoff (0 given, from the group release-managers)")
    elif kind == "deploying":
        yield from converged(staging, 2)
        for i, r in enumerate(runtimes[canary]):
            done = i < 2
            yield Change(canary, 2, S.INSTANCE_STATUS_VERIFYING if done else S.INSTANCE_STATUS_PENDING,
                         S.INSTANCE_STATUS_CONVERGED if done else S.INSTANCE_STATUS_DEPLOYING,
                         "healthy" if done else "intent sent; waiting for the agent to apply it", r)
        yield Change(canary, 2, waiting, S.INSTANCE_STATUS_DEPLOYING,
                     f"deploying v2: 2 of {len(runtimes[canary])} runtime(s) healthy")
        yield Change(prod, 2, S.INSTANCE_STATUS_PENDING, waiting,
                     "waiting for canary to be stable at v2: canary deploying (2 of 5 healthy)")
    elif kind == "verifying":
        yield from converged(staging, 2)
        yield from converged(canary, 2)
        for i, r in enumerate(runtimes[prod]):
            yield Change(prod, 2, S.INSTANCE_STATUS_DEPLOYING, S.INSTANCE_STATUS_VERIFYING if i % 2 else S.INSTANCE_STATUS_CONVERGED,
                         "healthy; soak 5m left" if i % 2 else "healthy", r)
        yield Change(prod, 2, S.INSTANCE_STATUS_DEPLOYING, S.INSTANCE_STATUS_VERIFYING,
                     "verifying: soak until 10:42 (20 of 40 runtime(s) healthy)")
    elif kind == "rolledback":
        body = "readiness probe answered 503. <html><head><title>503</title></head><body>Service Unavailable</body></html>"
        for r in runtimes[staging]:
            yield Change(staging, 1, S.INSTANCE_STATUS_ROLLING_BACK, S.INSTANCE_STATUS_CONVERGED, "healthy", r, rollback=1)
        yield Change(staging, 2, S.INSTANCE_STATUS_ROLLING_BACK, S.INSTANCE_STATUS_ROLLED_BACK,
                     f"rolled back to v1: automatic rollback to v1: unhealthy on runtime s01 after 10m ({body})", rollback=1)
        for channel in (canary, prod):
            previous = staging if channel == canary else canary
            yield Change(channel, 2, S.INSTANCE_STATUS_PENDING, waiting,
                         f"waiting for {previous} to be stable at v2: {previous} "
                         + ("rolled back" if channel == canary else "is on v1"))
    elif kind == "failed":
        yield from converged(staging, 2)
        yield from converged(canary, 2)
        for i, r in enumerate(runtimes[prod]):
            bad = i in (7, 23)
            yield Change(prod, 2, S.INSTANCE_STATUS_VERIFYING, S.INSTANCE_STATUS_FAILED if bad else S.INSTANCE_STATUS_CONVERGED,
                         f"CrashLoopBackOff on runtime {r} (exit code 137: out of memory)" if bad else "healthy", r)
        yield Change(prod, 2, S.INSTANCE_STATUS_VERIFYING, S.INSTANCE_STATUS_FAILED,
                     "failed on 2 of 40 runtime(s): CrashLoopBackOff on runtime p07 (exit code 137: out of memory)."
                     " Rollback is off for prod; deploy a fix or roll back by hand.")


async def populate(dsn: str, schema: str, shape: Shape) -> int:
    """Record the catalog and the convergence of `shape`; the number of events recorded."""
    from eventstore.codec import convoy_registry
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from eventstore.types import AppendRequest
    from schemas.convoy.v1 import convergence_pb2 as S
    from schemas.convoy.v1 import events_pb2 as E
    from schemas.convoy.v1 import resources_pb2 as R

    registry = convoy_registry()
    runtimes = runtime_names()
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=schema, pool_max=8))
    try:
        writes: list[AppendRequest] = []
        for names in runtimes.values():
            for r in names:
                writes.append(AppendRequest(f"runtime/{r}", (registry.encode(
                    E.RuntimeRegistered(runtime=R.Runtime(name=r, kind=R.RUNTIME_KIND_EXEC)), actor=ADMIN_ACTOR),)))
        fleet = shape.fleet()
        for app in sorted({a for a, _ in fleet}):
            channels, previous = [], ""
            for channel, _, _ in CHANNELS:
                ch = R.ReleaseChannel(name=channel, runtimes=[R.RuntimeBinding(runtime=r) for r in runtimes[channel]])
                if previous:
                    ch.preconditions.add(channel_stable=R.ChannelStable(channel=previous))
                channels.append(ch)
                previous = channel
            writes.append(AppendRequest(f"app/{app}", (registry.encode(
                E.ApplicationCreated(application=R.Application(name=app, release_channels=channels)), actor=ADMIN_ACTOR),)))
        for index, (app, name) in enumerate(fleet):
            service = R.Service(application=app, name=name, replicas=1, programs=[R.Program(name=name, image=f"example/{name}:1")])
            writes.append(AppendRequest(f"service/{app}/{name}", (registry.encode(
                E.ServiceConfigured(service=service, created=True), actor=ADMIN_ACTOR),)))
            releases = 1 if scenario(index) == "v1" else 2
            writes.append(AppendRequest(f"release/{app}/{name}", tuple(registry.encode(E.ReleaseCreated(release=R.Release(
                id=f"rel-{app}-{name}-{v}", application=app, service=name, version=f"v{v}", config=service)), actor=ADMIN_ACTOR)
                for v in range(1, releases + 1))))
            by_channel: dict[str, list[Any]] = {}
            for c in changes(index, runtimes):
                message = E.InstanceStatusChanged(
                    application=app, service=name, channel=c.channel, release_id=f"rel-{app}-{name}-{c.release}",
                    version=f"v{c.release}", old_status=c.old, new_status=c.new, reason=c.reason,  # type: ignore[arg-type]
                    rollback_release_id=f"rel-{app}-{name}-{c.rollback}" if c.rollback else "",
                )
                if c.runtime:
                    message.target.CopyFrom(S.Target(runtime=c.runtime, namespace="default"))
                by_channel.setdefault(c.channel, []).append(registry.encode(message, actor=PLANNER_ACTOR))
            for channel, events in by_channel.items():
                writes.append(AppendRequest(f"convergence/{app}/{name}/{channel}", tuple(events)))
        events = 0
        batch: list[AppendRequest] = []
        for write in writes:
            batch.append(write)
            events += len(write.events)
            if sum(len(w.events) for w in batch) >= 2000:
                await store.commit(batch)
                batch = []
        if batch:
            await store.commit(batch)
        return events
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------
# The server (child process)


async def serve(dsn: str, schema: str, state: Path, ports_file: Path, profile: str) -> None:
    """Child process: the API's HTTP listener on port 0 until SIGTERM, every answer
    carrying its server time in a Server-Timing header."""
    from aiohttp import web

    from cli import logging as convoy_logging
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from services.api import rest
    from services.api.server import ApiServer

    log_file = (state.parent / f"{schema}-server.log").open("w")
    convoy_logging.configure("json", stream=log_file)

    @web.middleware
    async def server_timing(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as answer:  # redirects (sign-in) are raised
            answer.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
            raise
        if not response.prepared:
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
        return response

    build = rest.RestApp.app

    def app_with_timing(self: rest.RestApp) -> web.Application:
        app = build(self)
        app.middlewares.append(server_timing)
        return app

    rest.RestApp.app = app_with_timing  # type: ignore[method-assign]

    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=schema, pool_max=8))
    server = ApiServer(store=store, state_dir=state, grpc_address=None, http_address="127.0.0.1:0")
    started = time.perf_counter()
    ports = await server.start()
    print(f"server: projection folded {server.projection.position} positions in {time.perf_counter() - started:.1f} s", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
    ports_file.write_text(json.dumps({"http": ports.http}))
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    await server.stop()
    await store.close()
    log_file.close()


# ---------------------------------------------------------------------------------------
# The client (this process)


@dataclass(frozen=True)
class Timing:
    server_ms: float
    client_ms: float
    body: bytes


def server_ms(response: aiohttp.ClientResponse) -> float:
    match = re.search(r"app;dur=([0-9.]+)", response.headers.get("Server-Timing", ""))
    if match is None:
        raise RuntimeError(f"no Server-Timing header on {response.url}")
    return float(match.group(1))


async def sign_in(http: aiohttp.ClientSession, base: str, token: str) -> None:
    async with http.get(f"{base}/ui/login") as response:
        page = await response.text()
    match = re.search(r'name="nonce" value="([^"]+)"', page)
    if match is None:
        raise RuntimeError("the sign-in page has no nonce field")
    async with http.post(f"{base}/ui/login", data={"token": token, "nonce": match.group(1), "next": "/ui/fleet"},
                         allow_redirects=False) as response:
        if response.status != 303 or "convoy_session" not in response.cookies:
            raise RuntimeError(f"sign-in answered {response.status}: {(await response.text())[:300]}")


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> Timing:
    started = time.perf_counter()
    async with http.get(url, allow_redirects=False, **kwargs) as response:
        body = await response.read()
        client = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {url} answered {response.status}: {body[:300]!r}")
        return Timing(server_ms(response), client, body)


def check_page(body: bytes, services: int, size: int) -> dict[str, int]:
    """The page is the whole fleet (or its first page): as many rows as asked, cells filled."""
    html = body.decode()
    if f"<p class=\"muted\">{services} services" not in html:
        raise RuntimeError(f"the fleet page does not say {services} services: {html[:2000]}")
    rows = html.count('<th scope="row">')
    cells = html.count("<td data-channel=")
    if rows != min(size, services) or cells != rows * len(CHANNELS):
        raise RuntimeError(f"the fleet page has {rows} rows and {cells} cells, expected {min(size, services)} rows")
    return {
        "rows": rows,
        "empty": html.count("nothing yet"),
        "badges": html.count('class="badge'),
        "gates": html.count('class="gate"'),
        "bytes": len(body),
    }


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def p90(values: list[float]) -> float:
    return percentile(values, 0.9)


def summary(name: str, values: list[float]) -> str:
    return f"{name} median={median(values):7.1f} p90={p90(values):7.1f} ms"


async def measure(port: int, token: str, server_pid: int, shape: Shape, args: argparse.Namespace) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}"
    apps = sorted({a for a, _ in shape.fleet()})
    jar = aiohttp.CookieJar(unsafe=True)  # loopback IP: aiohttp keeps no cookies for IPs otherwise
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        await sign_in(http, base, token)
        fleet_url = f"{base}/ui/fleet?size=1000"
        first = await get(http, fleet_url)
        shown = check_page(first.body, shape.services, 1000)
        print(f"{shape.name}: first fleet page {first.server_ms:.0f} ms server, {first.client_ms:.0f} ms client; "
              f"{shown['rows']} rows, {shown['badges']} badges, {shown['gates']} gates, "
              f"{shown['empty']} 'nothing yet', {shown['bytes'] / 1e6:.2f} MB", flush=True)
        for _ in range(args.warmup):
            await get(http, fleet_url)
        if args.profile:
            os.kill(server_pid, signal.SIGUSR1)
        cpu = cpu_seconds(server_pid)
        timed = [await get(http, fleet_url) for _ in range(args.requests)]
        cpu_ms = (cpu_seconds(server_pid) - cpu) * 1000 / args.requests
        fleet_server = [t.server_ms for t in timed]
        fleet_client = [t.client_ms for t in timed]
        if args.profile:
            return {"fleet_ms": median(fleet_server), "p90_ms": p90(fleet_server),
                    "client_ms": median(fleet_client), "rest_ms": 0.0, "page100_ms": 0.0, "cpu_ms": cpu_ms}

        page100_url = f"{base}/ui/fleet?size=100"
        check_page((await get(http, page100_url)).body, shape.services, 100)
        for _ in range(args.warmup):
            await get(http, page100_url)
        page100 = [(await get(http, page100_url)).server_ms for _ in range(args.requests)]

        auth = {"Authorization": f"Bearer {token}"}

        async def rest_round() -> tuple[float, float, int]:
            server = client = 0.0
            channels = 0
            for app in apps:
                t = await get(http, f"{base}/v1/applications/{app}/convergence", headers=auth)
                server, client = server + t.server_ms, client + t.client_ms
                channels += len(json.loads(t.body).get("channels", []))
            return server, client, channels

        _, _, channels = await rest_round()
        if channels != shape.services * len(CHANNELS):
            raise RuntimeError(f"REST answered {channels} channel convergences, expected {shape.services * len(CHANNELS)}")
        for _ in range(args.warmup):
            await rest_round()
        rest = [await rest_round() for _ in range(args.requests)]
        first_app, first_service = shape.fleet()[0]
        live, live_page = await live_latency(http, base, auth, first_app, first_service, page100_url, args.requests)
    rest_server = [r[0] for r in rest]
    print(f"{shape.name}: {summary('fleet size=1000 server', fleet_server)}  {summary('client', fleet_client)}  "
          f"server CPU {cpu_ms:.0f} ms/page", flush=True)
    print(f"{shape.name}: {summary('fleet size=100  server', page100)}", flush=True)
    print(f"{shape.name}: {summary('live: write sent -> SSE event', live)}  "
          f"{summary('-> size=100 page refetched', live_page)}", flush=True)
    print(f"{shape.name}: {summary(f'REST convergence x{len(apps)} server', rest_server)}  "
          f"{summary('client', [r[1] for r in rest])}", flush=True)
    return {
        "fleet_ms": median(fleet_server),
        "p90_ms": p90(fleet_server),
        "client_ms": median(fleet_client),
        "rest_ms": median(rest_server),
        "page100_ms": median(page100),
        "cpu_ms": cpu_ms,
        "live_ms": median(live),
        "live_page_ms": median(live_page),
    }


async def live_latency(
    http: aiohttp.ClientSession, base: str, auth: dict[str, str], app: str, service: str, page_url: str, count: int
) -> tuple[list[float], list[float]]:
    """What an open tab waits for a commit: from sending a write (REST pause/resume of one
    service) to its event on the page's SSE stream, and to the page's content fetched again
    as live.js does (X-Convoy-Fragment) — the browser's own swap is not in it."""
    event_ms: list[float] = []
    page_ms: list[float] = []
    async with http.get(f"{base}/ui/stream") as stream:
        if stream.status != 200:
            raise RuntimeError(f"the live stream answered {stream.status}")
        for i in range(count):
            action = "pause" if i % 2 == 0 else "resume"
            sent = time.perf_counter()
            async with http.post(
                f"{base}/v1/applications/{app}/services/{service}:{action}", json={"reason": "bench"}, headers=auth
            ) as r:
                position = int((await r.json())["position"])
            while True:
                line = (await stream.content.readline()).decode()
                if line.startswith("id: ") and int(line[4:]) >= position:
                    break
            event_ms.append((time.perf_counter() - sent) * 1000)
            async with http.get(page_url, headers={"X-Convoy-Fragment": "1"}) as r:
                await r.read()
            page_ms.append((time.perf_counter() - sent) * 1000)
    return event_ms, page_ms


def run_shape(pg: PostgresServer, root: Path, shape: Shape, args: argparse.Namespace) -> dict[str, float]:
    schema = f"bench_ui_{shape.name}"
    started = time.perf_counter()
    events = uvloop.run(populate(pg.dsn, schema, shape))
    print(f"{shape.name}: {shape.services} services in {shape.apps} application(s), {events} events recorded "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    state = root / schema
    ports_file = root / f"{schema}.json"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", pg.dsn, schema, str(state), str(ports_file), args.profile or ""],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while not ports_file.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the API server did not start")
            time.sleep(0.05)
        port = json.loads(ports_file.read_text())["http"]
        token = (state / "admin-token").read_text().strip()
        return uvloop.run(measure(port, token, child.pid, shape, args))
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        if args.profile:
            import pstats

            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=lambda s: [parse_shape(p) for p in s.split(",")], default=None,
                        help="APPSxSERVICES,… (default 10x100,1x1000; the first is the RESULT's figure)")
    parser.add_argument("--services", type=int, default=1000, help="services per shape (default 1000)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per figure")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before each figure")
    parser.add_argument("--profile", default="", help="cProfile the server during the timed fleet requests into this file")
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        dsn, schema, state, ports_file, profile = args.serve
        uvloop.run(serve(dsn, schema, Path(state), Path(ports_file), profile))
        return
    n = args.services
    shapes: list[Shape] = args.shapes or [Shape(10, max(1, n // 10)), Shape(1, n)]
    print(f"load: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="convoy-bench-ui-") as tmp:
        root = Path(tmp)
        with PostgresServer(data_dir=root / "postgres") as pg:
            figures = [run_shape(pg, root, shape, args) for shape in shapes]
    main_figures = figures[0]
    ratio = main_figures["fleet_ms"] / main_figures["rest_ms"] if main_figures["rest_ms"] else 0.0
    verdict = "met" if main_figures["fleet_ms"] <= TARGET_MS else "MISSED"
    print(f"target: fleet view of {shapes[0].services} services <= {TARGET_MS:.0f} ms server time: {verdict}", flush=True)
    result_figures = {
        "services": shapes[0].services,
        "channels": len(CHANNELS),
        "fleet_view_ms": f"{main_figures['fleet_ms']:.0f}",
        "p90_ms": f"{main_figures['p90_ms']:.0f}",
        "client_ms": f"{main_figures['client_ms']:.0f}",
        "rest_ms": f"{main_figures['rest_ms']:.0f}",
        "ratio": f"{ratio:.2f}",
        "page100_ms": f"{main_figures['page100_ms']:.0f}",
        **({"one_app_ms": f"{figures[1]['fleet_ms']:.0f}"} if len(figures) > 1 else {}),
        "cpu_ms": f"{main_figures['cpu_ms']:.0f}",
        "live_ms": f"{main_figures['live_ms']:.0f}",
        "live_page_ms": f"{main_figures['live_page_ms']:.0f}",
        "load1": f"{os.getloadavg()[0]:.1f}",
    }
    print(result_line(result_figures), flush=True)

if __name__ == "__main__":
    main()
