"""Agent benchmark: 1,000 agents (memory runtime) in a few processes, one machine, and
every intent accounted for.

Starts an embedded NATS and PostgreSQL, runs the control plane's bus side in this process
(relay, observation ingest, desired-state responder, consumer sync — composed as
`convoy up` composes them), registers one runtime per agent, starts the agents in worker
processes (each agent its own NATS connection, bound to its own durable consumer), then
issues intents — rounds of one intent per runtime, each committed on its own, at a steady
`--rate` (intents per second, open loop: an intent is issued at its time whether or not
the earlier ones are through) — and measures, per intent:

- intent latency: from the intent's commit (its `recorded_at`) to its agent receiving it
  the first time (relay NOTIFY wake-up → JetStream → the agent's pull consumer); a
  redelivery is counted (`redelivered=`), never taken as a sample;
- round trip: from the intent's commit to its APPLIED observation being in the store
  (agent → JetStream → ingest → append).

Every intent issued must be received by its agent, rolled out by its runtime exactly once
(the memory runtime counts rollouts per intent id) and have its APPLIED observation in the
store exactly once. One missing any of the three is `lost`, one rolled out or recorded
twice is `duplicated`. The wait for the APPLIED observations ends when all are in or when
none arrived for `--stall` seconds — never at a fixed total time. A lost or duplicated
intent prints the RESULT line and then exits non-zero, as does an agent that does not
start.

Last line: RESULT agents=1000 intent_p50_ms=… intent_p99_ms=… roundtrip_p99_ms=… lost=0
duplicated=0 redelivered=…

`--curve` measures at 10, 30, 100, 300 and 1,000 agents (`--curve-points` to change them),
each on fresh servers with the same work as the default load (`--rounds` x `--agents`
intents at `--rate`), only spread over more or fewer agents, printing one
`CURVE agents agents=N intent_p50_ms=… intent_p99_ms=… roundtrip_p99_ms=… lost=…
duplicated=…` line per point (`bench/run --curve` draws them); the RESULT line is the
point at `--agents`.

    .venv/bin/python bench/agents.py [--agents 1000] [--processes 4] [--rounds 3] [--rate 100]
    .venv/bin/python bench/agents.py --curve [--curve-points 10,30,100,300,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402

from bench.stats import curve_line, percentile, result_line, summarize  # noqa: E402

RUNTIME = "bench-{:04d}"
CURVE_POINTS = (10, 30, 100, 300, 1000)


def runtime_name(i: int) -> str:
    return RUNTIME.format(i)


# -- accounting: pure --------------------------------------------------------------------


@dataclass(frozen=True)
class Accounting:
    """What became of the intents issued."""

    issued: int
    not_received: list[str]
    not_rolled_out: list[str]
    not_observed: list[str]
    rolled_out_twice: list[str]
    observed_twice: list[str]
    redelivered: int
    unknown: int
    """Intents received, rolled out or observed that nobody issued (a benchmark bug)."""

    @property
    def lost(self) -> int:
        return len(set(self.not_received) | set(self.not_rolled_out) | set(self.not_observed))

    @property
    def duplicated(self) -> int:
        return len(set(self.rolled_out_twice) | set(self.observed_twice))

    def text(self) -> str:
        def few(ids: list[str]) -> str:
            return f"{len(ids)}" + (f" (e.g. {', '.join(sorted(ids)[:3])})" if ids else "")

        return (
            f"intents issued {self.issued}: not received {few(self.not_received)}, not rolled out "
            f"{few(self.not_rolled_out)}, no APPLIED in the store {few(self.not_observed)}; rolled out twice "
            f"{few(self.rolled_out_twice)}, APPLIED twice {few(self.observed_twice)}; redeliveries "
            f"{self.redelivered}; unknown ids {self.unknown}"
        )


def account(
    issued: Iterable[str],
    received: Iterable[str],
    redelivered: int,
    rollouts: Mapping[str, int],
    applied: Mapping[str, int],
) -> Accounting:
    """Every issued intent received, rolled out once and observed APPLIED once."""
    ids = set(issued)
    got = set(received)
    return Accounting(
        issued=len(ids),
        not_received=sorted(ids - got),
        not_rolled_out=sorted(i for i in ids if rollouts.get(i, 0) == 0),
        not_observed=sorted(i for i in ids if applied.get(i, 0) == 0),
        rolled_out_twice=sorted(i for i in ids if rollouts.get(i, 0) > 1),
        observed_twice=sorted(i for i in ids if applied.get(i, 0) > 1),
        redelivered=redelivered,
        unknown=len((got | set(rollouts) | set(applied)) - ids),
    )


# -- CPU of the processes (Linux /proc) ----------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int | None) -> list[int]:
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


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


# -- worker processes: the agents -------------------------------------------------------


def worker(nats_url: str, instance: str, runtimes: list[str], out: Any, stop: Any, starting: int) -> None:
    uvloop.run(_agents(nats_url, instance, runtimes, out, stop, starting))


async def _agents(nats_url: str, instance: str, runtimes: list[str], out: Any, stop: Any, starting: int) -> None:
    import structlog

    from eventstore import bus, natsauth
    from services.agent.agent import Agent, AgentSettings
    from services.agent.runtimes.memory import MemoryRuntime

    # Info lines per agent (ready, converged) are thousands of lines at 1,000 agents.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))

    first: dict[str, tuple[float, float]] = {}  # intent id → (committed, received), epoch seconds
    redelivered = 0

    def on_intent(intent: Any, recorded_at: datetime) -> None:
        nonlocal redelivered
        if intent.intent_id in first:
            redelivered += 1
        else:
            first[intent.intent_id] = (recorded_at.timestamp(), time.time())

    connections = []
    agents: list[Agent] = []
    memories: list[MemoryRuntime] = []
    gate = asyncio.Semaphore(starting)

    async def start(name: str) -> None:
        async with gate:
            nc = await bus.connect(nats_url, name=f"bench-agent:{name}", inbox_prefix=natsauth.agent_inbox_prefix(instance, name))
            connections.append(nc)
            settings = AgentSettings(instance=instance, runtime=name)
            memory = MemoryRuntime(name=name)
            agent = Agent(nc=nc, settings=settings, runtime=memory, on_intent=on_intent)
            memories.append(memory)
            agents.append(agent)
            await agent.start()
            await agent.ready.wait()
            out.put(("ready", 1))

    await asyncio.gather(*(start(name) for name in runtimes))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for agent in agents:
        await agent.stop()
        assert agent.runtime is not None
        await agent.runtime.close()
    for nc in connections:
        await nc.close()
    rollouts: Counter[str] = Counter()
    for memory in memories:
        rollouts.update(memory.rollouts)
    out.put(("done", {"first": first, "redelivered": redelivered, "rollouts": dict(rollouts)}))


# -- the control plane and the measurement ---------------------------------------------


@dataclass
class Point:
    agents: int
    intents: int
    intent_ms: list[float]
    roundtrip_ms: list[float]
    accounting: Accounting
    issue_rate: float
    """Intents per second actually issued."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per component while intents were issued and carried out."""
    wall: float = 0.0
    startup_s: float = 0.0
    idle_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per component in `idle_s` seconds with every agent up and no intent."""
    idle_s: float = 0.0
    stages: dict[str, list[float]] = field(default_factory=dict)

    def figures(self) -> dict[str, object]:
        """The curve's and RESULT's figures. With no sample at all (every intent lost)
        there is no latency to print, only the loss — and the benchmark fails."""
        figures: dict[str, object] = {}
        if self.intent_ms:
            intent = summarize(self.intent_ms)
            figures |= {"intent_p50_ms": f"{intent.p50:.1f}", "intent_p99_ms": f"{intent.p99:.1f}"}
        if self.roundtrip_ms:
            figures["roundtrip_p99_ms"] = f"{percentile(self.roundtrip_ms, 0.99):.1f}"
        return figures | {"lost": self.accounting.lost, "duplicated": self.accounting.duplicated}


class NotStarted(RuntimeError):
    """The agents did not all start."""


def _drain(out: Any, want: str, count: int, stall: float) -> list[Any]:
    """`count` messages of kind `want` from the workers' queue; fails after `stall`
    seconds without one."""
    got: list[Any] = []
    while len(got) < count:
        try:
            kind, value = out.get(True, stall)
        except queue.Empty:
            raise NotStarted(f"{len(got)} of {count} {want!r} messages, then none for {stall:.0f} s") from None
        if kind != want:
            raise NotStarted(f"expected {want!r} from a worker, got {kind!r}")
        got.append(value)
    return got


async def measure(
    agents: int, processes: int, rounds: int, rate: float, stall: float, starting: int, idle: float
) -> Point:
    from eventstore import bus
    from eventstore.codec import convoy_registry
    from eventstore.embedded import NatsServer, PostgresServer
    from eventstore.postgres import PostgresEventStore, PostgresSettings
    from eventstore.relay import Relay, RelaySettings
    from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
    from services.api.desired import DesiredState
    from services.api.ingest import ObservationIngest
    from services.api.natsauth_sync import NatsAuthSync

    instance = "bench"
    registry = convoy_registry()
    processes = max(1, min(processes, agents))
    with tempfile.TemporaryDirectory(prefix="convoy-bench-agents-") as tmp, NatsServer(
        data_dir=Path(tmp) / "nats"
    ) as nats_server, PostgresServer(data_dir=Path(tmp) / "pg") as pg:
        store = await PostgresEventStore.open(PostgresSettings(dsn=pg.dsn, schema="bench_agents", pool_max=16))
        nc = await bus.connect(nats_server.url, name="bench-plane")
        await bus.ensure_streams(nc.jetstream(), instance)
        names = [runtime_name(i) for i in range(agents)]
        began = time.monotonic()
        gate = asyncio.Semaphore(16)

        async def register(name: str) -> None:
            async with gate:
                config = resources_pb2.Runtime(name=name, kind=resources_pb2.RUNTIME_KIND_EXEC)
                await store.append(f"runtime/{name}", [registry.encode(events_pb2.RuntimeRegistered(runtime=config), actor="bench")])

        await asyncio.gather(*(register(name) for name in names))
        relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=instance))
        ingest = ObservationIngest(nc=nc, store=store, instance=instance)
        desired = DesiredState(nc=nc, store=store, instance=instance)
        sync = NatsAuthSync(store=store, nc=nc, instance=instance)
        async with relay, ingest, desired, sync:
            await sync.wait_synced(timeout=max(60.0, agents / 10))
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            stop = ctx.Event()
            chunks = [names[i::processes] for i in range(processes)]
            procs = [
                ctx.Process(target=worker, args=(nats_server.url, instance, chunk, out, stop, starting)) for chunk in chunks
            ]
            for proc in procs:
                proc.start()
            try:
                try:
                    await asyncio.to_thread(_drain, out, "ready", agents, stall)
                except NotStarted as error:
                    raise NotStarted(f"agents did not start: {error}") from None
                startup = time.monotonic() - began
                print(f"{agents} agents ready in {processes} processes after {startup:.1f} s", flush=True)

                components = {
                    "plane": [os.getpid()],
                    "agents": [p.pid for p in procs if p.pid is not None],
                    "nats-server": process_tree(nats_server.pid),
                    "postgres": process_tree(pg.pid),
                }
                # Where the time goes: when each intent is on the bus (a core subscriber
                # here sees the relay's publish; the agents' consumers get it from the stream).
                on_bus: dict[str, float] = {}

                async def seen(msg: Any) -> None:
                    event = bus.event_from_message(msg.headers, msg.data)
                    on_bus.setdefault(registry.decode(event).message.intent_id, time.time())  # type: ignore[attr-defined]

                watch = await nc.subscribe(f"convoy.{instance}.evt.intent.>", cb=seen)
                idle_before = {name: cpu_seconds(pids) for name, pids in components.items()}
                await asyncio.sleep(idle)
                idle_cpu = {name: cpu_seconds(pids) - idle_before[name] for name, pids in components.items()}
                cpu_before = {name: cpu_seconds(pids) for name, pids in components.items()}
                t0 = time.monotonic()

                issued: list[str] = []
                window = asyncio.Semaphore(max(1, min(16, agents)))
                # At most `agents` - 1 intents are in flight behind any one, so a runtime's
                # intent of round g has committed before its round g+1 starts: generations
                # of one workload commit in order.
                pending: set[asyncio.Task[None]] = set()

                async def issue(name: str, generation: int) -> None:
                    try:
                        spec = convergence_pb2.WorkloadSpec(application="shop", service="web", version=f"v{generation}", replicas=1)
                        message = events_pb2.IntentIssued(
                            intent_id=f"{name}-{generation}",
                            target=convergence_pb2.Target(runtime=name, namespace="prod"),
                            action=convergence_pb2.INTENT_ACTION_APPLY,
                            spec=spec,
                            spec_hash=f"h{generation}",
                            generation=generation,
                        )
                        await store.append(f"intent/{name}/prod/shop/web", [registry.encode(message, actor="bench")])
                    finally:
                        window.release()

                n = 0
                for generation in range(1, rounds + 1):
                    for name in names:
                        delay = t0 + n / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await window.acquire()
                        issued.append(f"{name}-{generation}")
                        task = asyncio.create_task(issue(name, generation))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                        n += 1
                while pending:
                    await asyncio.gather(*list(pending))
                issue_rate = len(issued) / max(time.monotonic() - t0, 1e-9)

                # Wait for the APPLIED observations: until all are in, or none came for `stall` s.
                committed: dict[str, float] = {}
                applied: Counter[str] = Counter()
                applied_at: dict[str, float] = {}
                observed_at: dict[str, float] = {}
                after = 0
                last_progress = time.monotonic()
                want = set(issued)
                while time.monotonic() - last_progress < stall:
                    batch = await store.read_all(after=after, limit=5000, categories=["observation", "intent"])
                    for event in batch:
                        after = event.position
                        message = registry.decode(event).message
                        if isinstance(message, events_pb2.IntentIssued):
                            committed[message.intent_id] = event.recorded_at.timestamp()
                        elif message.observation.kind == convergence_pb2.OBSERVATION_KIND_APPLIED:  # type: ignore[attr-defined]
                            intent_id = message.observation.intent_id  # type: ignore[attr-defined]
                            applied[intent_id] += 1
                            applied_at.setdefault(intent_id, event.recorded_at.timestamp())
                            observed_at.setdefault(intent_id, message.observation.observed_at.ToDatetime(UTC).timestamp())  # type: ignore[attr-defined]
                            last_progress = time.monotonic()
                    if want <= applied_at.keys() and want <= committed.keys():
                        break
                    if not batch:
                        await asyncio.sleep(0.1)
                wall = time.monotonic() - t0
                cpu = {name: cpu_seconds(pids) - cpu_before[name] for name, pids in components.items()}
                await watch.unsubscribe()
            finally:
                stop.set()
                try:
                    reports = await asyncio.to_thread(_drain, out, "done", len(procs), max(stall, 60.0))
                finally:
                    for proc in procs:
                        await asyncio.to_thread(proc.join, 30)
                        if proc.is_alive():
                            proc.kill()
            print(f"ingest recorded {ingest.recorded} observations ({ingest.duplicates} duplicates)", flush=True)
        await nc.close()
        await store.close()

    first: dict[str, tuple[float, float]] = {}
    rollouts: Counter[str] = Counter()
    redelivered = 0
    for report in reports:
        first.update(report["first"])
        rollouts.update(report["rollouts"])
        redelivered += report["redelivered"]
    accounting = account(issued, first, redelivered, rollouts, applied)
    intent_ms = [(got - at) * 1000 for at, got in first.values()]
    roundtrip_ms = [(applied_at[i] - committed[i]) * 1000 for i in issued if i in applied_at and i in committed]

    def stage(start: Mapping[str, float], end: Mapping[str, float]) -> list[float]:
        return [(end[i] - start[i]) * 1000 for i in issued if i in start and i in end]

    received = {i: got for i, (_, got) in first.items()}
    stages = {
        "commit -> on the bus (relay)": stage(committed, on_bus),
        "on the bus -> agent (consumer)": stage(on_bus, received),
        "agent: RECEIVED published, applied": stage(received, observed_at),
        "APPLIED published and ingested": stage(observed_at, applied_at),
    }
    return Point(
        agents=agents,
        intents=len(issued),
        intent_ms=intent_ms,
        roundtrip_ms=roundtrip_ms,
        accounting=accounting,
        issue_rate=issue_rate,
        cpu=cpu,
        wall=wall,
        startup_s=startup,
        idle_cpu=idle_cpu,
        idle_s=idle,
        stages=stages,
    )


def report(point: Point) -> None:
    print(point.accounting.text())
    print(f"issued at {point.issue_rate:.0f} intents/s; {point.wall:.1f} s from the first intent to the last APPLIED")
    if point.intent_ms:
        print(f"intent latency:   {summarize(point.intent_ms).text()}")
    if point.roundtrip_ms:
        print(f"round trip:       {summarize(point.roundtrip_ms).text()}")
    for name, samples in point.stages.items():
        if samples:
            print(f"  {name + ':':45s} {summarize(samples).text()}")
    if point.idle_s > 0:
        idle = sum(point.idle_cpu.values())
        print(
            f"idle ({point.idle_s:.0f} s, {point.agents} agents up, no intent): "
            + ", ".join(f"{name} {value:.2f}" for name, value in point.idle_cpu.items())
            + f" CPU-s; {1e3 * idle / point.idle_s / point.agents:.3f} CPU-ms per agent-second"
        )
    total = sum(point.cpu.values())
    print(
        f"CPU seconds while issuing and carrying out ({point.wall:.1f} s wall x {os.cpu_count()} cores): "
        + ", ".join(f"{name} {value:.1f}" for name, value in point.cpu.items())
        + f"; total {total:.1f}, {1e3 * total / max(point.intents, 1):.2f} CPU-ms per intent; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="worker processes the agents are spread over")
    parser.add_argument("--rounds", type=int, default=3, help="intents per agent")
    parser.add_argument("--rate", type=float, default=100.0, help="intents issued per second (open loop)")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds without progress before giving up")
    parser.add_argument("--starting", type=int, default=8, help="agents starting at once in each worker")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU measured before the intents")
    parser.add_argument("--curve", action="store_true", help="measure at each of --curve-points agents")
    parser.add_argument("--curve-points", default=",".join(map(str, CURVE_POINTS)))
    args = parser.parse_args()

    loads = [int(x) for x in args.curve_points.split(",")] if args.curve else [args.agents]
    points: dict[int, Point] = {}
    failed = False
    for agents in loads:
        # Every curve point does the same work as the default load (rounds x --agents
        # intents at the same rate); only the number of agents sharing it changes.
        rounds = max(1, math.ceil(args.rounds * args.agents / agents)) if args.curve else args.rounds
        try:
            point = uvloop.run(measure(agents, args.processes, rounds, args.rate, args.stall, args.starting, args.idle))
        except NotStarted as error:
            print(f"FAILED at {agents} agents: {error}", flush=True)
            return 1
        report(point)
        points[agents] = point
        if args.curve:
            print(curve_line("agents", ("agents", agents), point.figures()), flush=True)
        failed |= point.accounting.lost > 0 or point.accounting.duplicated > 0 or point.accounting.unknown > 0
    if args.agents not in points:
        point = uvloop.run(measure(args.agents, args.processes, args.rounds, args.rate, args.stall, args.starting, args.idle))
        report(point)
        points[args.agents] = point
        failed |= point.accounting.lost > 0 or point.accounting.duplicated > 0 or point.accounting.unknown > 0
    point = points[args.agents]
    print(
        result_line(
            {"agents": args.agents, **point.figures(), "redelivered": point.accounting.redelivered}
        ),
        flush=True,
    )
    if failed:
        print("FAILED: intents were lost or duplicated (see above)", file=sys.stderr, flush=True)
        return 1
    if not point.intent_ms or not point.roundtrip_ms:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
