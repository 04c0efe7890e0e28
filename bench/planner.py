"""Planner benchmark: a fleet release of 1,000 services × 50 runtimes through the real
store, relay, bus and observation ingest, until every instance is converged.

The fleet: `--services` services (default 1,000) spread over `--apps` applications
(default 10), each application with three release channels — staging on 5 runtimes,
canary on 5 ("staging stable" precondition), prod on 40 ("canary stable" precondition;
ChannelStable preconditions only: no approvals, no soak). 50 runtimes, so 1,000 services
make 50,000 service instances (service × runtime).

Processes (on one machine, against an embedded nats-server and PostgreSQL this script
starts in a temporary folder):

- this process: the control plane's bus side as `convoy up` composes it — the relay
  (store → JetStream) and the observation ingest (JetStream → store: one durable
  consumer, each pull of up to 500 recorded in one commit; its default settings) — plus
  the setup and the measurement;
- the planner, alone in its own process (`services.planner.runner.Planner`, settings and
  pool as `convoy planner`), so its peak RSS (VmHWM) is its own;
- simulated agents in one process: one durable consumer per runtime on its intents
  (`bus.intent_filter`), and for every APPLY intent an APPLIED then a HEALTHY observation
  published on `bus.observation_subject` with the agent's own `Reporter` (awaited
  JetStream publish), ids from `services.agent.observations.build`.

Flow: declarations are recorded and folded by the planner first (not timed); then the
clock starts and 1,000 ReleaseCreated events are appended directly to the store with the
codec registry (one append per service, 64 at a time); the run ends when the planner's
state has every (service, channel) convergence CONVERGED *and* its checkpoint — which
commits with its outputs — has passed the input that made it so.

Figures: fleet_converge_s (first release appended → last convergence committed),
planner_eps (inputs folded + outputs written by the planner during that time, per second),
rss_mb (the planner process's VmHWM). On stderr also: progress every 2 s, the CPU seconds
each component (planner, agents, relay+ingest, nats-server, postgres) used in the timed
part, and with `--refold` the pure planner's capacity on the recorded inputs.

`--ingest-capacity N` measures the observation ingest alone instead: N observations (50
runtimes x 1,000 services) are published first, then the ingest is started and timed
until it has recorded them all (RESULT ingest_obs_per_s=… commits=…).

Last line: RESULT instances=50000 fleet_converge_s=… planner_eps=… rss_mb=… cpu_ms_per_instance=…
planner_processes=N cpu_share_planner=… cpu_share_agents=… cpu_share_relay_ingest=…
cpu_share_nats_server=… cpu_share_postgres=… (cpu_ms_per_instance: CPU-seconds of all the
processes in the timed part per instance, in ms — the figure that carries to another
machine; each share: that process's part of them).

`--curve` runs the release at each of `--curve-points` service counts (default
100,300,1000,3000,10000; applications scale with them, `--apps` per `--services`), fresh
servers each, printing `CURVE fleet services=N instances=… fleet_converge_s=…
cpu_ms_per_instance=… planner_eps=… rss_mb=…` per point, then the RESULT of `--services`
(the curve's point when it is one).

`--planner-partitions N` runs the planner side as N processes, `--partition K/N` each
(`PlannerSettings.partition`, each with its own checkpoint, no leader lock: one process per
partition, nothing to contend); the run ends when every partition has all the convergences
of its own applications CONVERGED and committed. CPU and peak RSS are printed per partition;
rss_mb is the largest partition's, planner_eps sums the partitions (each reads every input).
`--compare-partitions` runs the same release with 1 then 2 planner processes, fresh servers
each, and ends with RESULT partitions=1,2 fleet_converge_s=A,B cpu_ms_per_instance=C,D.

    .venv/bin/python bench/planner.py [--services 1000] [--apps 10]
    .venv/bin/python bench/planner.py --services 100             # a quick check
    .venv/bin/python bench/planner.py --observations direct      # agents append observations
                                                                  # themselves: past the ingest
    .venv/bin/python bench/planner.py --py-spy out.txt --refold  # where the planner spends its time
    .venv/bin/python bench/planner.py --ingest-capacity 30000    # the ingest alone, draining a backlog
    .venv/bin/python bench/planner.py --profile-planner out.prof  # planner under cProfile (slower)
    .venv/bin/python bench/planner.py --services 10000 --apps 100 --scale-check
                                  # 1,000 then 10,000 services: cpu_ms_per_instance of both (SCALE line)
    .venv/bin/python bench/planner.py --planner-partitions 2      # the planner as 2 partitions
    .venv/bin/python bench/planner.py --compare-partitions        # 1 then 2 planner processes
    .venv/bin/python bench/planner.py --curve                     # the cost curve, 100 -> 10,000 services
    .venv/bin/python bench/planner.py --services 10 --apps 2 --curve --curve-points 10,20   # in seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stats import curve_line, result_line  # noqa: E402

INSTANCE = "bench"
SCHEMA = "bench_planner"
CHANNELS = (("staging", "s", 5), ("canary", "c", 5), ("prod", "p", 40))
"""(channel, runtime prefix, runtimes): each channel requires the previous one stable."""


def runtime_names() -> dict[str, list[str]]:
    return {channel: [f"{prefix}{i:02d}" for i in range(count)] for channel, prefix, count in CHANNELS}


def service_names(services: int, apps: int) -> list[tuple[str, str]]:
    """(application, service) pairs, services dealt round-robin over the applications."""
    return [(f"app{i % apps:02d}", f"svc{i:04d}") for i in range(services)]


def err(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- measuring helpers -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(root: int | None) -> list[int]:
    """`root` and all its descendants."""
    if root is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (live ones; a process that exited is lost)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def summarize_profile(path: str, top: int = 25) -> None:
    """py-spy's raw (collapsed) stacks → inclusive and self share per function, to stderr."""
    import collections
    import re

    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for text in Path(path).read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # py-spy also writes notes (its own version, "… samples passed.")
        n = int(count)
        total += n
        names = []
        for frame in stack.split(";"):
            m = re.match(r"(.*?) \((.*?):\d+\)", frame)
            names.append(f"{m.group(1)} ({m.group(2).rsplit('/', 1)[-1]})" if m else frame)
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    if not total:
        err("profile: no samples")
        return
    err(f"planner profile ({total} samples; {path}) -- inclusive:")
    for name, n in inclusive.most_common(top):
        err(f"  {100 * n / total:5.1f}%  {name}")
    err("-- self:")
    for name, n in own.most_common(top):
        err(f"  {100 * n / total:5.1f}%  {name}")


