"""Agent benchmark: 100 agents (memory runtime) in a few processes, one machine.

Starts an embedded NATS and PostgreSQL, runs the control plane's bus side in this process
(relay, observation ingest, desired-state responder, consumer sync — composed as
`convoy up` composes them), registers one runtime per agent, starts the agents in worker
processes (each agent its own NATS connection, bound to its own durable consumer), then
issues intents — rounds of one intent per runtime, each committed on its own — and
measures, per intent:

- intent latency: from the intent's commit (its `recorded_at`) to its agent receiving it
  (relay NOTIFY wake-up → JetStream → the agent's pull consumer);
- round trip: from the intent's commit to its APPLIED observation being in the store
  (agent → JetStream → ingest → append).

Last line: RESULT agents=100 intent_p50_ms=… intent_p99_ms=… roundtrip_p99_ms=…

    .venv/bin/python bench/agents.py [--agents 100] [--processes 4] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402

RUNTIME = "bench-{:03d}"


def runtime_name(i: int) -> str:
    return RUNTIME.format(i)


# -- worker processes: the agents -------------------------------------------------------


def worker(nats_url: str, instance: str, runtimes: list[str], out: Any, stop: Any) -> None:
    uvloop.run(_agents(nats_url, instance, runtimes, out, stop))


async def _agents(nats_url: str, instance: str, runtimes: list[str], out: Any, stop: Any) -> None:
    from eventstore import bus, natsauth
    from services.agent.agent import Agent, AgentSettings
    from services.agent.runtimes.memory import MemoryRuntime

    received: list[tuple[str, float, float]] = []  # (intent id, committed, received) epoch seconds

    def on_intent(intent: Any, recorded_at: datetime) -> None:
        received.append((intent.intent_id, recorded_at.timestamp(), time.time()))

    connections = []
    agents = []
    for name in runtimes:
        nc = await bus.connect(nats_url, name=f"bench-agent:{name}", inbox_prefix=natsauth.agent_inbox_prefix(instance, name))
        connections.append(nc)
        settings = AgentSettings(instance=instance, runtime=name, heartbeat_interval=5.0, reconcile_interval=30.0)
        agent = Agent(nc=nc, settings=settings, runtime=MemoryRuntime(name=name), on_intent=on_intent)
        await agent.start()
        agents.append(agent)
    for agent in agents:
        await agent.ready.wait()
    out.put(("ready", len(agents)))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for agent in agents:
        await agent.stop()
        assert agent.runtime is not None
        await agent.runtime.close()
    for nc in connections:
        await nc.close()
    out.put(("received", received))


# -- the control plane and the measurement ---------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def main(agents: int, processes: int, rounds: int, pause: float) -> None:
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
    with tempfile.TemporaryDirectory(prefix="convoy-bench-agents-") as tmp, NatsServer(
        data_dir=Path(tmp) / "nats"
    ) as nats_server, PostgresServer(data_dir=Path(tmp) / "pg") as pg:
        store = await PostgresEventStore.open(PostgresSettings(dsn=pg.dsn, schema="bench_agents", pool_max=16))
        nc = await bus.connect(nats_server.url, name="bench-plane")
        await bus.ensure_streams(nc.jetstream(), instance)
        names = [runtime_name(i) for i in range(agents)]
        for name in names:
            config = resources_pb2.Runtime(name=name, kind=resources_pb2.RUNTIME_KIND_EXEC)
            await store.append(f"runtime/{name}", [registry.encode(events_pb2.RuntimeRegistered(runtime=config), actor="bench")])
        relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=instance))
        ingest = ObservationIngest(nc=nc, store=store, instance=instance)
        desired = DesiredState(nc=nc, store=store, instance=instance)
        sync = NatsAuthSync(store=store, nc=nc, instance=instance)
        async with relay, ingest, desired, sync:
            await sync.wait_synced(timeout=60)
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            stop = ctx.Event()
            chunks = [names[i::processes] for i in range(processes)]
            procs = [ctx.Process(target=worker, args=(nats_server.url, instance, chunk, out, stop)) for chunk in chunks]
            for proc in procs:
                proc.start()
            ready = 0
            while ready < agents:
                kind, value = await asyncio.to_thread(out.get, True, 120)
                assert kind == "ready"
                ready += value
            print(f"{agents} agents ready in {processes} processes", flush=True)

            committed: dict[str, float] = {}

            async def issue(name: str, generation: int) -> None:
                spec = convergence_pb2.WorkloadSpec(application="shop", service="web", version=f"v{generation}", replicas=1)
                intent_id = f"{name}-{generation}"
                message = events_pb2.IntentIssued(
                    intent_id=intent_id,
                    target=convergence_pb2.Target(runtime=name, namespace="prod"),
                    action=convergence_pb2.INTENT_ACTION_APPLY,
                    spec=spec,
                    spec_hash=f"h{generation}",
                    generation=generation,
                )
                await store.append(f"intent/{name}/prod/shop/web", [registry.encode(message, actor="bench")])

            for generation in range(1, rounds + 1):
                for name in names:
                    await issue(name, generation)
                    await asyncio.sleep(pause)  # pacing: one intent at a time, as the planner issues them
            total = agents * rounds

            # Wait until every APPLIED observation is in the store.
            applied: dict[str, float] = {}
            deadline = time.monotonic() + 120
            after = 0
            while len(applied) < total and time.monotonic() < deadline:
                batch = await store.read_all(after=after, limit=5000, categories=["observation", "intent"])
                for event in batch:
                    after = event.position
                    message = registry.decode(event).message
                    if isinstance(message, events_pb2.IntentIssued):
                        committed[message.intent_id] = event.recorded_at.timestamp()
                    elif message.observation.kind == convergence_pb2.OBSERVATION_KIND_APPLIED:  # type: ignore[attr-defined]
                        applied[message.observation.intent_id] = event.recorded_at.timestamp()  # type: ignore[attr-defined]
                if not batch:
                    await asyncio.sleep(0.1)
            stop.set()
            received: list[tuple[str, float, float]] = []
            for _ in procs:
                kind, value = await asyncio.to_thread(out.get, True, 120)
                assert kind == "received"
                received += value
            for proc in procs:
                await asyncio.to_thread(proc.join, 30)
            print(f"ingest recorded {ingest.recorded} observations ({ingest.duplicates} duplicates)", flush=True)
        await nc.close()
        await store.close()

    intent_ms = [(got - at) * 1000 for _, at, got in received]
    roundtrip_ms = [(applied[i] - committed[i]) * 1000 for i in applied if i in committed]
    print(f"intents issued {total}, received {len(received)}, APPLIED in store {len(applied)}")
    print(
        f"intent latency ms: p50 {statistics.median(intent_ms):.1f} p99 {percentile(intent_ms, 0.99):.1f} "
        f"max {max(intent_ms):.1f}"
    )
    print(
        f"round trip ms:     p50 {statistics.median(roundtrip_ms):.1f} p99 {percentile(roundtrip_ms, 0.99):.1f} "
        f"max {max(roundtrip_ms):.1f}"
    )
    print(
        f"RESULT agents={agents} intent_p50_ms={statistics.median(intent_ms):.1f} "
        f"intent_p99_ms={percentile(intent_ms, 0.99):.1f} roundtrip_p99_ms={percentile(roundtrip_ms, 0.99):.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.002, help="seconds between intents")
    args = parser.parse_args()
    uvloop.run(main(args.agents, args.processes, args.rounds, args.pause))
