"""Cost-curve charts as SVG text, written by hand rather than with matplotlib.

`bench/run --curve` draws each benchmark's `CURVE` points into docs/curves/*.svg. A few
lines, markers, ticks and a legend are all a cost curve needs, and SVG is text: building it
here keeps the output byte-for-byte the same for the same data (matplotlib embeds its version,
a date and generated ids, so every run would rewrite every file of the doc's diff), adds no
dependency to install and pin beside the benchmarks, and needs no font cache or backend on a
CI machine. Loads span decades (writers 1→256, agents 10→1,000, services 100→10,000), so the
x axis is logarithmic; a y axis turns logarithmic when its figures span two decades or more.
Figures are grouped into one chart per unit family (`family`), since throughputs, latencies
and ratios on one axis would flatten all but the largest.

Pure: text in, text out; bench/run writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

# The canvas and the plot area inside it (tests compute where a point must land from these).
WIDTH, HEIGHT = 680, 360
LEFT, RIGHT, TOP, BOTTOM = 72, 472, 36, 312
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
LOG_WHEN_SPAN = 100.0
"""A y axis is logarithmic when its largest positive figure is this many times its smallest."""


@dataclass(frozen=True)
class Family:
    name: str
    """Part of the file name: `<curve>-<name>.svg`."""
    title: str
    """The y axis label."""


RATIO = Family("ratio", "ratio")
THROUGHPUT = Family("throughput", "per second")
CPU = Family("cpu", "CPU ms")
LATENCY = Family("latency", "ms")
DURATION = Family("duration", "seconds")
MEMORY = Family("memory", "MB")
COUNT = Family("count", "count")
FAMILIES = (THROUGHPUT, LATENCY, DURATION, CPU, RATIO, MEMORY, COUNT)
"""In the order charts are listed."""


def family(key: str) -> Family:
    """The unit family of a figure, from its key (the suffix convention of bench/stats.py):
    `ratio*`/`*_vs_*` ratios, `_eps/_cps/_rps/_per_s` throughputs, any `cpu` word CPU time
    per operation (`cpu_ms_per_instance`, `grpc_cpu_ms`: a cost, not a wait), `_ms`
    latencies, `_s` durations (apart from `_ms`: one axis in two units would misread),
    `_mb` memory, anything else a count."""
    words = key.split("_")
    if words[0] == "ratio" or "vs" in words[1:-1]:
        return RATIO
    if key.endswith(("_eps", "_cps", "_rps", "_per_s")):
        return THROUGHPUT
    if "cpu" in words:
        return CPU
    if key.endswith("_ms"):
        return LATENCY
    if key.endswith("_s"):
        return DURATION
    if key.endswith("_mb"):
        return MEMORY
    return COUNT


@dataclass(frozen=True)
class Series:
    key: str
    points: tuple[tuple[float, float], ...]
    """(x, y), in the order drawn (ascending x)."""


# ---------------------------------------------------------------------------------------
# Axes


@dataclass(frozen=True)
class Axis:
    low: float
    high: float
    log: bool
    loads: tuple[float, ...] = ()
    """The data's own values: the ticks of a log axis too narrow for three round ones."""

    def fraction(self, value: float) -> float:
        """Where `value` sits between low (0.0) and high (1.0)."""
        if self.log:
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)

    def ticks(self) -> list[float]:
        if not self.log:
            return _linear_ticks(self.low, self.high)
        ticks = _log_ticks(self.low, self.high)
        return ticks if len(ticks) >= 3 or not self.loads else sorted(set(self.loads))


