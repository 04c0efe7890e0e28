"""The metrics registry renders Prometheus text format 0.0.4 that a parser reads back:
HELP/TYPE lines, escaped label values, cumulative histogram buckets; collectors run
before a scrape, and a failing one is counted without hiding the rest."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from eventstore.metrics import CONTENT_TYPE, Check, Registry, readiness

Sample = tuple[str, frozenset[tuple[str, str]]]

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[Sample, float]]:
    """A small text-format parser: ({family: (type, help)}, {(name, labels): value})."""
    assert text.endswith("\n")
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: dict[Sample, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help = line[7:].partition(" ")
            helps[name] = help.replace("\\n", "\n").replace("\\\\", "\\")
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helps, f"TYPE before HELP for {name}"
            assert kind in ("counter", "gauge", "histogram"), line
            families[name] = (kind, helps[name])
        else:
            match = _LINE.match(line)
            assert match, f"malformed sample line {line!r}"
            name, _, raw_labels, raw_value = match.groups()
            labels: list[tuple[str, str]] = []
            rest = raw_labels or ""
            while rest:
                pair = _PAIR.match(rest)
                assert pair, f"malformed labels in {line!r}"
                labels.append((pair.group(1), _unescape(pair.group(2))))
                rest = rest[pair.end():]
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
            assert family in families, f"sample {name} of no declared family"
            key = (name, frozenset(labels))
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(raw_value.replace("+Inf", "inf"))
    return families, samples


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def test_counters_gauges_and_help_round_trip() -> None:
    registry = Registry()
    requests = registry.counter("convoy_requests_total", "Requests.\nSecond line with a \\ backslash.", ["method", "code"])
    lag = registry.gauge("convoy_lag_events", "Lag.")
    requests.labels(method="Deploy", code=200).inc()
    requests.labels(method="Deploy", code=200).inc(2)
    requests.labels(method="Get", code=404).inc()
    lag.set(17)
    families, samples = parse(registry.render())
    assert families["convoy_requests_total"] == ("counter", "Requests.\nSecond line with a \\ backslash.")
    assert families["convoy_lag_events"] == ("gauge", "Lag.")
    assert samples[("convoy_requests_total", labels(method="Deploy", code="200"))] == 3
    assert samples[("convoy_requests_total", labels(method="Get", code="404"))] == 1
    assert samples[("convoy_lag_events", frozenset())] == 17


def test_label_values_are_escaped() -> None:
    registry = Registry()
    weird = 'a "quoted" \\ back\nslash'
    registry.gauge("g", "h", ["v"]).labels(v=weird).set(1.5)
    text = registry.render()
    assert 'v="a \\"quoted\\" \\\\ back\\nslash"' in text
    _, samples = parse(text)
    assert samples[("g", labels(v=weird))] == 1.5


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    registry = Registry()
    h = registry.histogram("convoy_latency_seconds", "Latency.", ["method"], buckets=[0.1, 1, 10])
    for value in (0.05, 0.1, 0.5, 3, 30):
        h.labels(method="Get").observe(value)
    families, samples = parse(registry.render())
    assert families["convoy_latency_seconds"][0] == "histogram"
    bucket = lambda le: samples[("convoy_latency_seconds_bucket", labels(method="Get", le=le))]  # noqa: E731
    assert [bucket("0.1"), bucket("1.0"), bucket("10.0"), bucket("+Inf")] == [2, 3, 4, 5]
    assert samples[("convoy_latency_seconds_count", labels(method="Get"))] == 5
    assert math.isclose(samples[("convoy_latency_seconds_sum", labels(method="Get"))], 33.65)


def test_unlabelled_families_render_a_zero_and_special_values_render() -> None:
    registry = Registry()
    registry.counter("c_total", "c")
    registry.gauge("g", "g").set(float("inf"))
    registry.gauge("n", "n").set(float("nan"))
    text = registry.render()
    assert "c_total 0\n" in text and "g +Inf\n" in text and "n NaN\n" in text


def test_misuse_is_refused() -> None:
    registry = Registry()
    registry.counter("x_total", "x", ["a"])
    with pytest.raises(ValueError, match="twice"):
        registry.gauge("x_total", "x")
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.gauge("bad-name", "x")
    with pytest.raises(ValueError, match="invalid label"):
        registry.gauge("y", "y", ["le"])
    with pytest.raises(ValueError, match="takes the labels"):
        registry.get("x_total").labels(b="1")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="only goes up"):
        registry.counter("z_total", "z").inc(-1)


async def test_collectors_run_before_a_scrape_and_a_failing_one_is_counted() -> None:
    registry = Registry(collector_timeout=0.05)
    mirrored = registry.counter("mirrored_total", "A component's own counter.")
    sampled = registry.gauge("sampled", "Sampled with I/O.")
    stats = {"n": 0}

    async def sample() -> None:
        await asyncio.sleep(0)
        sampled.set(42)

    async def hangs() -> None:
        await asyncio.Event().wait()

    def broken() -> None:
        raise RuntimeError("boom")

    registry.collector("mirror", lambda: mirrored.set_total(stats["n"]))
    registry.collector("sample", sample)
    registry.collector("hangs", hangs)
    registry.collector("broken", broken)
    stats["n"] = 7
    _, samples = parse(await registry.exposition())
    assert samples[("mirrored_total", frozenset())] == 7
    assert samples[("sampled", frozenset())] == 42
    assert samples[("convoy_metrics_collector_errors_total", labels(collector="hangs"))] == 1
    assert samples[("convoy_metrics_collector_errors_total", labels(collector="broken"))] == 1
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


async def test_readiness_names_every_check_and_fails_on_any() -> None:
    async def slow() -> tuple[bool, str]:
        await asyncio.Event().wait()
        return True, ""

    def raises() -> tuple[bool, str]:
        raise ConnectionError("no route")

    ok, body = await readiness([Check("a", lambda: (True, "fine"))])
    assert ok and body == {"ready": True, "checks": {"a": {"ok": True, "detail": "fine"}}}
    ok, body = await readiness([Check("a", lambda: (True, "fine")), Check("slow", slow), Check("raises", raises)], timeout=0.05)
    assert not ok
    assert body["checks"]["slow"] == {"ok": False, "detail": "no answer within 0.05s"}  # type: ignore[index]
    assert body["checks"]["raises"] == {"ok": False, "detail": "ConnectionError: no route"}  # type: ignore[index]
