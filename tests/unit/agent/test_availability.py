"""The agent's view of its runtime's availability: every call through `ObservedRuntime`
counts, a refusal is an answer, an outage keeps its start, and a heartbeat carries it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.convoy.v1 import convergence_pb2
from services.agent.availability import AVAILABLE, UNAVAILABLE, UNSPECIFIED, Availability, ObservedRuntime, truncate
from services.agent.runtimes.base import ApplyRejected, RuntimeUnavailable, Workload, WorkloadKey
from services.agent.runtimes.memory import FAIL_PARAMETER, MemoryRuntime

KEY = WorkloadKey("prod", "shop", "web")


def workload(generation: int = 1, **parameters: str) -> Workload:
    spec = convergence_pb2.WorkloadSpec(application="shop", service="web", replicas=1)
    spec.parameters.update(parameters)
    return Workload(key=KEY, spec=spec, spec_hash=f"h{generation}", generation=generation, intent_id=f"i{generation}")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_calls_through_the_wrapper_keep_the_availability() -> None:
    clock = Clock()
    availability = Availability(runtime="rt", clock=clock)
    memory = MemoryRuntime(name="rt")
    runtime = ObservedRuntime(memory, availability)
    assert availability.state == UNSPECIFIED and availability.available

    await runtime.apply(workload())
    assert availability.state == AVAILABLE and await availability.changed(0)

    memory.outage(True)
    with pytest.raises(RuntimeUnavailable):
        await runtime.live()
    started = clock.now
    assert (availability.state, availability.since) == (UNAVAILABLE, started) and not availability.available
    assert "simulated outage" in availability.error and await availability.changed(0)

    clock.now += timedelta(minutes=5)
    with pytest.raises(RuntimeUnavailable):
        await runtime.apply(workload(2))
    assert availability.since == started, "the same outage keeps its start"
    assert not await availability.changed(0), "no change to announce"

    beat = convergence_pb2.Heartbeat()
    availability.stamp(beat)
    assert beat.runtime_availability == UNAVAILABLE and beat.runtime_error == availability.error
    assert beat.runtime_unavailable_since.ToDatetime(tzinfo=UTC) == started

    memory.outage(False)
    with pytest.raises(ApplyRejected):  # refused, but the runtime answered
        await runtime.apply(workload(3, **{FAIL_PARAMETER: "apply_error"}))
    assert availability.state == AVAILABLE and availability.since is None and not availability.error
    beat = convergence_pb2.Heartbeat()
    availability.stamp(beat)
    assert beat.runtime_availability == AVAILABLE and not beat.HasField("runtime_unavailable_since")


async def test_a_watch_that_yields_means_the_runtime_answers() -> None:
    availability = Availability(runtime="rt")
    memory = MemoryRuntime(name="rt")
    runtime = ObservedRuntime(memory, availability)
    availability.failed(RuntimeUnavailable("earlier"))
    statuses = runtime.watch(KEY)
    await anext(statuses)
    assert availability.state == AVAILABLE
    await statuses.aclose()  # type: ignore[attr-defined]
    memory.outage(True)
    with pytest.raises(RuntimeUnavailable):
        await anext(runtime.watch(KEY))
    assert availability.state == UNAVAILABLE
    assert runtime.incarnation(KEY) == 0, "the runtime's own methods pass through"


def test_errors_are_cut_to_their_limit() -> None:
    availability = Availability(runtime="rt")
    availability.failed(RuntimeUnavailable("é" * 10_000))
    assert len(availability.error.encode()) <= 1024 and availability.error.endswith("…")
    assert truncate("short") == "short"
