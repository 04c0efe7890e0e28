"""The figures every benchmark prints, computed one way.

Three benchmarks once computed percentiles three different ways (index `int(n*q)`,
`round(q*(n-1))`, `statistics.median`), so their p99s were not comparable. This module is
the one definition, and the one format of the lines `bench/run` reads:

- `percentile` is the nearest-rank percentile: the smallest sample with at least a
  fraction q of the samples at or below it (so p100 is the maximum, and p50 of two
  samples is the smaller one). An empty list is an error, not NaN: a benchmark that
  measured nothing must fail, not print a figure.
- `result_line` builds the final `RESULT key=value …` line; `curve_line` one point of a
  cost curve, `CURVE <curve> <x-key>=<x> <y-key>=<y> …` (the first pair is the load on
  the x axis, the rest are the figures at that load); `parse_curve_line` reads it back.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class NoSamples(ValueError):
    """A percentile of nothing: the benchmark measured no sample."""


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, 0 < q <= 1 (q=0.99 for p99)."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if not samples:
        raise NoSamples("no samples")
    ordered = sorted(samples)
    rank = math.ceil(q * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float
    p90: float
    p99: float
    max: float

    def text(self, unit: str = "ms", digits: int = 2) -> str:
        f = f"{{:.{digits}f}}"
        return (
            f"n={self.count} p50_{unit}={f.format(self.p50)} p90_{unit}={f.format(self.p90)} "
            f"p99_{unit}={f.format(self.p99)} max_{unit}={f.format(self.max)}"
        )


def summarize(samples: Sequence[float]) -> Summary:
    """Count, p50, p90, p99 and max of `samples` (in their own unit)."""
    return Summary(
        count=len(samples),
        p50=percentile(samples, 0.50),
        p90=percentile(samples, 0.90),
        p99=percentile(samples, 0.99),
        max=max(samples),
    )


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text) or "=" in text:
        raise ValueError(f"a figure must be one word without '=', got {text!r}")
    return text


def _pairs(figures: Mapping[str, object]) -> str:
    for key in figures:
        if not key or not key.replace("_", "").isalnum():
            raise ValueError(f"a key must be letters, digits and '_', got {key!r}")
    return " ".join(f"{key}={_value(value)}" for key, value in figures.items())


def result_line(figures: Mapping[str, object]) -> str:
    """`RESULT k=v …`, keys in the order given."""
    if not figures:
        raise ValueError("a RESULT line needs at least one figure")
    return f"RESULT {_pairs(figures)}"


def curve_line(curve: str, x: tuple[str, object], figures: Mapping[str, object]) -> str:
    """`CURVE <curve> <x-key>=<x> <y-key>=<y> …`: one point of a cost curve."""
    if not curve or not curve.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a curve name must be letters, digits, '-' and '_', got {curve!r}")
    if not figures:
        raise ValueError("a curve point needs at least one figure besides its load")
    return f"CURVE {curve} {_pairs({x[0]: x[1], **figures})}"


@dataclass(frozen=True)
class CurvePoint:
    curve: str
    x_key: str
    x: float
    figures: dict[str, float]


def parse_curve_line(line: str) -> CurvePoint | None:
    """The point of a `CURVE …` line; None for any other line. Raises ValueError on a
    malformed CURVE line (a benchmark bug, not something to skip)."""
    words = line.strip().split()
    if not words or words[0] != "CURVE":
        return None
    if len(words) < 4:
        raise ValueError(f"a CURVE line needs a name, a load and a figure: {line!r}")
    pairs = []
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"not key=value: {word!r} in {line!r}")
        try:
            pairs.append((key, float(value)))
        except ValueError:
            raise ValueError(f"not a number: {word!r} in {line!r}") from None
    (x_key, x), *rest = pairs
    return CurvePoint(curve=words[1], x_key=x_key, x=x, figures=dict(rest))