# -- the planner process ---------------------------------------------------------------


async def planner_child(dsn: str, expected: int, profile: str, partition: str) -> None:
    """Run the planner (partition `partition`, K/N); every 0.25 s print a JSON line with its
    stats; print {"converged": …} once all `expected` convergences (of its applications) are
    CONVERGED and committed.

    Convergences are counted as the planner reports them committed (`on_converged`), not
    by scanning its state: a scan of every convergence every 50 ms cost O(fleet) per tick
    for O(fleet) ticks, 2 % of the planner's CPU at 3,000 convergences and 7 % at 9,000 —
    the harness growing faster than the fleet it measures."""
    from eventstore.codec import convoy_registry
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from services.planner.clock import SystemClock
    from services.planner.partitions import Partition
    from services.planner.runner import Planner, PlannerSettings

    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=SCHEMA, pool_max=4))
    settings = PlannerSettings(partition=Partition.parse(partition))  # named planner-K-of-N unless 0/1
    converged: set[tuple[str, str, str]] = set()
    changed = asyncio.Event()

    def on_converged(app: str, service: str, channel: str, _seconds: float) -> None:
        converged.add((app, service, channel))  # told once the outputs saying so are committed
        changed.set()

    def line(**fields: Any) -> None:
        s = planner.stats
        fields.update(t=time.time(), inputs=s.inputs, outputs=s.outputs, commits=s.commits, restarts=s.restarts)
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    async with Planner(store=store, registry=convoy_registry(), clock=SystemClock(), settings=settings,
                       on_converged=on_converged) as planner:
        await planner.ready.wait()
        line(ready=True, position=planner.state.position)
        while True:
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await changed.wait()
            if len(converged) >= expected:  # a partition may own no application: done at once
                line(converged=len(converged), position=planner.state.position, done=True)
                break
            line(converged=len(converged), position=planner.state.position,
                 checkpoint=await store.checkpoint(settings.name), convergences=len(planner.state.convergences))
        await asyncio.Event().wait()  # until the parent reads VmHWM and terminates us


