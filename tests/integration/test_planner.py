"""The planner process against a real PostgreSQL store: it follows the log, commits its
decisions with its checkpoint, fires timers from an injected clock, survives being
killed at random points without losing or duplicating a decision, and its record equals
what replaying the log produces."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.message import Message

from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore
from eventstore.types import RecordedEvent
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.planner.clock import FakeClock
from services.planner.engine import INPUT_CATEGORIES, PLANNER_ACTOR, Input, Output, plan
from services.planner.model import PlannerState, status_name
from services.planner.replay import replay_check
from services.planner.runner import Planner, group, output_events, to_input
from services.planner.versions import CURRENT, Engine, history
from tests.conftest import eventually
from tests.unit.planner.world import channel, faulty_engine, seconds

REGISTRY = convoy_registry()
ROOT = Path(__file__).resolve().parents[2]


def stream_of(message: Message) -> str:
    if isinstance(message, E.RuntimeRegistered):
        return f"runtime/{message.runtime.name}"
    if isinstance(message, E.ApplicationCreated):
        return f"app/{message.application.name}"
    if isinstance(message, E.ServiceConfigured):
        return f"service/{message.service.application}/{message.service.name}"
    if isinstance(message, E.ProtectionConfigured):
        return f"protection/{message.protection.name}"
    if isinstance(message, E.ReleaseCreated):
        return f"release/{message.release.application}/{message.release.service}"
    if isinstance(message, E.ApprovalGranted):
        return f"release/{message.application}/{message.service}"
    if isinstance(message, E.ObservationRecorded):
        o = message.observation
        return f"observation/{o.runtime}/{o.namespace}/{o.application}/{o.service}"
    raise AssertionError(f"no stream for {type(message).__name__}")


async def record(store: PostgresEventStore, message: Message, *, actor: str = "alice", event_id: uuid.UUID | None = None) -> None:
    await store.append(stream_of(message), [REGISTRY.encode(message, actor=actor, event_id=event_id)])


def service(name: str) -> R.Service:
    return R.Service(application="fleet", name=name, replicas=1, programs=[R.Program(name=name, image=f"example/{name}:1")])


def declarations(runtimes: dict[str, list[str]], services: list[str], **channel_options: dict) -> list[Message]:
    messages: list[Message] = [E.RuntimeRegistered(runtime=R.Runtime(name=r, kind=R.RUNTIME_KIND_EXEC))
                               for names in runtimes.values() for r in names]
    previous = ""
    channels = []
    for name, bound in runtimes.items():
        channels.append(channel(name, *bound, stable=previous, **channel_options.get(name, {})))
        previous = name
    messages.append(E.ApplicationCreated(application=R.Application(name="fleet", release_channels=channels)))
    messages += [E.ServiceConfigured(service=service(s), created=True) for s in services]
    return messages


def observation(intent: E.IntentIssued, kind: int, at: datetime) -> E.ObservationRecorded:
    obs = C.Observation(
        observation_id=f"obs-{intent.intent_id}-{kind}", runtime=intent.target.runtime,
        namespace=intent.target.namespace, application=intent.spec.application, service=intent.spec.service,
        channel=intent.spec.channel, intent_id=intent.intent_id, generation=intent.generation, kind=kind,  # type: ignore[arg-type]
    )
    obs.observed_at.FromDatetime(at)
    return E.ObservationRecorded(observation=obs)


async def simulated_agents(store: PostgresEventStore, *, after: int = 0, fail: frozenset[str] = frozenset()) -> None:
    """Agents that apply every intent at once: applied, then healthy — or crash-looping
    for the services named in `fail` (rollbacks of those still succeed)."""
    async for recorded in store.tail(after=after, categories=["intent"]):
        message = REGISTRY.decode(recorded).message
        if not isinstance(message, E.IntentIssued) or message.action != C.INTENT_ACTION_APPLY:
            continue
        now = datetime.now(UTC)
        bad = message.spec.service in fail and not message.rollback
        for kind in (C.OBSERVATION_KIND_APPLIED, C.OBSERVATION_KIND_FAILED if bad else C.OBSERVATION_KIND_HEALTHY):
            obs = observation(message, kind, now)
            if kind == C.OBSERVATION_KIND_FAILED:
                obs.observation.reason, obs.observation.message = "crash_loop", "back-off restarting failed container"
            await record(store, obs, actor=f"agent:{message.target.runtime}",
                         event_id=uuid.uuid5(uuid.NAMESPACE_URL, obs.observation.observation_id))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def statuses(store: PostgresEventStore) -> dict[tuple[str, str], str]:
    """Latest channel-level status per (service, channel), from the record."""
    found: dict[tuple[str, str], str] = {}
    for recorded in await store.read_all(categories=["convergence"], limit=100_000):
        message = REGISTRY.decode(recorded).message
        if isinstance(message, E.InstanceStatusChanged) and not message.target.runtime:
            found[(message.service, message.channel)] = status_name(message.new_status)
    return found


async def test_the_planner_rolls_a_release_through_channels_with_approval_and_soak(pg_store: PostgresEventStore) -> None:
    clock = FakeClock(datetime.now(UTC))
    probe = R.Protection(name="soak", agent_health=R.HealthCheck())
    await record(pg_store, E.ProtectionConfigured(protection=probe))
    soak = R.ProtectionAttachment(protection="soak", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                  failure_behavior=R.FAILURE_BEHAVIOR_FAIL, duration=seconds(300))
    for message in declarations({"staging": ["s1"], "prod": ["p1", "p2"]}, ["web"],
                                prod={"approval": 1, "protections": [soak]}):
        await record(pg_store, message)
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        async with Planner(store=pg_store, registry=REGISTRY, clock=clock) as planner:
            await record(pg_store, E.ReleaseCreated(release=R.Release(
                id="rel-1", application="fleet", service="web", version="v1", config=service("web"))))
            await eventually(lambda: _is(pg_store, {("web", "staging"): "CONVERGED", ("web", "prod"): "WAITING_APPROVAL"}),
                             message="staging converged, prod waiting for approval")

            await record(pg_store, E.ApprovalGranted(release_id="rel-1", application="fleet", service="web",
                                                     channel="prod", approval="signoff", approver="bob"), actor="bob")
            await eventually(lambda: _is(pg_store, {("web", "prod"): "VERIFYING"}), message="prod soaking")
            soak_timer = next(t for t in planner.state.timers.values() if t.purpose == "soak")

            clock.set(soak_timer.fire_at)  # time moves only when the test says so
            await eventually(lambda: _is(pg_store, {("web", "prod"): "CONVERGED"}), message="prod converged after the soak")
            assert planner.stats.timers_fired >= 1
            await eventually(lambda: _checkpoint_at_head(pg_store), message="checkpoint caught up")
    finally:
        await stop(agents)

    report = await replay_check(pg_store, REGISTRY)
    assert report.ok, report.differences
    assert report.outputs > 10


async def test_a_failed_release_is_rolled_back_in_staging_and_never_reaches_prod(pg_store: PostgresEventStore) -> None:
    for message in declarations({"staging": ["s1", "s2"], "prod": ["p1"]}, ["api"]):
        await record(pg_store, message)
    async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))):
        agents = asyncio.create_task(simulated_agents(pg_store))
        await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-1", application="fleet", service="api", version="v1", config=service("api"))))
        await eventually(lambda: _is(pg_store, {("api", "prod"): "CONVERGED"}), message="v1 converged")
        await stop(agents)

        agents = asyncio.create_task(simulated_agents(pg_store, after=await pg_store.head(), fail=frozenset({"api"})))
        try:
            await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-2", application="fleet", service="api", version="v2", config=service("api"))))
            await eventually(lambda: _is(pg_store, {("api", "staging"): "ROLLED_BACK"}), message="v2 rolled back in staging")
        finally:
            await stop(agents)
    assert (await statuses(pg_store))[("api", "prod")] == "FAILED"  # v2 can never be stable in staging
    assert (await replay_check(pg_store, REGISTRY)).ok


async def _is(store: PostgresEventStore, wanted: dict[tuple[str, str], str]) -> bool:
    current = await statuses(store)
    return all(current.get(k) == v for k, v in wanted.items())


async def _checkpoint_at_head(store: PostgresEventStore) -> bool:
    inputs = await store.read_all(categories=list(INPUT_CATEGORIES), limit=100_000)
    return bool(inputs) and await store.checkpoint("planner") == inputs[-1].position


# -- exactly once under crashes ---------------------------------------------------------


def fleet_inputs(services: int, runtimes: dict[str, list[str]]) -> list[tuple[Message, str]]:
    """Every input of a fleet release, agents' reports included, in an order a real run
    could record them: computed once with the pure planner and instant agents."""
    names = [f"svc{i:02d}" for i in range(services)]
    inputs: list[tuple[Message, str]] = [(m, "alice") for m in declarations(runtimes, names)]
    inputs += [(E.ReleaseCreated(release=R.Release(id=f"rel-{n}", application="fleet", service=n, version="v1",
                                                   config=service(n))), "alice") for n in names]
    state = PlannerState()
    queue = list(inputs)
    ordered: list[tuple[Message, str]] = []
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    while queue:
        message, actor = queue.pop(0)
        ordered.append((message, actor))
        _, out = plan(state, Input(message, len(ordered), uuid.uuid4(), actor, at))
        for item in out:
            m = item.message
            if isinstance(m, E.IntentIssued) and m.action == C.INTENT_ACTION_APPLY:
                queue.append((observation(m, C.OBSERVATION_KIND_HEALTHY, at), f"agent:{m.target.runtime}"))
    return ordered


PLANNER_PROCESS = """
import asyncio, os, signal, sys
from collections import Counter
from datetime import UTC, datetime
from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore, PostgresSettings
from services.planner.clock import FakeClock
from services.planner.runner import Planner, PlannerSettings

