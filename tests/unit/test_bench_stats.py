"""bench/stats.py: the one percentile and the RESULT/CURVE line formats every benchmark uses."""

from __future__ import annotations

import pytest

from bench.stats import NoSamples, curve_line, parse_curve_line, percentile, result_line, summarize


def test_nearest_rank_percentile() -> None:
    samples = list(range(1, 101))  # 1..100
    assert percentile(samples, 0.99) == 99
    assert percentile(samples, 0.50) == 50
    assert percentile(samples, 1.0) == 100
    assert percentile([5.0, 1.0], 0.5) == 1.0  # the smaller of two: rank ceil(0.5*2) = 1
    assert percentile([7.0], 0.99) == 7.0
    # p99 of 1,000 samples is the 990th smallest: a single slow outlier does not move it
    assert percentile([1.0] * 999 + [500.0], 0.99) == 1.0
    assert percentile([1.0] * 989 + [500.0] * 11, 0.99) == 500.0


def test_no_samples_is_an_error_not_nan() -> None:
    with pytest.raises(NoSamples):
        percentile([], 0.99)
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    with pytest.raises(ValueError):
        summarize([])


def test_summary() -> None:
    s = summarize([float(i) for i in range(1, 11)])
    assert (s.count, s.p50, s.p90, s.p99, s.max) == (10, 5.0, 9.0, 10.0, 10.0)
    assert s.text() == "n=10 p50_ms=5.00 p90_ms=9.00 p99_ms=10.00 max_ms=10.00"


def test_result_and_curve_lines_round_trip() -> None:
    assert result_line({"append_eps": 100, "lost": 0}) == "RESULT append_eps=100 lost=0"
    line = curve_line("append", ("writers", 64), {"convoy_eps": 20000, "ratio": "0.71"})
    assert line == "CURVE append writers=64 convoy_eps=20000 ratio=0.71"
    point = parse_curve_line(line)
    assert point is not None
    assert (point.curve, point.x_key, point.x, point.figures) == ("append", "writers", 64.0, {"convoy_eps": 20000.0, "ratio": 0.71})
    assert parse_curve_line("RESULT a=1") is None
    assert parse_curve_line("convoy writers=1") is None


@pytest.mark.parametrize(
    "bad",
    ["CURVE append writers=1", "CURVE append writers=1 eps", "CURVE append writers=x eps=1", "CURVE append =1 eps=2"],
)
def test_malformed_curve_lines_are_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_curve_line(bad)


def test_lines_refuse_what_would_not_parse() -> None:
    with pytest.raises(ValueError):
        result_line({})
    with pytest.raises(ValueError):
        result_line({"a b": 1})
    with pytest.raises(ValueError):
        result_line({"a": "1 2"})
    with pytest.raises(ValueError):
        curve_line("bad name", ("x", 1), {"y": 1})
    with pytest.raises(ValueError):
        curve_line("c", ("x", 1), {})