def run_planner_child(dsn: str, expected: int, profile: str, partition: str) -> None:
    if not profile:
        asyncio.run(planner_child(dsn, expected, profile, partition))
        return
    import cProfile
    import signal

    profiler = cProfile.Profile()

    def dump(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(profile)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    profiler.enable()
    asyncio.run(planner_child(dsn, expected, profile, partition))


# -- the simulated agents process --------------------------------------------------------


async def agents_child(nats_url: str, dsn: str, runtimes: list[str]) -> None:
    """One durable consumer per runtime; APPLIED + HEALTHY for every APPLY intent, published
    on NATS for the ingest — or, with a `dsn` (`--observations direct`), appended straight to
    the store as the ingest would record them (same streams, actor and event ids)."""
    from eventstore import bus
    from eventstore.codec import convoy_registry
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from services.api.ingest import event_id, stream_of
    from eventstore.subscriptions import Delivery, DurableSubscription, SubscriptionSettings
    from schemas.convoy.v1 import convergence_pb2 as C
    from schemas.convoy.v1 import events_pb2 as E
    from services.agent.observations import Reporter, Subject, build
    from services.agent.runtimes.base import WorkloadKey

    nc = await bus.connect(nats_url, name="bench-agents")
    registry = convoy_registry()
    store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=SCHEMA, pool_max=4)) if dsn else None
    handled = 0
    settings = SubscriptionSettings(batch=200, ack_wait=120.0, max_ack_pending=2000)

    def handler_for(runtime: str) -> Any:
        reporter = Reporter(nc, instance=INSTANCE, runtime=runtime)

        async def handle(delivery: Delivery) -> None:
            nonlocal handled
            if delivery.headers.get(bus.H_TYPE) != "convoy.v1.IntentIssued":
                return  # ChecksRequested: none in this fleet
            intent = E.IntentIssued.FromString(delivery.data)
            if intent.action != C.INTENT_ACTION_APPLY:
                return
            about = Subject(
                key=WorkloadKey(intent.target.namespace, intent.spec.application, intent.spec.service),
                intent_id=intent.intent_id, generation=intent.generation, spec_hash=intent.spec_hash,
                channel=intent.spec.channel,
            )
            observations = [build(runtime, about, kind) for kind in (C.OBSERVATION_KIND_APPLIED, C.OBSERVATION_KIND_HEALTHY)]
            if store is None:
                for observation in observations:
                    await reporter.publish(observation)
            else:  # concurrent handlers' appends share the store's group commit
                await store.append(stream_of(observations[0]), [
                    registry.encode(E.ObservationRecorded(observation=o), actor=f"agent:{runtime}",
                                    event_id=event_id(o.observation_id))
                    for o in observations
                ])
            handled += 1

        return handle

    subscriptions = [
        DurableSubscription(
            nc, instance=INSTANCE, stream=bus.events_stream(INSTANCE), durable=f"bench-agent-{runtime}",
            filter_subjects=bus.intent_filter(INSTANCE, runtime), handler=handler_for(runtime), settings=settings,
        )
        for runtime in runtimes
    ]
    for sub in subscriptions:
        await sub.ensure_consumer()
        await sub.start()
    print(json.dumps({"ready": len(subscriptions)}), flush=True)
    while True:
        await asyncio.sleep(0.5)
        print(json.dumps({"handled": handled}), flush=True)


# -- the parent: servers, plane, setup, measurement ----------------------------------------


