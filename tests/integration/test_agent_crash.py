"""Faults lose no event and duplicate no effect: the agent, killed with SIGKILL at random
moments while intents stream in, restarted each time, against the real control plane
(relay, observation ingest, desired state, consumers) on PostgreSQL and NATS.

The agent runs as `convoy agent` in a subprocess with the exec runtime. Its apply, fetch
and delete commands are one small script (`COMMANDS`) that appends one line per apply or
delete to an effects file under an exclusive lock, and whose fetch reads that file back:
the file is both the record of every effect and the live state (each workload's last
line), so the test counts effects exactly and sees what runs without asking the agent.

Two windows these tests found, and how the product closes them:

- An agent killed while an apply command runs, or after it exited but before the exec
  runtime recorded it, used to run the apply again on restart. Now the apply is written
  ahead (services/agent/runtimes/exec.py, `save_pending`), a restart asks fetch before
  applying the same generation again, and commands die with their agent (PDEATHSIG in
  services/agent/runtimes/processes.py), so no orphan races the restarted agent.
- A DELETE taken from the bus by an agent killed before its delete ran used to wait for
  JetStream's redelivery (AGENT_ACK_WAIT, 60 s). Now the desired-state snapshot carries a
  deleted target's DELETE (services/api/desired.py) and the restarted agent carries it
  out where something is live (services/agent/agent.py, `converge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import convergence_pb2, resources_pb2
from tests.conftest import eventually
from tests.integration.test_agent_support import Plane, control_plane

pytestmark = pytest.mark.fault  # `make stress` runs these again and again

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "rt-crash"
SERVICES = [f"w{i}" for i in range(6)]
GENERATIONS = 4
DELETED = "w5"
"""Its last generation deletes it."""
KILLS = 12
BACKLOG = 3
"""Intents issued ahead of what runs: the agent always has work when it is killed."""

APPLIED = convergence_pb2.OBSERVATION_KIND_APPLIED
DELETED_KIND = convergence_pb2.OBSERVATION_KIND_DELETED

COMMANDS = r'''
"""apply / fetch / delete of the crash test's exec runtime. argv: EFFECTS CRASH_AFTER_APPLY CRASH_BEFORE_DELETE."""
import fcntl, json, os, signal, sys, time

effects, action, service = sys.argv[1], os.environ["CONVOY_ACTION"], os.environ["CONVOY_SERVICE"]
agent = os.getppid()  # the agent that ran this command (1: it was killed before this line)


def live(text):
    last = None
    for line in text.splitlines():
        record = json.loads(line)
        if record["service"] == service:
            last = record
    return last if last is not None and last["action"] == "apply" else None


def claim(trigger):
    """The one command that unlinks the trigger file kills its agent."""
    try:
        os.unlink(trigger)
    except FileNotFoundError:
        return False
    os.kill(agent, signal.SIGKILL)
    return True


if action != "fetch":
    with open(effects + ".begun", "a") as begun:  # lets the test kill the agent inside a command
        begun.write(f"{action} {service}\n")
if action == "delete" and len(sys.argv) > 3 and claim(sys.argv[3]):
    sys.exit(1)  # the agent died before its delete did anything
with open(effects, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_SH if action == "fetch" else fcntl.LOCK_EX)
    f.seek(0)
    current = live(f.read())
    if action == "fetch":
        if current is None:
            print(json.dumps({"phase": "absent"}))
        else:
            print(json.dumps({"phase": "healthy", **{k: current[k] for k in ("generation", "spec_hash", "intent_id")}}))
        sys.exit(0)
    record = {
        "action": action,
        "service": service,
        "generation": int(os.environ.get("CONVOY_GENERATION") or 0),
        "spec_hash": os.environ.get("CONVOY_SPEC_HASH", ""),
        "intent_id": os.environ.get("CONVOY_INTENT_ID", ""),
        "repair": os.environ.get("CONVOY_REPAIR") == "1",
        "was": current["generation"] if current is not None else None,
        "agent": agent,
        "at": time.time(),
    }
    f.write(json.dumps(record) + "\n")  # one append under the lock: the effect and the live state at once
    f.flush()
    os.fsync(f.fileno())

# The effect is done; the agent dies now if asked: after the runtime applied, before the
# agent recorded it.
if action == "apply" and len(sys.argv) > 2:
    claim(sys.argv[2])