# argv: DSN SCHEMA MAX_INPUTS_PER_COMMIT DIE_AT PHASE — with DIE_AT > 0 the process
# SIGKILLs itself inside its DIE_AT-th store transaction, at PHASE ("locking": the lock
# held, nothing written; "committing": written, not committed): a fault placed by the
# planner's own progress, whatever the machine's speed.
die_at, phase = int(sys.argv[4]), sys.argv[5]
seen = Counter()

async def fault(at):
    seen[at] += 1
    if die_at and at == phase and seen[at] == die_at:
        os.kill(os.getpid(), signal.SIGKILL)

async def main():
    store = await PostgresEventStore.open(
        PostgresSettings(dsn=sys.argv[1], schema=sys.argv[2], pool_max=2), fault_hook=fault)
    settings = PlannerSettings(max_inputs_per_commit=int(sys.argv[3]), read_batch=50)
    async with Planner(store=store, registry=convoy_registry(), clock=FakeClock(datetime.now(UTC)), settings=settings) as p:
        await p.ready.wait()
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.fault
async def test_killing_the_planner_at_random_points_loses_and_duplicates_nothing(
    pg_store: PostgresEventStore, database_url: str
) -> None:
    runtimes = {"staging": ["s1", "s2"], "canary": ["c1", "c2"], "prod": [f"p{i}" for i in range(6)]}
    inputs = fleet_inputs(30, runtimes)
    for i, (message, actor) in enumerate(inputs):
        await record(pg_store, message, actor=actor, event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"crash-input-{i}"))
    stored = await pg_store.read_all(limit=100_000)
    last_input = stored[-1].position

    # The clean run: the same stored inputs folded once, in process.
    state = PlannerState()
    expected: list[tuple[str, uuid.UUID, str, bytes]] = []
    for recorded in stored:
        item = to_input(REGISTRY, recorded)
        assert item is not None
        _, outs = plan(state, item)
        expected += [(s, e.event_id, e.type, e.data) for s, e in output_events(REGISTRY, item, outs, recorded.correlation_id)]
    assert sum(1 for e in expected if e[2] == "convoy.v1.IntentIssued") == 30 * 10

    rng = random.Random(20261126)
    kills = 0
    killed_mid_release = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    while await pg_store.checkpoint("planner") < last_input:
        # Each kill is placed by progress: every third from outside once the checkpoint
        # moved (anywhere in the planner's work: reading, planning, between commits),
        # the others by the planner itself inside a store transaction.
        how = ("outside", "locking", "committing")[kills % 3] if kills < 25 else "never"
        die_at = rng.randint(1, 3) if how in ("locking", "committing") else 0
        per_commit = 1 if how == "outside" else rng.choice([1, 2, 5, 11])  # outside: little done before the kill lands
        before = await pg_store.checkpoint("planner")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PLANNER_PROCESS, database_url, pg_store.schema, str(per_commit),
            str(die_at), how, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
        )
        assert proc.stdout is not None
        while (line := await asyncio.wait_for(proc.stdout.readline(), 60)).strip() != b"ready":
            if not line:
                break  # killed itself before it was ready (in its first transactions)
        if how == "outside":
            await eventually(lambda: _checkpoint_moved(pg_store, before), timeout=60, message="the planner made progress")
            proc.send_signal(signal.SIGKILL)
        elif how == "never":
            await eventually(lambda: _checkpoint_is(pg_store, last_input), timeout=60, message="the planner finished")
            proc.send_signal(signal.SIGTERM)
        else:
            await eventually(lambda: _exited_or_done(proc, pg_store, last_input), timeout=60, message="the planner killed itself")
            if proc.returncode is None:  # it finished before its kill point: nothing left to kill it in
                proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
        if code == -signal.SIGKILL:
            kills += 1
            killed_mid_release.append(0 < await pg_store.checkpoint("planner") < last_input)

    recorded_outputs = [e for e in await pg_store.read_all(after=0, limit=1_000_000, categories=["intent", "convergence"])
                        if e.actor == PLANNER_ACTOR]
    print(f"\nkills: {kills}, mid-release: {sum(killed_mid_release)}, inputs: {len(inputs)}")
    assert kills == 25 and all(killed_mid_release), killed_mid_release  # every kill landed mid-release
    assert Counter(e.event_id for e in recorded_outputs).most_common(1)[0][1] == 1
    assert sorted((e.stream_id, e.event_id, e.type, e.data) for e in recorded_outputs) == sorted(expected)
    for stream in {s for s, *_ in expected}:  # within each stream, the clean run's order
        assert [e.event_id for e in recorded_outputs if e.stream_id == stream] == [i for s, i, *_ in expected if s == stream]
    intents = [REGISTRY.decode(e).message for e in recorded_outputs if e.type == "convoy.v1.IntentIssued"]
    assert len({(i.target.runtime, i.spec.service, i.generation) for i in intents}) == len(intents) == 300
    report = await replay_check(pg_store, REGISTRY)
    assert report.ok, report.differences[:5]