class Child:
    """A child process whose stdout carries JSON lines; keeps the latest one."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.last: dict[str, Any] = {}
        self.lines: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                self.last = json.loads(raw)
            except ValueError:
                err(f"[{self.name}] {raw.decode().rstrip()}")
                continue
            if "ready" in self.last or "done" in self.last:
                self.lines.append(self.last)
            self.changed.set()

    async def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not any(key in line for line in self.lines):
            if self.proc.returncode is not None or self._task.done():
                raise SystemExit(f"the {self.name} process exited (code {self.proc.returncode})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(f"the {self.name} process did not report {key!r} within {timeout:.0f} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        return next(line for line in self.lines if key in line)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._task.cancel()


async def refold(store: Any, registry: Any) -> None:
    """The planner's capacity without I/O: fold every recorded input again with the pure
    `plan` (decoding included, encoding and committing the outputs not)."""
    from services.planner.engine import INPUT_CATEGORIES, plan
    from services.planner.model import PlannerState
    from services.planner.runner import to_input

    recorded, after = [], 0
    while batch := await store.read_all(after=after, limit=20_000, categories=INPUT_CATEGORIES):
        recorded += batch
        after = batch[-1].position
    state, outputs = PlannerState(), 0
    began = time.perf_counter()
    for event in recorded:
        item = to_input(registry, event)
        if item is not None:
            outputs += len(plan(state, item)[1])
    took = time.perf_counter() - began
    err(f"refold: {len(recorded)} inputs -> {outputs} outputs in {took:.2f} s: "
        f"{len(recorded) / took:.0f} inputs/s, {(len(recorded) + outputs) / took:.0f} events/s (no I/O)")


def vm_hwm_mb(pid: int) -> float:
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) / 1024
    return float("nan")


async def spawn(name: str, *args: str) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}, limit=1 << 20,
    )
    err(f"{name} process pid {proc.pid}")
    return Child(name, proc)


async def ingest_capacity(count: int) -> None:
    """Publish `count` observations (awaited, 500 at a time), then start the ingest and
    time it until all are recorded."""
    from eventstore import bus
    from eventstore.embedded import NatsServer, PostgresServer
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from schemas.convoy.v1 import convergence_pb2 as C
    from services.api.ingest import ObservationIngest

    with tempfile.TemporaryDirectory(prefix="convoy-bench-ingest-") as tmp, NatsServer(
        data_dir=Path(tmp) / "nats"
    ) as nats_server, PostgresServer(data_dir=Path(tmp) / "pg") as pg:
        store = await PostgresEventStore.open(PostgresSettings(dsn=pg.dsn, schema=SCHEMA, pool_max=32))
        nc = await bus.connect(nats_server.url, name="bench-ingest")
        js = nc.jetstream()
        await bus.ensure_streams(js, INSTANCE)

        async def publish(n: int) -> None:
            runtime, service = f"r{n % 50:02d}", f"svc{(n // 50) % 1000:04d}"
            observation = C.Observation(
                observation_id=f"obs-{n}", runtime=runtime, namespace="prod", application="app", service=service,
                kind=C.OBSERVATION_KIND_HEALTHY, intent_id=f"intent-{n}", generation=1,
            )
            await js.publish(bus.observation_subject(INSTANCE, runtime, "prod", "app", service),
                             observation.SerializeToString(), headers={bus.H_MSG_ID: observation.observation_id})

        for first in range(0, count, 500):
            await asyncio.gather(*(publish(n) for n in range(first, min(count, first + 500))))
        err(f"{count} observations published; load {os.getloadavg()}")
        ingest = ObservationIngest(nc=nc, store=store, instance=INSTANCE)  # its defaults, as `convoy up`
        cpu, started = time.process_time(), time.perf_counter()
        async with ingest:
            while ingest.recorded < count:
                await asyncio.sleep(0.01)
            took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        err(f"ingest: {count} observations in {took:.2f} s, {ingest.commits} commits, "
            f"{1e3 * cpu / count:.3f} ms of this process's CPU per observation; load {os.getloadavg()}")
        await nc.close()
        await store.close()
    print(f"RESULT ingest_observations={count} ingest_obs_per_s={count / took:.0f} commits={ingest.commits}", flush=True)


async def run_fleet(
    args: argparse.Namespace, services: int, apps: int, partitions: int = 1, *, quiet: bool = False
) -> dict[str, Any]:
    """One fleet release of `services` services over `apps` applications, planned by
    `partitions` planner processes, on fresh servers; prints its RESULT line (unless
    `quiet`: a point of a curve) and returns its figures."""
    from eventstore import bus
    from eventstore.codec import convoy_registry
    from eventstore.embedded import NatsServer, PostgresServer
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from eventstore.relay import Relay, RelaySettings
    from eventstore.types import AppendRequest
    from schemas.convoy.v1 import events_pb2 as E
    from schemas.convoy.v1 import resources_pb2 as R
    from services.api.ingest import ObservationIngest
    from services.planner.partitions import Partition

    registry = convoy_registry()
    suffix = f".{services}" if args.scale_check or args.curve else f".p{partitions}" if args.compare_partitions else ""
    py_spy = args.py_spy and args.py_spy + suffix
    profile_planner = args.profile_planner and args.profile_planner + suffix
    runtimes = runtime_names()
    all_runtimes = [r for names in runtimes.values() for r in names]
    fleet = service_names(services, min(apps, services))
    app_names = sorted({app for app, _ in fleet})
    instances = len(fleet) * len(all_runtimes)
    expected = len(fleet) * len(CHANNELS)
    layout = [Partition(k, partitions) for k in range(partitions)]
    owned = [sum(len(CHANNELS) for app, _ in fleet if part.owns(app)) for part in layout]  # convergences each
    err(f"fleet: {len(fleet)} services in {len(app_names)} application(s), {len(all_runtimes)} runtimes, "
        f"{instances} instances, {expected} convergences; {partitions} planner process(es)"
        + (f" owning {owned} convergences" if partitions > 1 else "") + f"; load: {os.getloadavg()}")

    with tempfile.TemporaryDirectory(prefix="convoy-bench-planner-") as tmp, NatsServer(
        data_dir=Path(tmp) / "nats"
    ) as nats_server, PostgresServer(data_dir=Path(tmp) / "pg") as pg:
        store = await PostgresEventStore.open(PostgresSettings(dsn=pg.dsn, schema=SCHEMA, pool_max=32))
        nc = await bus.connect(nats_server.url, name="bench-plane")
        await bus.ensure_streams(nc.jetstream(), INSTANCE)

        # Declarations (not timed).
        def enc(message: Any) -> Any:
            return registry.encode(message, actor="bench")

        declarations = [AppendRequest(f"runtime/{r}", (enc(E.RuntimeRegistered(
            runtime=R.Runtime(name=r, kind=R.RUNTIME_KIND_EXEC))),)) for r in all_runtimes]
        for app in app_names:
            channels, previous = [], ""
            for channel, _, _ in CHANNELS:
                ch = R.ReleaseChannel(name=channel, runtimes=[R.RuntimeBinding(runtime=r) for r in runtimes[channel]])
                if previous:
                    ch.preconditions.add(channel_stable=R.ChannelStable(channel=previous))
                channels.append(ch)
                previous = channel
            declarations.append(AppendRequest(f"app/{app}", (enc(E.ApplicationCreated(
                application=R.Application(name=app, release_channels=channels))),)))
        configs = {}
        for app, name in fleet:
            configs[(app, name)] = R.Service(application=app, name=name, replicas=1,
                                             programs=[R.Program(name=name, image=f"example/{name}:1")])
            declarations.append(AppendRequest(f"service/{app}/{name}", (enc(E.ServiceConfigured(
                service=configs[(app, name)], created=True)),)))
        for i in range(0, len(declarations), 500):
            await store.commit(declarations[i : i + 500])
        err(f"{len(declarations)} declarations recorded")
        declared = await store.head()  # the planner's checkpoint follows inputs only (not its version record)

        relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=INSTANCE))
        ingest = ObservationIngest(nc=nc, store=store, instance=INSTANCE)  # its defaults, as `convoy up`
        children: list[Child] = []
        async with relay, ingest:
            try:
                direct = args.observations == "direct"  # the ingest then idles
                agents = await spawn("agents", "--agents-child", nats_server.url, pg.dsn if direct else "", *all_runtimes)
                children.append(agents)
                await agents.wait_for("ready", 120)
                planners: list[Child] = []
                for part, count in zip(layout, owned, strict=True):
                    label = "planner" if part.whole else f"planner {part.index}/{part.count}"
                    planners.append(await spawn(label, "--planner-child", pg.dsn, str(count),
                                                profile_planner and profile_planner + ("" if part.whole else f".{part.index}"),
                                                f"{part.index}/{part.count}"))
                    children.append(planners[-1])
                for planner in planners:
                    await planner.wait_for("ready", 120)
                head = await store.head()
                while any(p.last.get("checkpoint", 0) < declared for p in planners) or relay.checkpoint < head:
                    await asyncio.sleep(0.1)
                before = [dict(p.last) for p in planners]
                err(f"planner(s) caught up with the declarations (position {declared}); relay at {relay.checkpoint}")
                components = {
                    **{p.name: [p.proc.pid] for p in planners}, "agents": [agents.proc.pid], "relay+ingest": [os.getpid()],
                    "nats-server": process_tree(nats_server.pid), "postgres": process_tree(pg.pid),
                }
                planner = planners[0]  # py-spy samples this one
                cpu_before = {name: cpu_seconds(pids) for name, pids in components.items()}
                spy = None
                if py_spy:
                    spy = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(planner.proc.pid),
                        "--format", "raw", "--output", py_spy, "--nonblocking", "--rate", "100",
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    )
                    await asyncio.sleep(1.0)  # attached

                # The timed part: 1,000 ReleaseCreated commands, then convergence.
                started = time.time()
                gate = asyncio.Semaphore(64)

                async def release(app: str, name: str) -> None:
                    message = E.ReleaseCreated(release=R.Release(
                        id=f"rel-{app}-{name}-1", application=app, service=name, version="v1", config=configs[(app, name)]))
                    async with gate:
                        await store.append(f"release/{app}/{name}", [registry.encode(message, actor="bench")])

                await asyncio.gather(*(release(app, name) for app, name in fleet))
                err(f"{len(fleet)} releases appended in {time.time() - started:.2f} s")

                def summed(key: str, lines: list[dict[str, Any]]) -> int:
                    return sum(line.get(key, 0) - b[key] for line, b in zip(lines, before, strict=True))

                async def progress() -> None:
                    while True:
                        await asyncio.sleep(2.0)
                        last = [p.last for p in planners]
                        err(f"t={time.time() - started:6.1f}s converged {sum(p.get('converged', 0) for p in last)}/{expected} "
                            f"planner in={summed('inputs', last)} out={summed('outputs', last)} "
                            f"ckpt={min(p.get('checkpoint', 0) for p in last)} | relay published={relay.published} lag={relay.lag} | "
                            f"ingest recorded={ingest.recorded} | agents handled={agents.last.get('handled', 0)} | "
                            f"load={os.getloadavg()[0]:.2f}")

                reporter = asyncio.create_task(progress())
                try:
                    dones = [await p.wait_for("done", args.timeout) for p in planners]  # every partition
                finally:
                    reporter.cancel()
                rss_each = [vm_hwm_mb(p.proc.pid) for p in planners]
                cpu = {name: cpu_seconds(pids) - cpu_before[name] for name, pids in components.items()}
                if spy is not None:
                    spy.send_signal(2)
                    await spy.wait()
                elapsed = max(d["t"] for d in dones) - started  # the last partition's last convergence
                work = summed("inputs", dones) + summed("outputs", dones)
                if len(planners) > 1:
                    for p, d, b, mb in zip(planners, dones, before, rss_each, strict=True):
                        err(f"{p.name}: {d['converged']} convergences by {d['t'] - started:.2f} s, read "
                            f"{d['inputs'] - b['inputs']} inputs, wrote {d['outputs'] - b['outputs']} outputs, "
                            f"CPU {cpu[p.name]:.1f} s, peak RSS {mb:.0f} MB")
                err(f"converged: {sum(d['converged'] for d in dones)} convergences in {elapsed:.2f} s; planner(s) folded "
                    f"{summed('inputs', dones)} inputs and wrote {summed('outputs', dones)} outputs "
                    f"in {summed('commits', dones)} commits ({sum(d['restarts'] for d in dones)} restarts); "
                    f"ingest recorded {ingest.recorded} ({ingest.duplicates} duplicates) in {ingest.commits} commits "
                    f"({ingest.recorded / elapsed:.0f}/s); "
                    f"relay published {relay.published}; "
                    f"load {os.getloadavg()}")
                err(f"CPU seconds in the timed part ({elapsed:.1f} s wall, {os.cpu_count()} cores = "
                    f"{(os.cpu_count() or 1) * elapsed:.0f} CPU-s): "
                    + ", ".join(f"{name} {value:.1f}" for name, value in cpu.items())
                    + f"; total {sum(cpu.values()):.1f}; load {os.getloadavg()[0]:.2f}")
            finally:
                for child in children:
                    await child.stop()
        await nc.close()
        if py_spy:
            summarize_profile(py_spy)
        if args.refold:
            await refold(store, registry)
        await store.close()

    cpu_ms = 1e3 * sum(cpu.values()) / instances
    planner_cpu = sum(v for k, v in cpu.items() if k.startswith("planner"))
    figures = {"instances": instances, "fleet_converge_s": f"{elapsed:.1f}", "planner_eps": f"{work / elapsed:.0f}",
               "rss_mb": f"{max(rss_each):.0f}", "cpu_ms_per_instance": f"{cpu_ms:.3f}", "planner_processes": partitions,
               **{f"cpu_share_{key}": f"{share:.3f}" for key, share in cpu_shares(cpu).items()}}
    if not quiet:
        print(result_line(figures), flush=True)
    return {"instances": instances, "fleet_converge_s": elapsed, "cpu_ms_per_instance": cpu_ms, "cpu": cpu,
            "load": os.getloadavg()[0], "planner_cpu": planner_cpu, "rss_each": rss_each, "planner_eps": work / elapsed,
            "figures": figures}


COMPONENTS = ("planner", "agents", "relay+ingest", "nats-server", "postgres")
"""The processes whose CPU the timed part counts (`planner` sums the planner partitions)."""


def cpu_shares(cpu: dict[str, float]) -> dict[str, float]:
    """Each component's share of the CPU-seconds of the timed part, keyed for a RESULT line
    (`relay+ingest` -> `relay_ingest`, `nats-server` -> `nats_server`). Total CPU per
    instance is the figure that carries to another machine; the shares say where it goes."""
    total = sum(cpu.values()) or 1.0
    summed = {name: sum(v for k, v in cpu.items() if k == name or (name == "planner" and k.startswith("planner")))
              for name in COMPONENTS}
    return {name.replace("+", "_").replace("-", "_"): value / total for name, value in summed.items()}


def curve_apps(services: int, default_services: int, default_apps: int) -> int:
    """Applications for a curve point: the default's services per application (100 at
    1,000 services over 10), so each channel's convergence costs the same at every point."""
    return max(1, min(services, round(services * default_apps / max(1, default_services))))


