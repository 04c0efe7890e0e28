"""bench/eventstore.py fails, rather than print a ratio to nothing, when a baseline is missing."""

from __future__ import annotations

import argparse
import sys

import pytest

from bench import eventstore as bench


def test_a_missing_eventsourcing_library_fails_the_benchmark_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "eventsourcing.postgres", None)  # import raises ImportError
    monkeypatch.setattr(sys, "argv", ["bench/eventstore.py", "--seconds", "0.1"])
    monkeypatch.setattr(bench, "PostgresServer", None)  # starting a server would fail loudly
    assert bench.main() == 1
    assert "eventsourcing baseline cannot run" in capsys.readouterr().err


def test_curve_points_are_positive_writer_counts() -> None:
    assert bench._points("1,4,64") == [1, 4, 64]
    with pytest.raises(argparse.ArgumentTypeError):
        bench._points("0,4")