async def _checkpoint_is(store: PostgresEventStore, position: int) -> bool:
    return await store.checkpoint("planner") >= position


async def _checkpoint_moved(store: PostgresEventStore, past: int) -> bool:
    return await store.checkpoint("planner") > past


async def _exited_or_done(proc: asyncio.subprocess.Process, store: PostgresEventStore, position: int) -> bool:
    return proc.returncode is not None or await _checkpoint_is(store, position)


async def test_replay_check_reports_a_tampered_record_event_by_event(pg_store: PostgresEventStore) -> None:
    for message in declarations({"staging": ["s1"]}, ["web"]):
        await record(pg_store, message)
    async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))):
        await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-1", application="fleet", service="web", version="v1", config=service("web"))))
        await eventually(lambda: _is(pg_store, {("web", "staging"): "DEPLOYING"}), message="deploying")
        await eventually(lambda: _checkpoint_at_head(pg_store), message="checkpoint caught up")
    assert (await replay_check(pg_store, REGISTRY)).ok

    forged = E.IntentIssued(intent_id="int-forged", target=C.Target(runtime="s1", namespace="x"), generation=9,
                            spec=C.WorkloadSpec(application="fleet", service="web"))
    await pg_store.append("intent/s1/x/fleet/web", [REGISTRY.encode(forged, actor=PLANNER_ACTOR, causation_id=uuid.UUID(str((await _release_event(pg_store)).event_id)))])

    report = await replay_check(pg_store, REGISTRY)
    assert not report.ok
    assert any("IntentIssued" in d.what and "not produced by the replay" in d.what for d in report.differences)


