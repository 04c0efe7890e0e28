"""The restart schedule of crashing processes."""

from __future__ import annotations

from services.agent.runtimes.supervisor import restart_delay


def test_the_first_restart_is_immediate_then_doubles_up_to_the_cap() -> None:
    delays = [restart_delay(crashes, base=1.0, cap=10.0) for crashes in range(8)]
    assert delays == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_cap_holds_for_huge_crash_counts() -> None:
    assert restart_delay(10_000, base=0.5, cap=30.0) == 30.0
