"""What an exec runtime's fetch says: exit codes, the JSON status format, and its errors."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import Phase, Workload, WorkloadKey, WorkloadStatus
from services.agent.runtimes.execstatus import StatusFormatError, find_json, parse_status

KEY = WorkloadKey(namespace="shop-prod", application="shop", service="web")
APPLIED = Workload(
    key=KEY, spec=convergence_pb2.WorkloadSpec(replicas=3), spec_hash="h1", generation=4, intent_id="i4"
)


def test_exit_codes_alone_mean_in_sync_or_drifted() -> None:
    assert parse_status(KEY, exit_code=0, output="", applied=APPLIED) == WorkloadStatus(
        key=KEY,
        phase=Phase.HEALTHY,
        generation=4,
        spec_hash="h1",
        intent_id="i4",
        message="in sync",
        ready_replicas=3,
        desired_replicas=3,
    )
    drifted = parse_status(KEY, exit_code=2, output="replicas edited by hand\n", applied=APPLIED)
    assert (drifted.phase, drifted.drifted, drifted.message) == (Phase.HEALTHY, True, "replicas edited by hand")
    assert parse_status(KEY, exit_code=0, output="", applied=None).phase is Phase.ABSENT


def test_a_json_status_may_follow_log_lines_and_defaults_to_what_was_applied() -> None:
    output = 'checking web\n{"phase": "progressing", "ready": 1, "message": "1/3"}\n'
    status = parse_status(KEY, exit_code=0, output=output, applied=APPLIED)
    assert (status.phase, status.ready_replicas, status.desired_replicas) == (Phase.PROGRESSING, 1, 3)
    assert (status.generation, status.spec_hash, status.intent_id, status.message) == (4, "h1", "i4", "1/3")


def test_a_json_status_overrides_generation_and_hash() -> None:
    output = '{"phase": "healthy", "generation": 5, "spec_hash": "h2", "intent_id": "i5", "drifted": true}'
    status = parse_status(KEY, exit_code=0, output=output, applied=APPLIED)
    assert (status.phase, status.generation, status.spec_hash, status.intent_id) == (Phase.HEALTHY, 5, "h2", "i5")
    assert status.drifted and status.ready_replicas == 3


def test_failed_needs_a_known_reason() -> None:
    failed = parse_status(
        KEY, exit_code=0, output='{"phase": "failed", "reason": "crash_loop", "message": "exit 3"}', applied=APPLIED
    )
    assert (failed.phase, failed.reason, failed.message) == (Phase.FAILED, "crash_loop", "exit 3")
    with pytest.raises(StatusFormatError, match="reason"):
        parse_status(KEY, exit_code=0, output='{"phase": "failed", "reason": "oops"}', applied=APPLIED)


@pytest.mark.parametrize(
    ("output", "complaint"),
    [
        ('{"phase": "green"}', "phase"),
        ('{"ready": 1}', "phase"),
        ('{"phase": "healthy", "ready": "1"}', "ready"),
        ('{"phase": "healthy", "ready": -1}', "ready"),
        ('{"phase": "healthy", "desired": true}', "desired"),
        ('{"phase": "healthy", "message": 7}', "message"),
        ('{"phase": "healthy", "drifted": "yes"}', "drifted"),
    ],
)
def test_a_malformed_status_says_what_is_wrong(output: str, complaint: str) -> None:
    with pytest.raises(StatusFormatError, match=complaint):
        parse_status(KEY, exit_code=0, output=output, applied=APPLIED)


def test_reported_absent_is_absent() -> None:
    status = parse_status(KEY, exit_code=0, output='{"phase": "absent"}', applied=APPLIED)
    assert (status.phase, status.generation, status.spec_hash) == (Phase.ABSENT, 0, "")


def test_find_json() -> None:
    assert find_json('{"a": 1}') == {"a": 1}
    assert find_json('{\n  "a": 1\n}\n') == {"a": 1}
    assert find_json('log\n{"a": 1}\nmore log') == {"a": 1}
    assert find_json("[1, 2]") is None
    assert find_json("{not json}") is None
    assert find_json("") is None