def worded_differently(state: PlannerState, item: Input) -> tuple[PlannerState, list[Output]]:
    """`plan` as an earlier release that worded its reasons differently."""
    state, outputs = plan(state, item)
    for out in outputs:
        if isinstance(out.message, E.InstanceStatusChanged):
            out.message.reason = f"(old wording) {out.message.reason}"
    return state, outputs


async def test_replay_after_an_upgrade_sets_apart_what_the_older_version_decided(pg_store: PostgresEventStore) -> None:
    old, new = Engine(7, worded_differently), Engine(8, plan)
    for message in declarations({"staging": ["s1"]}, ["web", "api"]):
        await record(pg_store, message)
    clock = FakeClock(datetime.now(UTC))

    async with Planner(store=pg_store, registry=REGISTRY, clock=clock, engine=old):
        await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-1", application="fleet", service="web", version="v1", config=service("web"))))
        await eventually(lambda: _checkpoint_at_head(pg_store), message="version 7 caught up")
    upgraded_at = await pg_store.checkpoint("planner")
    async with Planner(store=pg_store, registry=REGISTRY, clock=clock, engine=new):
        await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-2", application="fleet", service="api", version="v1", config=service("api"))))
        await eventually(lambda: _is(pg_store, {("api", "staging"): "DEPLOYING"}), message="version 8 deploys api")
        await eventually(lambda: _checkpoint_at_head(pg_store), message="version 8 caught up")
    async with Planner(store=pg_store, registry=REGISTRY, clock=clock, engine=new):
        await eventually(lambda: _checkpoint_at_head(pg_store), message="a restart of version 8")

    versions, _ = await history(pg_store, REGISTRY, "planner")
    assert (versions.starts, versions.versions) == ((0, upgraded_at), (7, 8))  # the restart recorded nothing new

    report = await replay_check(pg_store, REGISTRY, engine=new)
    assert report.ok, report.differences
    assert report.upgraded and all(0 < d.position <= upgraded_at for d in report.upgraded)
    assert any("different content" in d.what for d in report.upgraded)
    # Replayed with version 7, it is the other way round: what version 8 decided is set apart.
    report = await replay_check(pg_store, REGISTRY, engine=old)
    assert report.ok and report.upgraded and all(d.position > upgraded_at for d in report.upgraded)
    # A real difference on an input version 8 decided still fails the check.
    forged = E.InstanceStatusChanged(application="fleet", service="api", channel="staging", reason="forged")
    api_release = next(e for e in await pg_store.read_all(limit=1000) if e.type == "convoy.v1.ReleaseCreated" and e.position > upgraded_at)
    await pg_store.append("convergence/fleet/api/staging", [REGISTRY.encode(forged, actor=PLANNER_ACTOR, causation_id=uuid.UUID(str(api_release.event_id)))])
    report = await replay_check(pg_store, REGISTRY, engine=new)
    assert not report.ok and any("not produced by the replay" in d.what for d in report.differences)


