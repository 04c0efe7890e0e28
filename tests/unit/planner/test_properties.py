"""Properties of the planner over random histories: deterministic, status chains that
link, generations that only grow, fleet limits and pauses respected."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.planner.engine import Output
from services.planner.model import TRANSITIONS
from tests.unit.planner.world import World, channel, intents, seconds

RUNTIMES = ["r1", "r2", "r3", "r4"]
KINDS = [C.OBSERVATION_KIND_HEALTHY, C.OBSERVATION_KIND_HEALTHY, C.OBSERVATION_KIND_FAILED,
         C.OBSERVATION_KIND_PROGRESSING, C.OBSERVATION_KIND_CHECK_PASSED, C.OBSERVATION_KIND_CHECK_FAILED]

step = st.one_of(
    st.tuples(st.just("deploy"), st.sampled_from(["web", "api"])),
    st.tuples(st.just("report"), st.integers(0, 50), st.sampled_from(KINDS)),
    st.tuples(st.just("approve"), st.sampled_from(["bob", "carol"]), st.sampled_from(["web", "api"])),
    st.tuples(st.just("advance"), st.sampled_from([1, 10, 40, 700])),
    st.tuples(st.just("pause_runtime"), st.sampled_from(RUNTIMES), st.booleans()),
    st.tuples(st.just("pause"), st.sampled_from(["web", "api"]), st.sampled_from(["", "staging", "prod"]), st.booleans()),
    st.tuples(st.just("rollback"), st.sampled_from(["web", "api"])),
)


def build() -> World:
    world = World()
    world.protection("probe")
    soak = R.ProtectionAttachment(protection="probe", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                  failure_behavior=R.FAILURE_BEHAVIOR_FAIL, delay=seconds(5), duration=seconds(30))
    world.setup(
        channel("staging", "r1", protections=[soak]),
        channel("prod", "r2", "r3", "r4", stable="staging", approval=1, max_concurrent=2),
        services=("web", "api"),
    )
    return world


def run(steps: list[tuple]) -> tuple[World, list[bytes]]:
    world = build()
    versions = {"web": 0, "api": 0}
    for s in steps:
        kind = s[0]
        if kind == "deploy":
            versions[s[1]] += 1
            world.deploy(f"v{versions[s[1]]}", service=s[1])
        elif kind == "report":
            issued = intents(world.outputs)
            if issued:
                intent = issued[-1 - s[1] % len(issued)]
                check = next((c.check_id for m in reversed(world.outputs) if isinstance(m.message, E.ChecksRequested)
                              for c in m.message.checks), "")
                world.report(intent, s[2], reason="crash_loop", check_id=check)
        elif kind == "approve" and versions[s[2]]:
            world.approve(f"v{versions[s[2]]}", "prod", s[1], service=s[2])
        elif kind == "advance":
            world.advance(timedelta(seconds=s[1]))
        elif kind == "pause_runtime":
            world.feed(E.RuntimePaused(name=s[1]) if s[2] else E.RuntimeResumed(name=s[1]))
        elif kind == "pause":
            cls = E.ConvergencePaused if s[3] else E.ConvergenceResumed
            world.feed(cls(application="shop", service=s[1], channel=s[2]))
        elif kind == "rollback":
            world.feed(E.RollbackRequested(application="shop", service=s[1]))
    return world, [o.stream_id.encode() + o.message.SerializeToString(deterministic=True) for o in world.outputs]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60))
def test_the_planner_is_deterministic_and_keeps_its_invariants(steps: list[tuple]) -> None:
    world, outputs = run(steps)

    assert run(steps)[1] == outputs  # same inputs, same decisions, byte for byte

    statuses: dict[tuple[str, ...], int] = {}
    generations: dict[str, int] = {}
    for out in world.outputs:
        m = out.message
        if isinstance(m, E.InstanceStatusChanged):
            # A channel's chain starts at PENDING per release; a target's runs across releases.
            key = (m.service, m.channel, m.target.runtime, "" if m.target.runtime else m.release_id)
            if key in statuses:
                assert m.old_status == statuses[key], f"status chain broken for {key}: {m}"
            else:
                assert m.target.runtime or m.old_status == C.INSTANCE_STATUS_PENDING
            assert m.old_status != m.new_status or m.reason, "a change without a status change says why"
            if not m.target.runtime:
                assert (m.old_status, m.new_status) in TRANSITIONS, f"undeclared transition: {m}"
            statuses[key] = m.new_status
        elif isinstance(m, E.IntentIssued):
            assert out.stream_id == f"intent/{m.target.runtime}/{m.target.namespace}/shop/{m.spec.service}"
            assert m.generation == generations.get(out.stream_id, 0) + 1, "generations grow by one per workload"
            generations[out.stream_id] = m.generation
    for conv in world.state.convergences.values():
        if conv.channel == "prod" and conv.status == C.INSTANCE_STATUS_DEPLOYING:
            in_flight = [t for t in conv.targets.values() if t.release_id == conv.release_id and not t.rollback and not t.healthy and t.generation]
            assert len(in_flight) <= 2
    assert all(t.fire_at >= world.now - timedelta(seconds=700) for t in world.state.timers.values())


def test_no_intent_reaches_a_paused_runtime() -> None:
    world = build()
    world.feed(E.RuntimePaused(name="r3"))
    out: list[Output] = world.deploy("v1", service="web")
    for _ in range(10):
        world.approve("v1", "prod", "bob")
        world.advance(timedelta(seconds=40))
        out = world.healthy(intents(world.outputs))
    assert "r3" not in {i.target.runtime for i in intents(world.outputs)}
