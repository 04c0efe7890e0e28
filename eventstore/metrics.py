"""Prometheus metrics: counters, gauges and histograms, rendered as text format 0.0.4.

Dependency-free on purpose: Convoy needs three metric kinds, labels and the text
exposition, which fit in this module; `prometheus_client` would add a package whose
default global registry (and its import-time process collectors) is exactly the hidden
state STYLE.md #6 rules out. So a `Registry` is an object the composition root creates
and passes to what it instruments; nothing here is global.

Components keep their own plain counters (`PlannerStats`, `Relay.published`, …); the
composition registers *collectors* — functions run just before each scrape — that copy
those numbers in, and samples that need I/O (a consumer's pending count, the planner's
lag) are taken by async collectors, each bounded by a timeout. Only what must be
observed as it happens (request latency, convergence durations) is recorded inline.
Everything runs on one event loop, so nothing here locks.

Readiness lives here too (`Check`, `readiness`): every process answers `/readyz` from a
list of named checks, the same way, whichever HTTP server serves it.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog

log = structlog.get_logger("convoy.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Request latencies, in seconds (Prometheus' usual defaults)."""

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Collector = Callable[[], Awaitable[None] | None]


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{escape_label_value(extra[1])}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Family:
    kind: str = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"repeated label name for {name}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], object] = {}

    def _key(self, values: dict[str, object]) -> tuple[str, ...]:
        if set(values) != set(self.label_names):
            raise ValueError(f"{self.name} takes the labels {list(self.label_names)}, not {sorted(values)}")
        return tuple(str(values[n]) for n in self.label_names)

    def _child(self, values: dict[str, object]) -> object:
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new()
        return child

    def _new(self) -> object:
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every labelled series."""
        self._children.clear()

    def remove(self, **values: object) -> None:
        """Forget one labelled series (e.g. a consumer that no longer exists)."""
        self._children.pop(self._key(values), None)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        children = self._children
        if not children and not self.label_names:
            children = {(): self._new()}
        for key in sorted(children):
            yield from self._samples(key, children[key])

    def _samples(self, key: tuple[str, ...], child: object) -> Iterable[str]:
        assert isinstance(child, _Value)
        yield f"{self.name}{_labels_text(self.label_names, key)} {format_value(child.value)}"


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount

    def set_total(self, total: float) -> None:
        """Mirror a component's own monotonic counter (read by a collector)."""
        self.value = float(total)


class GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1


class Counter(_Family):
    kind = "counter"

    def _new(self) -> CounterChild:
        return CounterChild()

    def labels(self, **values: object) -> CounterChild:
        child = self._child(values)
        assert isinstance(child, CounterChild)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def set_total(self, total: float) -> None:
        self.labels().set_total(total)


class Gauge(_Family):
    kind = "gauge"

    def _new(self) -> GaugeChild:
        return GaugeChild()

    def labels(self, **values: object) -> GaugeChild:
        child = self._child(values)
        assert isinstance(child, GaugeChild)
        return child

    def set(self, value: float) -> None:
        self.labels().set(value)


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, help, labels)
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers")
        self.buckets = bounds

    def _new(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def labels(self, **values: object) -> HistogramChild:
        child = self._child(values)
        assert isinstance(child, HistogramChild)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _samples(self, key: tuple[str, ...], child: object) -> Iterable[str]:
        assert isinstance(child, HistogramChild)
        names, cumulative = self.label_names, 0
        for bound, count in zip(child.bounds, child.counts, strict=True):
            cumulative += count
            yield f"{self.name}_bucket{_labels_text(names, key, ('le', format_le(bound)))} {cumulative}"
        yield f"{self.name}_bucket{_labels_text(names, key, ('le', '+Inf'))} {child.count}"
        yield f"{self.name}_sum{_labels_text(names, key)} {format_value(child.sum)}"
        yield f"{self.name}_count{_labels_text(names, key)} {child.count}"


def format_le(bound: float) -> str:
    return repr(float(bound))


class Registry:
    """The metrics of one process (or of one component, in tests). Not global: create one
    at the composition root and pass it to whatever records or collects."""

    def __init__(self, *, collector_timeout: float = 2.0) -> None:
        self._families: dict[str, _Family] = {}
        self._collectors: list[tuple[str, Collector]] = []
        self._collector_timeout = collector_timeout
        self._collector_errors = self.counter(
            "convoy_metrics_collector_errors_total", "Collectors that failed or timed out during a scrape.", ["collector"]
        )

    def _add(self, family: _Family) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is registered twice")
        self._families[family.name] = family

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        family = Counter(name, help, labels)
        self._add(family)
        return family

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        family = Gauge(name, help, labels)
        self._add(family)
        return family

    def histogram(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        family = Histogram(name, help, labels, buckets)
        self._add(family)
        return family

    def get(self, name: str) -> _Family | None:
        return self._families.get(name)

    def collector(self, name: str, collect: Collector) -> None:
        """Run `collect` (sync, or async and bounded by the registry's timeout) before
        every scrape. A collector that fails is counted and logged; the scrape goes on."""
        self._collectors.append((name, collect))

    async def collect(self) -> None:
        for name, collect in self._collectors:
            try:
                result = collect()
                if result is not None:
                    async with asyncio.timeout(self._collector_timeout):
                        await result
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - one broken sample must not hide the others
                self._collector_errors.labels(collector=name).inc()
                log.warning("metrics collector failed", collector=name, error=f"{type(error).__name__}: {error}")

    def render(self) -> str:
        lines: list[str] = []
        for family in self._families.values():
            lines.extend(family.render())
        return "\n".join(lines) + "\n"

    async def exposition(self) -> str:
        """Collect, then render: the body of a `/metrics` answer."""
        await self.collect()
        return self.render()


# -- readiness ------------------------------------------------------------------------------


CheckAnswer = tuple[bool, str] | tuple[bool, str, float]
"""(ok, detail) or (ok, detail, since): the wall-clock time since which it holds."""


@dataclass(frozen=True, slots=True)
class Check:
    """One condition of readiness: `probe` answers (ok, detail[, since])."""

    name: str
    probe: Callable[[], Awaitable[CheckAnswer] | CheckAnswer]


async def readiness(checks: Sequence[Check], *, timeout: float = 2.0) -> tuple[bool, dict[str, object]]:
    """Run every check (each bounded by `timeout`; a failure or timeout is "not ready")
    and answer (ready, a JSON-able body naming each check's outcome, and since when it
    holds where the check knows)."""
    results: dict[str, object] = {}
    ready = True
    for check in checks:
        since: float | None = None
        try:
            answer = check.probe()
            if not isinstance(answer, tuple):
                async with asyncio.timeout(timeout):
                    answer = await answer
            ok, detail = answer[0], answer[1]
            if len(answer) > 2:
                since = answer[2]  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            ok, detail = False, f"no answer within {timeout:g}s"
        except Exception as error:  # noqa: BLE001 - a failing probe means "not ready", not a 500
            ok, detail = False, f"{type(error).__name__}: {error}"
        ready = ready and ok
        result: dict[str, object] = {"ok": ok, "detail": detail}
        if since is not None:
            result["since"] = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        results[check.name] = result
    return ready, {"ready": ready, "checks": results}