async def _release_event(store: PostgresEventStore) -> RecordedEvent:
    return next(e for e in await store.read_all(limit=1000) if e.type == "convoy.v1.ReleaseCreated")


def test_output_grouping_keeps_per_stream_order() -> None:
    a1, a2, b1 = (REGISTRY.encode(E.TimerFired(timer_id=t), actor="x") for t in ("a1", "a2", "b1"))
    grouped = group([("timer/a", a1), ("timer/b", b1), ("timer/a", a2)])
    assert [(g.stream_id, [e.event_id for e in g.events]) for g in grouped] == [
        ("timer/a", [a1.event_id, a2.event_id]), ("timer/b", [b1.event_id])]



@pytest.mark.fault
async def test_two_planners_racing_on_one_log_write_every_decision_once(pg_store: PostgresEventStore) -> None:
    """Output ids derive from input ids and plan() is deterministic, so a second planner
    (a failover started early, an operator's mistake) duplicates nothing: whichever
    commits an input's outputs first wins, the other's commit is AlreadyProcessed."""
    for message in declarations({"staging": ["s1", "s2"], "canary": ["c1"], "prod": ["p1", "p2", "p3"]},
                                [f"svc{i}" for i in range(8)]):
        await record(pg_store, message)
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        async with (
            Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))),
            Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))),
        ):
            for i in range(8):
                await record(pg_store, E.ReleaseCreated(release=R.Release(
                    id=f"rel-{i}", application="fleet", service=f"svc{i}", version="v1", config=service(f"svc{i}"))))
            wanted = {(f"svc{i}", "prod"): "CONVERGED" for i in range(8)}
            await eventually(lambda: _is(pg_store, wanted), timeout=60, message="every service converged in prod")
            await eventually(lambda: _checkpoint_at_head(pg_store), message="checkpoint caught up")
    finally:
        await stop(agents)

    outputs = [e for e in await pg_store.read_all(limit=100_000, categories=["intent", "convergence"]) if e.actor == PLANNER_ACTOR]
    intents = [REGISTRY.decode(e).message for e in outputs if e.type == "convoy.v1.IntentIssued"]
    assert len(intents) == 8 * 6  # one per service and runtime, none twice
    assert len({(i.target.runtime, i.spec.service, i.generation) for i in intents}) == len(intents)
    assert (await replay_check(pg_store, REGISTRY)).ok