def _nice(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k at or above `value` (> 0)."""
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    raise AssertionError("unreachable")


def _linear_ticks(low: float, high: float) -> list[float]:
    step = _nice((high - low) / 5)
    count = round((high - low) / step)
    return [_round(low + i * step) for i in range(count + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """Decades, with 2 and 5 between them when the axis spans fewer than three decades."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    steps = (1.0,) if math.log10(high / low) >= 3 else (1.0, 2.0, 5.0)
    ticks = [_round(s * 10.0**d) for d in decades for s in steps]
    return [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]


def _round(value: float) -> float:
    return float(f"{value:.12g}")


def x_axis(xs: Sequence[float]) -> Axis:
    """Logarithmic from the smallest load to the largest (a lone load gets a factor of 2 on
    each side; quick runs' 1→4 gets its loads as ticks); linear when a load is not positive."""
    low, high = min(xs), max(xs)
    if low <= 0:
        return Axis(low, high, False) if high > low else Axis(low - 1, high + 1, False)
    if high == low:
        return Axis(low / 2, high * 2, True, (low,))
    return Axis(low, high, True, tuple(xs))


def y_axis(ys: Sequence[float]) -> Axis:
    """From 0 to a round number above the largest figure; logarithmic (whole decades) when
    every figure is positive and they span LOG_WHEN_SPAN or more."""
    low, high = min(ys), max(ys)
    if low > 0 and high / low >= LOG_WHEN_SPAN:
        return Axis(10.0 ** math.floor(math.log10(low)), 10.0 ** math.ceil(math.log10(high)), True)
    bottom = min(0.0, low)
    top = max(0.0, high)
    if top == bottom:
        top = bottom + 1
    step = _nice((top - bottom) / 5)
    return Axis(bottom if bottom == 0 else -_nice(-bottom), _round(math.ceil(top / step - 1e-9) * step), False)


# ---------------------------------------------------------------------------------------
# Drawing


def label(value: float) -> str:
    """A tick label: 1,000 rather than 1000.0; 2.5, 0.05."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:.3g}"


def _num(value: float) -> str:
    """A coordinate: fixed two decimals, so the same data gives the same bytes."""
    return f"{value:.2f}"


def chart(*, title: str, x_label: str, y_label: str, series: Sequence[Series]) -> str:
    """One SVG chart of `series` (each a line with a marker per point), with axes, ticks,
    grid lines and a legend. Markers carry their data (`data-key`, `data-x`, `data-y`)."""
    if not series or not all(s.points for s in series):
        raise ValueError("a chart needs at least one series, each with a point")
    xa = x_axis([x for s in series for x, _ in s.points])
    ya = y_axis([y for s in series for _, y in s.points])

    def px(x: float) -> float:
        return LEFT + xa.fraction(x) * (RIGHT - LEFT)

    def py(y: float) -> float:
        return BOTTOM - ya.fraction(y) * (BOTTOM - TOP)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="20" font-size="13" font-weight="bold">{escape(title)}</text>',
        '<g class="grid" stroke="#e0e0e0" stroke-width="1">',
    ]
    for t in xa.ticks():
        out.append(f'<line x1="{_num(px(t))}" y1="{TOP}" x2="{_num(px(t))}" y2="{BOTTOM}"/>')
    for t in ya.ticks():
        out.append(f'<line x1="{LEFT}" y1="{_num(py(t))}" x2="{RIGHT}" y2="{_num(py(t))}"/>')
    out.append("</g>")
    out.append(f'<g class="axes" stroke="#333333" stroke-width="1">'
               f'<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}"/>'
               f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}"/></g>')
    out.append('<g class="x-ticks" text-anchor="middle">')
    for t in xa.ticks():
        out.append(f'<text x="{_num(px(t))}" y="{BOTTOM + 16}" data-value="{t:g}">{label(t)}</text>')
    out.append("</g>")
    out.append('<g class="y-ticks" text-anchor="end">')
    for t in ya.ticks():
        out.append(f'<text x="{LEFT - 6}" y="{_num(py(t) + 4)}" data-value="{t:g}">{label(t)}</text>')
    out.append("</g>")
    x_scale = " (log scale)" if xa.log else ""
    y_scale = " (log scale)" if ya.log else ""
    out.append(f'<text class="x-label" x="{(LEFT + RIGHT) // 2}" y="{HEIGHT - 12}" text-anchor="middle">'
               f"{escape(x_label + x_scale)}</text>")
    out.append(f'<text class="y-label" x="16" y="{(TOP + BOTTOM) // 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(TOP + BOTTOM) // 2})">{escape(y_label + y_scale)}</text>')
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        key = quoteattr(s.key)
        coords = " ".join(f"{_num(px(x))},{_num(py(y))}" for x, y in s.points)
        out.append(f'<g class="series" data-key={key} stroke="{color}" fill="{color}">')
        out.append(f'<polyline points="{coords}" fill="none" stroke-width="2"/>')
        for x, y in s.points:
            out.append(f'<circle cx="{_num(px(x))}" cy="{_num(py(y))}" r="3" data-x="{x:g}" data-y="{y:g}"/>')
        out.append("</g>")
    out.append('<g class="legend">')
    for i, s in enumerate(series):
        y = TOP + 8 + 18 * i
        out.append(f'<rect x="{RIGHT + 16}" y="{y - 8}" width="12" height="12" fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{RIGHT + 34}" y="{y + 2}">{escape(s.key)}</text>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def curve_charts(curve: str, x_key: str, points: Sequence[tuple[float, Mapping[str, float]]]) -> dict[str, str]:
    """One chart per family of figures of a curve: `{"<curve>-<family>.svg": svg}`, in the
    order of FAMILIES; within a chart the figures keep the order of the CURVE line.
    `points` are (load, figures at that load)."""
    ordered = sorted(points, key=lambda p: p[0])
    keys = list(dict.fromkeys(k for _, figures in ordered for k in figures))
    charts = {}
    for fam in FAMILIES:
        members = [k for k in keys if family(k) is fam]
        if not members:
            continue
        series = [Series(k, tuple((x, figures[k]) for x, figures in ordered if k in figures)) for k in members]
        charts[f"{curve}-{fam.name}.svg"] = chart(
            title=f"{curve}: {fam.name} by {x_key}", x_label=x_key, y_label=fam.title, series=series
        )
    return charts