print(f"{action} {service} generation {record['generation']}")
'''

class ExecWorld:
    """The exec runtime's commands and the effects file they keep."""

    def __init__(self, root: Path) -> None:
        self.script = root / "commands.py"
        self.script.write_text(COMMANDS)
        self.effects = root / "effects.jsonl"
        self.effects.touch()
        self.begun = root / "effects.jsonl.begun"
        self.begun.touch()
        self.crash_after_apply = root / "crash-after-apply"
        self.crash_before_delete = root / "crash-before-delete"

    def config(self) -> resources_pb2.ExecRuntimeConfig:
        command = [sys.executable, str(self.script), *map(str, (self.effects, self.crash_after_apply, self.crash_before_delete))]
        return resources_pb2.ExecRuntimeConfig(apply=command, fetch=command, delete=command)

    def records(self) -> list[dict[str, Any]]:
        # Under the commands' lock: an unlocked read can see an append half copied.
        with self.effects.open() as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            return [json.loads(line) for line in f.read().splitlines()]

    def applies_begun(self) -> int:
        return sum(1 for line in self.begun.read_text().splitlines() if line.startswith("apply "))

    def live(self) -> dict[str, int]:
        """Each workload's live generation (absent ones left out)."""
        state: dict[str, int] = {}
        for record in self.records():
            if record["action"] == "apply":
                state[record["service"]] = record["generation"]
            else:
                state.pop(record["service"], None)
        return state

    def applies(self) -> list[tuple[str, int]]:
        return [(r["service"], r["generation"]) for r in self.records() if r["action"] == "apply"]


class Agents:
    """`convoy agent` subprocesses of one runtime, one at a time, sharing a state folder."""

    def __init__(self, *, nats_url: str, instance: str, root: Path) -> None:
        self.nats_url = nats_url
        self.instance = instance
        self.root = root
        self.started = 0
        self.current: asyncio.subprocess.Process | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
        self.env["PYTHONPATH"] = str(ROOT)

    async def start(self) -> asyncio.subprocess.Process:
        assert self.current is None or self.current.returncode is not None
        self.started += 1
        log = self.root / f"agent-{self.started}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "agent", "--runtime", RUNTIME, "--nats-url", self.nats_url,
                "--instance", self.instance, "--state-dir", str(self.root / "state"), "--health", "",
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self.env, cwd=ROOT,
            )
        self.current = proc
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            while b"started" not in (line := await proc.stdout.readline()):
                assert line, f"the agent exited before it started:\n{log.read_text()[-3000:]}"
        return proc

    async def kill(self) -> float:
        """SIGKILL the running agent; when it was killed (time.time())."""
        proc = self.current
        at = time.time()
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        return at

    async def stop(self) -> int:
        """SIGTERM: a clean stop; its exit code."""
        assert self.current is not None
        self.current.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.current.wait(), 30)


@pytest.fixture
async def plane(pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Plane]:
    async with control_plane(pg_store, embedded_nats.url, subject_prefix) as made:
        yield made


@pytest.fixture
async def agents(plane: Plane, embedded_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Agents]:
    """The agent processes die with the test."""
    made = Agents(nats_url=embedded_nats.url, instance=plane.instance, root=tmp_path)
    try:
        yield made
    finally:
        await made.kill()


@dataclass(frozen=True)
class Step:
    service: str
    generation: int
    delete: bool = False


def intent_stream(rng: random.Random) -> list[Step]:
    """Every workload's generations in order, the workloads interleaved at random."""
    queues = {s: [Step(s, g, delete=s == DELETED and g == GENERATIONS) for g in range(1, GENERATIONS + 1)] for s in SERVICES}
    steps = []
    while queues:
        service = rng.choice(sorted(queues))
        steps.append(queues[service].pop(0))
        if not queues[service]:
            del queues[service]
    return steps


async def issue(plane: Plane, step: Step) -> None:
    await plane.intent(RUNTIME, service=step.service, generation=step.generation, version=f"v{step.generation}", delete=step.delete)


async def observed(plane: Plane) -> list[convergence_pb2.Observation]:
    return [o for s in SERVICES for o in await plane.observations(RUNTIME, service=s)]


def duplicates(world: ExecWorld, killed: dict[int, float]) -> str:
    """'' when no (workload, generation) was applied twice; else each repeated apply with
    the agent that ran it and when, relative to that agent's kill, its effect was recorded
    (agent 1: the command's agent was dead before the command got going)."""
    repeated = {pair: n for pair, n in Counter(world.applies()).items() if n > 1}
    if not repeated:
        return ""
    evidence = [
        {**r, "after_its_agent_was_killed": round(r["at"] - killed[r["agent"]], 3) if r["agent"] in killed else None}
        for r in world.records()
        if r["action"] == "apply" and (r["service"], r["generation"]) in repeated
    ]
    return f"applied more than once: {repeated}; the effects: {evidence}"


async def test_killing_the_agent_at_random_moments_loses_and_duplicates_nothing(
    plane: Plane, agents: Agents, tmp_path: Path
) -> None:
    """6 workloads x 4 generations (w5's last one deletes it), issued a few ahead of what
    runs; the agent is killed 12 times, every other time while an apply command runs,
    otherwise anywhere, and restarted. Then: each workload at its last generation, no
    (workload, generation) applied twice, none older after newer, the store holding the
    APPLIED / DELETED of every last generation and no observation id twice."""
    world = ExecWorld(tmp_path)
    await plane.register(RUNTIME, exec_config=world.config())
    rng = random.Random(20261127)
    steps = intent_stream(rng)
    final = {s.service: s for s in steps}
    issued: dict[str, Step] = {}
    count = 0

    def behind() -> int:
        """Workloads whose last issued intent does not run yet."""
        live = world.live()
        return sum(live.get(s) != (None if step.delete else step.generation) for s, step in issued.items())

    async def issuer() -> None:
        nonlocal count
        for step in steps:
            await eventually(lambda: behind() < BACKLOG, timeout=60, message="the agent works through the backlog")
            await issue(plane, step)
            issued[step.service] = step
            count += 1

    kills: list[dict[str, Any]] = []
    stream = asyncio.create_task(issuer(), name="crash-test-issuer")
    try:
        for n in range(KILLS):
            before = len(world.records())
            proc = await agents.start()
            # Every kill is placed by observed progress, never by a sleep: every other one
            # inside an apply command (the riskiest moment) — as it begins, or once its
            # effect is written — the others after the agent did one to three more effects.
            inside = n % 2 == 0 and not stream.done()
            if inside:
                begun, effects = world.applies_begun(), len(world.records())
                await eventually(lambda: world.applies_begun() > begun, timeout=30, message="an apply begins")
                if rng.random() < 0.5:
                    await eventually(lambda: len(world.records()) > effects, timeout=30, message="its effect is written")
            else:
                more = before + rng.randint(1, 3)
                await eventually(
                    lambda: len(world.records()) >= more or (stream.done() and not behind()),
                    timeout=30, message="the agent does more work",
                )
            pending = behind()
            at = await agents.kill()
            kills.append({"pid": proc.pid, "at": at, "inside": inside, "grew": len(world.records()) - before, "behind": pending,
                          "issued": count})
        await agents.start()  # left alone to finish the stream
        await asyncio.wait_for(stream, 60)
    finally:
        if not stream.done():
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, AssertionError):
                await stream

    wanted = {s: step.generation for s, step in final.items() if not step.delete}
    await eventually(
        lambda: {s: g for s, g in world.live().items() if s in wanted} == wanted,
        timeout=30,
        message=f"every workload at its last generation {wanted}",
    )
    await eventually(lambda: DELETED not in world.live(), timeout=10, message=f"{DELETED} deleted")
    last_kinds = {s: DELETED_KIND if step.delete else APPLIED for s, step in final.items()}

    missing: list[tuple[str, int, int]] = []

    async def reported() -> bool:
        seen = {(o.service, o.generation, o.kind) for o in await observed(plane)}
        missing[:] = [(s, final[s].generation, kind) for s, kind in last_kinds.items() if (s, final[s].generation, kind) not in seen]
        return not missing

    try:
        await eventually(reported, timeout=30, message="APPLIED (DELETED) of every last generation in the store")
    except AssertionError as error:
        raise AssertionError(f"{error}; missing (service, generation, kind): {missing}") from None
    assert await agents.stop() == 0

    records = world.records()
    killed = {k["pid"]: k["at"] for k in kills}
    mid_stream = [k for k in kills if k["grew"] and k["behind"]]
    print(
        f"\nkills: {len(kills)} ({sum(k['inside'] for k in kills)} inside a command), mid-stream: {len(mid_stream)}, "
        f"effects: {len(records)}, of commands whose agent was dead before they recorded it: "
        f"{sum(1 for r in records if r['agent'] == 1 or (r['agent'] in killed and r['at'] > killed[r['agent']]))}, "
        f"duplicate applies: {len(world.applies()) - len(set(world.applies()))}, "
        f"observations the ingest absorbed as duplicates: {plane.ingest.duplicates}, "
        f"intents issued at the last kill: {kills[-1]['issued']} of {len(steps)}"
    )
    assert len(kills) >= 8 and len(mid_stream) >= 5, kills

    applies = world.applies()
    for service, step in final.items():
        mine = [g for s, g in applies if s == service]
        assert mine == sorted(mine), f"{service}: an older generation applied after a newer one: {mine}"
        if not step.delete:
            assert step.generation in mine
    deletes = [r for r in records if r["action"] == "delete"]
    # Exactly one delete removed a live w5 — at whatever generation was live: intents a
    # killed agent pulled are superseded by the DELETE the restarted agent converges to.
    removed = [(r["service"], r["was"]) for r in deletes if r["was"] is not None]
    assert len(removed) == 1 and removed[0][0] == DELETED and 1 <= removed[0][1] <= GENERATIONS - 1, removed
    last_apply = max(i for i, r in enumerate(records) if r["service"] == DELETED and r["action"] == "apply")
    assert all(records.index(r) > last_apply for r in deletes), "a deleted workload came back"

    ids = Counter(o.observation_id for o in await observed(plane))
    assert ids.most_common(1)[0][1] == 1, "an observation id recorded twice"
    assert not (found := duplicates(world, killed)), found


async def test_an_agent_killed_after_its_runtime_applied_does_not_apply_again(
    plane: Plane, agents: Agents, tmp_path: Path
) -> None:
    """The narrowest window, hit on purpose: the apply command records its effect, then
    SIGKILLs its agent before the agent saved or reported anything."""
    world = ExecWorld(tmp_path)
    await plane.register(RUNTIME, exec_config=world.config())
    world.crash_after_apply.touch()
    proc = await agents.start()
    await issue(plane, Step("w0", 1))
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    killed = {proc.pid: time.time()}
    assert world.applies() == [("w0", 1)] and not world.crash_after_apply.exists()

    await agents.start()

    async def reported() -> bool:
        return any((o.generation, o.kind) == (1, APPLIED) for o in await plane.observations(RUNTIME, service="w0"))

    await eventually(reported, timeout=30, message="APPLIED of w0 generation 1 in the store")
    assert await agents.stop() == 0
    assert world.live() == {"w0": 1}
    assert not (found := duplicates(world, killed)), found


async def test_a_delete_interrupted_by_a_crash_is_carried_out_after_the_restart(
    plane: Plane, agents: Agents, tmp_path: Path
) -> None:
    """The agent took the delete intent from the bus and dies as its delete command
    starts, before anything was deleted: the restarted agent must delete the workload."""
    world = ExecWorld(tmp_path)
    await plane.register(RUNTIME, exec_config=world.config())
    proc = await agents.start()
    await issue(plane, Step(DELETED, 1))

    async def applied() -> bool:
        return any((o.generation, o.kind) == (1, APPLIED) for o in await plane.observations(RUNTIME, service=DELETED))

    await eventually(applied, timeout=30, message=f"APPLIED of {DELETED} generation 1 in the store")
    world.crash_before_delete.touch()
    await issue(plane, Step(DELETED, 2, delete=True))
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    assert world.live() == {DELETED: 1} and not world.crash_before_delete.exists()

    await agents.start()
    # Within seconds, not after JetStream's 60 s redelivery of the intent the dead agent took.
    await eventually(lambda: world.live() == {}, timeout=10, message=f"{DELETED} deleted")

    async def reported() -> bool:
        return any((o.generation, o.kind) == (2, DELETED_KIND) for o in await plane.observations(RUNTIME, service=DELETED))

    await eventually(reported, timeout=30, message=f"DELETED of {DELETED} generation 2 in the store")
    assert await agents.stop() == 0
    assert [r["action"] for r in world.records()] == ["apply", "delete"]
