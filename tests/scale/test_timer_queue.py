"""The planner's timer queue answers what a scan of every pending timer answered.

The timer shell asks `PlannerState.next_timer` for the due timer after every batch; it
used to take the minimum over all pending timers, O(timers) per batch — tens of thousands
during a fleet release (docs/performance.md, "Fleet at 10x"). The heap must give the same
timer in the same tie order (fire_at, then timer id), forget fired and cancelled ones,
skip the ones the shell fired whose TimerFired is not folded yet, and come back when a
state was made without it (a copy or a loaded state)."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta

import pytest

from services.planner.model import PendingTimer, PlannerState

pytestmark = pytest.mark.scale

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scanned(state: PlannerState, skip: set[str]) -> PendingTimer | None:
    """What the shell computed before the queue: the minimum over every pending timer."""
    pending = [t for t in state.timers.values() if t.timer_id not in skip]
    return min(pending, key=lambda t: (t.fire_at, t.timer_id), default=None)


def test_next_timer_is_the_scan_through_schedules_firings_cancellations_and_skips() -> None:
    rng = random.Random(14)
    state, skip, seq = PlannerState(), set[str](), 0
    for _ in range(5000):
        roll = rng.random()
        if roll < 0.5 or not state.timers:
            seq += 1
            at = T0 + timedelta(seconds=rng.randrange(600))  # ties on fire_at are common
            state.add_timer(PendingTimer(f"tmr-{seq}-deadline", at, ("app", f"svc{seq % 7}", "prod"), "deadline"))
        elif roll < 0.75:
            state.timers.pop(rng.choice(sorted(state.timers)))  # cancelled, as the engine does
        elif roll < 0.9:
            due = state.next_timer(skip)
            if due is not None:
                skip.add(due.timer_id)  # fired by the shell, TimerFired not folded yet
        else:
            for timer_id in sorted(skip):  # the TimerFired inputs folded
                state.timers.pop(timer_id, None)
            skip.clear()
        assert state.next_timer(skip) == scanned(state, skip)
    assert len(state.timer_queue) <= 2 * len(state.timers) + 1025  # fired and cancelled ones do not pile up


def test_a_state_without_its_queue_rebuilds_it_and_equality_ignores_it() -> None:
    state = PlannerState()
    for n, seconds in enumerate((30, 10, 20, 10)):
        state.add_timer(PendingTimer(f"tmr-{n}", T0 + timedelta(seconds=seconds), ("a", "s", "c"), "soak"))
    loaded = copy.copy(state)
    loaded.timer_queue = []  # as a state built field by field from a snapshot would be
    assert loaded == state
    assert loaded.next_timer() == state.next_timer() == state.timers["tmr-1"]
    assert loaded.next_timer({"tmr-1"}) == state.timers["tmr-3"]
    state.timers.pop("tmr-1")
    state.timers.pop("tmr-3")
    assert state.next_timer() == state.timers["tmr-2"]
