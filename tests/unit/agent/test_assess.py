"""How a local workload is doing, from its replicas' snapshots (a pure function)."""

from __future__ import annotations

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import FailureReason, Phase, Workload, WorkloadKey
from services.agent.runtimes.replicaset import Progress, assess, endpoints_line, parse_endpoints
from services.agent.runtimes.supervisor import ReplicaSnapshot, ReplicaState

KEY = WorkloadKey(namespace="n", application="shop", service="web")
WORKLOAD = Workload(key=KEY, spec=convergence_pb2.WorkloadSpec(replicas=2), spec_hash="h", generation=3, intent_id="i")


def replica(
    index: int, state: ReplicaState, *, crashes: int = 0, looping: bool = False, check: str = ""
) -> list[ReplicaSnapshot]:
    return [
        ReplicaSnapshot(
            name=f"web-{index}",
            state=state,
            pid=100 + index,
            ports={"http": 40000 + index},
            crashes=crashes,
            restarts=crashes,
            crash_looping=looping,
            last_exit=-9 if state is ReplicaState.STOPPED_OUT_OF_BAND else 3,
            output="boom\n",
            check_message=check,
        )
    ]


def progress(*, completed: bool = True, deadline_passed: bool = False, state_changed: bool = False) -> Progress:
    return Progress(
        completed=completed, deadline_passed=deadline_passed, progress_deadline=30, state_changed=state_changed
    )


def test_healthy_once_every_replica_is_ready_and_the_rollout_completed() -> None:
    ready = {0: replica(0, ReplicaState.READY), 1: replica(1, ReplicaState.READY)}
    status = assess(WORKLOAD, ready, progress())
    assert (status.phase, status.ready_replicas, status.desired_replicas, status.drifted) == (
        Phase.HEALTHY,
        2,
        2,
        False,
    )
    assert (status.generation, status.spec_hash, status.intent_id) == (3, "h", "i")
    assert status.message == "2/2 ready; endpoints: web-0=40000 web-1=40001"
    assert assess(WORKLOAD, ready, progress(completed=False)).phase is Phase.PROGRESSING


def test_a_crash_loop_fails_with_the_output() -> None:
    replicas = {0: replica(0, ReplicaState.READY), 1: replica(1, ReplicaState.BACKOFF, crashes=3, looping=True)}
    status = assess(WORKLOAD, replicas, progress(completed=False))
    assert (status.phase, status.reason, status.ready_replicas) == (Phase.FAILED, FailureReason.CRASH_LOOP, 1)
    assert "web-1 crashed 3 times in a row (last exit code 3)" in status.message and "boom" in status.message


def test_the_progress_deadline_fails_an_unfinished_rollout_only() -> None:
    replicas = {0: replica(0, ReplicaState.STARTING, check="connection refused"), 1: replica(1, ReplicaState.READY)}
    late = assess(WORKLOAD, replicas, progress(completed=False, deadline_passed=True))
    assert (late.phase, late.reason) == (Phase.FAILED, FailureReason.PROGRESS_DEADLINE)
    assert "web-0: starting, connection refused" in late.message
    assert assess(WORKLOAD, replicas, progress(completed=False)).phase is Phase.PROGRESSING


def test_a_replica_failing_its_check_after_the_rollout_fails_the_health_check() -> None:
    replicas = {0: replica(0, ReplicaState.UNREADY, check="HTTP 500"), 1: replica(1, ReplicaState.READY)}
    status = assess(WORKLOAD, replicas, progress(deadline_passed=True))
    assert (status.phase, status.reason) == (Phase.FAILED, FailureReason.HEALTH_CHECK)


def test_a_replica_stopped_by_hand_or_an_edited_state_file_is_drift() -> None:
    stopped = {0: replica(0, ReplicaState.STOPPED_OUT_OF_BAND), 1: replica(1, ReplicaState.READY)}
    status = assess(WORKLOAD, stopped, progress())
    assert (status.phase, status.drifted, status.ready_replicas) == (Phase.PROGRESSING, True, 1)
    assert "web-0 was stopped out of band (signal 9)" in status.message
    ready = {0: replica(0, ReplicaState.READY), 1: replica(1, ReplicaState.READY)}
    edited = assess(WORKLOAD, ready, progress(state_changed=True))
    assert (edited.phase, edited.drifted) == (Phase.HEALTHY, True)


def test_endpoints_round_trip_through_the_message() -> None:
    replicas = {0: replica(0, ReplicaState.READY), 1: replica(1, ReplicaState.READY)}
    line = endpoints_line(replicas)
    assert parse_endpoints(f"2/2 ready; {line}\nmore") == {"web-0": 40000, "web-1": 40001}
    assert parse_endpoints("0/0 ready") == {}