async def test_an_input_plan_raises_on_is_rejected_recorded_and_the_planner_goes_on(pg_store: PostgresEventStore) -> None:
    """One bad input used to halt every application: the runner re-raised, rebuilt and
    replayed the same input forever. Now it is recorded as rejected (with its position,
    the planner version and the error), nothing it half-planned survives, the next release
    converges, and a restarted planner and the replay check skip it the same way."""
    for message in declarations({"staging": ["s1"]}, ["web", "api"]):
        await record(pg_store, message)
    engine = faulty_engine()
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)), engine=engine) as planner:
            await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-boom", application="fleet", service="web",
                                                                      version="boom", config=service("web"))))
            await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-api", application="fleet", service="api",
                                                                      version="v1", config=service("api"))))
            await eventually(lambda: _is(pg_store, {("api", "staging"): "CONVERGED"}), message="api converged after the bad input")
            await eventually(lambda: _checkpoint_at_head(pg_store), message="checkpoint caught up")
            assert planner.stats.rejected == 1
            assert ("fleet", "web", "staging") not in planner.state.convergences  # the half-plan was refolded away
            [rejected] = planner.rejections
        # A restarted planner skips it without recording it again.
        async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)), engine=engine) as again:
            await eventually(again.ready.is_set, message="restarted planner ready")
            assert again.stats.rejected == 0 and [r.position for r in again.rejections] == [rejected.position]
            assert ("fleet", "web", "staging") not in again.state.convergences
    finally:
        await stop(agents)

    boom = next(e for e in await pg_store.read_all(limit=100_000) if e.type == "convoy.v1.ReleaseCreated"
                and REGISTRY.decode(e).message.release.version == "boom")
    assert (rejected.position, rejected.event_id, rejected.event_type) == (boom.position, str(boom.event_id), boom.type)
    assert (rejected.planner_version, rejected.error, rejected.application, rejected.service, rejected.actor) == (
        CURRENT.version, "KeyError: 'boom'", "fleet", "web", "alice")
    stored = [e for e in await pg_store.read_all(limit=100_000, categories=["planner"]) if e.type == "convoy.v1.PlannerInputRejected"]
    assert len(stored) == 1 and stored[0].causation_id == boom.event_id
    caused = [e for e in await pg_store.read_all(limit=100_000, categories=["intent", "convergence"]) if e.causation_id == boom.event_id]
    assert caused == []  # nothing of the half-plan was recorded
    assert (await statuses(pg_store)).get(("web", "staging")) is None

    assert (await replay_check(pg_store, REGISTRY, engine=engine)).ok  # the replay rejects it again
    fixed = await replay_check(pg_store, REGISTRY)  # today's plan (the bug fixed) plans it: a difference, named
    assert [d.position for d in fixed.differences] == [boom.position]
    assert "the record rejected this input" in fixed.differences[0].what


async def test_an_upgraded_planner_that_fails_on_an_old_input_records_it_and_becomes_ready(pg_store: PostgresEventStore) -> None:
    """The rebuild meets the bad input (a new version's bug on an input decided long ago):
    it is recorded as rejected by that version and skipped, and the planner follows the log."""
    for message in declarations({"staging": ["s1"]}, ["web"]):
        await record(pg_store, message)
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))):
            await record(pg_store, E.ReleaseCreated(release=R.Release(id="rel-v1", application="fleet", service="web",
                                                                      version="boom", config=service("web"))))
            await eventually(lambda: _is(pg_store, {("web", "staging"): "CONVERGED"}), message="converged (no bug yet)")
            await eventually(lambda: _checkpoint_at_head(pg_store), message="checkpoint caught up")
        upgraded = Engine(CURRENT.version + 1, faulty_engine().plan)
        async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)), engine=upgraded) as planner:
            await eventually(planner.ready.is_set, message="the upgraded planner follows the log")
            [rejected] = planner.rejections
            assert (rejected.planner_version, rejected.event_type) == (CURRENT.version + 1, "convoy.v1.ReleaseCreated")
    finally:
        await stop(agents)
    report = await replay_check(pg_store, REGISTRY, engine=upgraded)
    assert report.ok  # rejected again on replay; what the older version decided differently is set apart
    assert any(d.position == rejected.position for d in report.upgraded)
