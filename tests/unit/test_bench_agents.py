"""bench/agents.py's accounting: every intent issued is received, rolled out once and
observed APPLIED once; anything else is lost or duplicated (and fails the benchmark)."""

from __future__ import annotations

from bench.agents import account


def test_every_intent_through_once_is_neither_lost_nor_duplicated() -> None:
    ids = ["a-1", "b-1"]
    result = account(ids, ids, redelivered=0, rollouts={"a-1": 1, "b-1": 1}, applied={"a-1": 1, "b-1": 1})
    assert (result.lost, result.duplicated, result.unknown) == (0, 0, 0)


def test_an_intent_missing_any_step_is_lost_once() -> None:
    ids = ["a-1", "b-1", "c-1", "d-1"]
    result = account(
        ids,
        ["a-1", "c-1", "d-1"],  # b-1 never reached its agent
        redelivered=0,
        rollouts={"a-1": 1, "b-1": 0, "d-1": 1},  # nor rolled out; c-1 received but not rolled out
        applied={"a-1": 1, "c-1": 1},  # d-1 rolled out, but no APPLIED in the store
    )
    assert result.not_received == ["b-1"]
    assert result.not_rolled_out == ["b-1", "c-1"]
    assert result.not_observed == ["b-1", "d-1"]
    assert result.lost == 3
    assert result.duplicated == 0


def test_rolled_out_or_recorded_twice_is_duplicated_and_redeliveries_are_only_counted() -> None:
    ids = ["a-1", "b-1", "c-1"]
    result = account(
        ids, ids, redelivered=4, rollouts={"a-1": 2, "b-1": 1, "c-1": 1}, applied={"a-1": 1, "b-1": 2, "c-1": 1}
    )
    assert result.duplicated == 2 and result.lost == 0
    assert result.redelivered == 4


def test_ids_nobody_issued_are_reported() -> None:
    result = account(["a-1"], ["a-1", "x-9"], redelivered=0, rollouts={"a-1": 1}, applied={"a-1": 1})
    assert result.unknown == 1