async def cost_curve(args: argparse.Namespace) -> None:
    """The release at each `--curve-points` size (fresh servers each), a CURVE line per
    point, then the RESULT of the default size (the curve's point when it is one)."""
    points = [int(p) for p in args.curve_points.split(",") if p.strip()]
    if not points or any(p < 1 for p in points):
        raise SystemExit(f"--curve-points: want positive service counts, got {args.curve_points!r}")
    runs: dict[int, dict[str, Any]] = {}
    for services in points:
        runs[services] = figures = await run_fleet(
            args, services, curve_apps(services, args.services, args.apps), args.planner_partitions, quiet=True)
        print(curve_line("fleet", ("services", services), {
            "instances": figures["instances"],
            "fleet_converge_s": f"{figures['fleet_converge_s']:.2f}",
            "cpu_ms_per_instance": f"{figures['cpu_ms_per_instance']:.3f}",
            "planner_eps": f"{figures['planner_eps']:.0f}",
            "rss_mb": f"{max(figures['rss_each']):.0f}",
        }), flush=True)
    default = runs.get(args.services)
    if default is None:
        default = await run_fleet(args, args.services, args.apps, args.planner_partitions, quiet=True)
    print(result_line(default["figures"]), flush=True)


async def main(args: argparse.Namespace) -> None:
    if args.curve:
        await cost_curve(args)
        return
    if args.compare_partitions:
        await compare_partitions(args)
        return
    if not args.scale_check:
        await run_fleet(args, args.services, args.apps, args.planner_partitions)
        return
    # The same release at 1x and at `scale_factor` x, one after the other on fresh servers:
    # `--services`/`--apps` name the large size. Cost is linear when the CPU per instance
    # stays put (wall time moves with what else runs on the machine; CPU-seconds less).
    factor = args.scale_factor
    small = await run_fleet(args, max(1, args.services // factor), max(1, args.apps // factor), args.planner_partitions)
    large = await run_fleet(args, args.services, args.apps, args.planner_partitions)
    for name, figures in (("1x", small), (f"{factor}x", large)):
        err(f"scale {name}: {figures['instances']} instances, {figures['fleet_converge_s']:.1f} s, "
            f"{figures['cpu_ms_per_instance']:.3f} CPU-ms per instance ("
            + ", ".join(f"{k} {1e3 * v / figures['instances']:.3f}" for k, v in figures["cpu"].items()) + ")")
    ratio = large["cpu_ms_per_instance"] / small["cpu_ms_per_instance"]
    time_ratio = large["fleet_converge_s"] / small["fleet_converge_s"]
    print(f"SCALE factor={factor} cpu_ms_per_instance_1x={small['cpu_ms_per_instance']:.3f} "
          f"cpu_ms_per_instance_{factor}x={large['cpu_ms_per_instance']:.3f} cpu_ratio={ratio:.3f} "
          f"converge_s_1x={small['fleet_converge_s']:.1f} converge_s_{factor}x={large['fleet_converge_s']:.1f} "
          f"time_ratio={time_ratio:.2f}", flush=True)


async def compare_partitions(args: argparse.Namespace) -> None:
    """The same release with 1 then 2 planner processes, one after the other on fresh servers."""
    runs = [await run_fleet(args, args.services, args.apps, n) for n in (1, 2)]
    for n, figures in zip((1, 2), runs, strict=True):
        total = sum(figures["cpu"].values())
        err(f"partitions {n}: {figures['instances']} instances, {figures['fleet_converge_s']:.1f} s, "
            f"{figures['cpu_ms_per_instance']:.3f} CPU-ms per instance; planner CPU {figures['planner_cpu']:.1f} s "
            f"of {total:.1f} s ({100 * figures['planner_cpu'] / total:.0f} %), peak RSS "
            + ", ".join(f"{mb:.0f}" for mb in figures["rss_each"]) + " MB; "
            + ", ".join(f"{k} {v:.1f}" for k, v in figures["cpu"].items()) + f"; load {figures['load']:.2f}")
    print("RESULT partitions=1,2 fleet_converge_s=" + ",".join(f"{r['fleet_converge_s']:.1f}" for r in runs)
          + " cpu_ms_per_instance=" + ",".join(f"{r['cpu_ms_per_instance']:.3f}" for r in runs), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=10, help="applications the services are spread over")
    parser.add_argument("--ingest-capacity", type=int, default=0, metavar="N",
                        help="measure the observation ingest alone: publish N observations, then time their ingest")
    parser.add_argument("--observations", choices=("ingest", "direct"), default="ingest",
                        help="ingest: agents publish on NATS, the observation ingest records them (default); "
                        "direct: agents append them to the store themselves (no ingest), to see past the ingest")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for convergence")
    parser.add_argument("--scale-check", action="store_true",
                        help="run the release at --services/--apps and at 1/--scale-factor of it, and print "
                        "both sizes' cpu_ms_per_instance and their ratio (SCALE line)")
    parser.add_argument("--scale-factor", type=int, default=10, help="the large size over the small one (--scale-check)")
    parser.add_argument("--planner-partitions", type=int, default=1, metavar="N",
                        help="run the planner side as N processes, partition K/N each (`convoy planner --partition`)")
    parser.add_argument("--compare-partitions", action="store_true",
                        help="run the release with 1 then 2 planner processes and print both (RESULT partitions=1,2 …)")
    parser.add_argument("--curve", action="store_true",
                        help="run the release at each --curve-points size and print a CURVE fleet services=N … line "
                        "per point, then the RESULT of --services")
    parser.add_argument("--curve-points", default="100,300,1000,3000,10000", metavar="N,N,…",
                        help="service counts of the curve (applications scale with them: --apps per --services)")
    parser.add_argument("--profile-planner", default="", metavar="PATH", help="run the planner under cProfile, stats to PATH")
    parser.add_argument("--py-spy", default="", metavar="PATH",
                        help="sample the planner with py-spy during the timed part (raw stacks to PATH, summary to stderr)")
    parser.add_argument("--refold", action="store_true",
                        help="afterwards, fold the recorded inputs again with the pure planner (no I/O): its capacity")
    parser.add_argument("--planner-child", nargs=4, metavar=("DSN", "EXPECTED", "PROFILE", "PARTITION"), help=argparse.SUPPRESS)
    parser.add_argument("--agents-child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.planner_partitions < 1:
        parser.error("--planner-partitions: want N >= 1")
    if sum((args.compare_partitions, args.scale_check, args.curve)) > 1:
        parser.error("--compare-partitions, --scale-check and --curve: one at a time")
    if args.planner_child:
        dsn, expected, profile, partition = args.planner_child
        run_planner_child(dsn, int(expected), profile, partition)
    elif args.agents_child:
        import uvloop

        uvloop.run(agents_child(args.agents_child[0], args.agents_child[1], args.agents_child[2:]))
    elif args.ingest_capacity:
        import uvloop

        uvloop.run(ingest_capacity(args.ingest_capacity))
    else:
        import uvloop

        uvloop.run(main(args))
