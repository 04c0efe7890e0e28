"""Properties of the group-commit decision core, for arbitrary batches of writes."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import grouping
from eventstore.errors import DuplicateEventId, InvalidInput, WrongExpectedVersion
from eventstore.types import AlreadyProcessed, AppendRequest, Checkpoint, ExpectedVersion, NewEvent

STREAMS = ["app/a", "app/b", "runtime/c"]


def event(seed: int) -> NewEvent:
    return NewEvent(type="convoy.v1.X", data=str(seed).encode(), event_id=uuid.UUID(int=seed + 1))


@st.composite
def writes(draw: st.DrawFn) -> list[grouping.Write]:
    out = []
    next_id = draw(st.integers(0, 5))  # overlapping ids across writes on purpose
    for _ in range(draw(st.integers(1, 12))):
        appends = []
        for _ in range(draw(st.integers(0, 2))):
            n = draw(st.integers(0, 3))
            events = [event(next_id + i) for i in range(n)]
            next_id += n if draw(st.booleans()) else 0  # sometimes reuse ids (retries)
            expected = draw(st.sampled_from([ExpectedVersion.ANY, 0, 1, 2, 3]))
            appends.append(AppendRequest(draw(st.sampled_from(STREAMS)), events, expected))
        checkpoint = Checkpoint("p", draw(st.integers(1, 6))) if draw(st.booleans()) else None
        write = grouping.Write(appends, checkpoint)
        try:
            grouping.validate_write(write)  # what the stores check before queuing
        except InvalidInput:
            continue
        out.append(write)
    return out


@settings(max_examples=300, deadline=None)
@given(batch=writes(), head=st.integers(0, 100), start=st.integers(0, 3))
def test_plan_assigns_gapless_positions_and_per_stream_versions(batch: list[grouping.Write], head: int, start: int) -> None:
    versions = {s: start for s in STREAMS}
    plan = grouping.plan_batch(batch, head=head, versions=versions, known={}, checkpoints={"p": 2})
    assert len(plan.outcomes) == len(batch)
    # Positions continue the log without gaps.
    assert [r.position for r in plan.rows] == list(range(head + 1, head + 1 + len(plan.rows)))
    assert plan.head == head + len(plan.rows)
    # Each stream's versions continue without gaps.
    for stream in STREAMS:
        mine = [r.version for r in plan.rows if r.stream_id == stream]
        assert mine == list(range(start + 1, start + 1 + len(mine)))
    # No event id is written twice.
    ids = [r.event.event_id for r in plan.rows]
    assert len(ids) == len(set(ids))
    # Every failure is one of the typed, per-write errors; successes wrote all their events.
    checkpoint = 2
    for write, outcome in zip(batch, plan.outcomes, strict=True):
        if outcome.error is not None:
            assert isinstance(outcome.error, WrongExpectedVersion | DuplicateEventId | AlreadyProcessed)
        else:
            assert outcome.results is not None and len(outcome.results) == len(write.appends)
            if write.checkpoint is not None:
                assert write.checkpoint.position > checkpoint
                checkpoint = write.checkpoint.position
    assert plan.checkpoints.get("p", 2) == checkpoint


@settings(max_examples=200, deadline=None)
@given(batch=writes())
def test_replanning_the_same_batch_after_commit_is_all_retries_or_conflicts(batch: list[grouping.Write]) -> None:
    first = grouping.plan_batch(batch, head=0, versions={}, known={}, checkpoints={})
    known = {
        r.event.event_id: grouping.Known.of(r.position, r.stream_id, r.version, r.event) for r in first.rows
    }
    versions: dict[str, int] = {}
    for r in first.rows:
        versions[r.stream_id] = r.version
    again = grouping.plan_batch(batch, head=first.head, versions=versions, known=known, checkpoints=first.checkpoints)
    # Replaying a committed batch re-writes nothing that was written: new rows can only
    # come from writes that failed the first time (e.g. their expected version now holds).
    failed_ids = {
        e.event_id
        for write, outcome in zip(batch, first.outcomes, strict=True)
        if outcome.error is not None
        for a in write.appends
        for e in a.events
    }
    assert all(r.event.event_id in failed_ids and r.event.event_id not in known for r in again.rows)
    for before, after in zip(first.outcomes, again.outcomes, strict=True):
        if before.results is not None and after.results is not None:
            assert [r.positions for r in after.results] == [r.positions for r in before.results]
