"""bench/plot.py: cost-curve charts as SVG, checked by reading the SVG back.

The charts go into docs/ and are rewritten by every `make bench`, so the same data must give
the same bytes, the file must be well-formed XML, and each marker must sit where its data
says on the axes drawn (log load axis, linear or log figure axis)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from bench import plot

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def markers(root: ET.Element) -> dict[str, list[tuple[float, float, float, float]]]:
    """By series key: (data x, data y, cx, cy) of each marker."""
    found: dict[str, list[tuple[float, float, float, float]]] = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "series":
            found[group.get("data-key", "")] = [
                (float(c.get("data-x", "nan")), float(c.get("data-y", "nan")), float(c.get("cx", "nan")), float(c.get("cy", "nan")))
                for c in group.iter(f"{SVG}circle")
            ]
    return found


def ticks(root: ET.Element, axis: str) -> list[tuple[float, str]]:
    """(value, label) of the ticks of `axis` ('x' or 'y')."""
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == f"{axis}-ticks":
            return [(float(t.get("data-value", "nan")), t.text or "") for t in group.iter(f"{SVG}text")]
    raise AssertionError(f"no {axis}-ticks")


def test_families_come_from_the_key_suffix() -> None:
    cases = {
        "append_eps": "throughput", "grpc_cps": "throughput", "rest_rps": "throughput", "events_per_s": "throughput",
        "p99_ms": "latency", "intent_p99_ms": "latency",
        "fleet_converge_s": "duration",
        "cpu_ms_per_instance": "cpu", "grpc_cpu_ms": "cpu",
        "ratio_vs_raw": "ratio", "ratio": "ratio", "grpc_vs_echo": "ratio", "readall_vs_fetch": "ratio",
        "rss_mb": "memory",
        "lost": "count", "instances": "count",
    }
    assert {key: plot.family(key).name for key in cases} == cases


def test_points_land_where_the_data_says() -> None:
    # x = 1, 10, 100 on a log axis: left edge, middle, right edge; y = 0, 50, 100 on 0..100.
    svg = plot.chart(title="t", x_label="writers", y_label="per second",
                     series=[plot.Series("a_eps", ((1, 0.0), (10, 50.0), (100, 100.0)))])
    root = parse(svg)
    middle_x = (plot.LEFT + plot.RIGHT) / 2
    middle_y = (plot.TOP + plot.BOTTOM) / 2
    assert markers(root)["a_eps"] == [
        (1, 0, plot.LEFT, plot.BOTTOM),
        (10, 50, middle_x, middle_y),
        (100, 100, plot.RIGHT, plot.TOP),
    ]
    polyline = next(root.iter(f"{SVG}polyline"))
    assert polyline.get("points") == f"{plot.LEFT:.2f},{plot.BOTTOM:.2f} {middle_x:.2f},{middle_y:.2f} {plot.RIGHT:.2f},{plot.TOP:.2f}"
    assert [v for v, _ in ticks(root, "y")] == [0, 20, 40, 60, 80, 100]


def test_a_point_between_decades_sits_at_its_logarithm() -> None:
    root = parse(plot.chart(title="t", x_label="x", y_label="y",
                            series=[plot.Series("k", ((1, 1.0), (4, 2.0), (256, 3.0)))]))
    (_, _, cx1, _), (_, _, cx4, _), (_, _, cx256, _) = markers(root)["k"]
    assert (cx1, cx256) == (plot.LEFT, plot.RIGHT)
    assert cx4 == pytest.approx(plot.LEFT + (plot.RIGHT - plot.LEFT) * math.log(4) / math.log(256), abs=0.01)


def test_log_axis_ticks() -> None:
    # Under three decades: 1, 2, 5 of each decade inside the range; from three on: decades.
    root = parse(plot.chart(title="t", x_label="x", y_label="y", series=[plot.Series("k", ((1, 1.0), (256, 2.0)))]))
    assert ticks(root, "x") == [(1, "1"), (2, "2"), (5, "5"), (10, "10"), (20, "20"), (50, "50"), (100, "100"), (200, "200")]
    root = parse(plot.chart(title="t", x_label="x", y_label="y", series=[plot.Series("k", ((100, 1.0), (10000, 2.0)))]))
    assert ticks(root, "x") == [(100, "100"), (200, "200"), (500, "500"), (1000, "1,000"), (2000, "2,000"),
                                (5000, "5,000"), (10000, "10,000")]
    root = parse(plot.chart(title="t", x_label="x", y_label="y", series=[plot.Series("k", ((1, 1.0), (1000, 2.0)))]))
    assert [v for v, _ in ticks(root, "x")] == [1, 10, 100, 1000]
    # too narrow for three round ticks (a quick run's 2 → 4): the loads themselves
    root = parse(plot.chart(title="t", x_label="x", y_label="y", series=[plot.Series("k", ((2, 1.0), (4, 2.0), (4, 3.0)))]))
    assert ticks(root, "x") == [(2, "2"), (4, "4")]
    root = parse(plot.chart(title="t", x_label="x", y_label="y", series=[plot.Series("k", ((30, 1.0),))]))
    assert ticks(root, "x") == [(30, "30")]  # a lone load: 15 → 60, which holds only 20 and 50
    axis = plot.x_axis([1, 256])
    assert axis.log and axis.fraction(16) == pytest.approx(0.5)


def test_figures_spanning_two_decades_get_a_log_axis() -> None:
    root = parse(plot.chart(title="t", x_label="x", y_label="ms",
                            series=[plot.Series("p99_ms", ((1, 2.0), (10, 20.0), (100, 600.0)))]))
    assert [v for v, _ in ticks(root, "y")] == [1, 10, 100, 1000]
    (_, _, _, cy2), (_, _, _, cy20), _ = markers(root)["p99_ms"]
    decade = (plot.BOTTOM - plot.TOP) / 3
    assert cy2 - cy20 == pytest.approx(decade, abs=0.02)  # 2 → 20 is one decade up
    assert cy2 == pytest.approx(plot.BOTTOM - decade * math.log10(2), abs=0.01)
    assert "log scale" in "".join(root.itertext())


def test_same_data_same_bytes_and_a_legend_per_figure() -> None:
    points = [(4.0, {"append_eps": 2000.0, "raw_eps": 900.0, "p99_ms": 3.5}), (1.0, {"append_eps": 600.0, "raw_eps": 1300.0, "p99_ms": 2.7})]
    first = plot.curve_charts("append", "writers", points)
    assert first == plot.curve_charts("append", "writers", list(reversed(points)))
    assert list(first) == ["append-throughput.svg", "append-latency.svg"]
    root = parse(first["append-throughput.svg"])
    assert list(markers(root)) == ["append_eps", "raw_eps"]
    assert [x for x, *_ in markers(root)["append_eps"]] == [1, 4]  # ascending load
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.text for t in legend.iter(f"{SVG}text")] == ["append_eps", "raw_eps"]
    assert "writers" in "".join(root.itertext())


def test_one_point_and_flat_figures_still_draw() -> None:
    root = parse(plot.chart(title="t", x_label="x", y_label="y", series=[plot.Series("lost", ((10, 0.0),))]))
    ((_, _, cx, cy),) = markers(root)["lost"]
    assert plot.LEFT < cx < plot.RIGHT and cy == plot.BOTTOM
    with pytest.raises(ValueError):
        plot.chart(title="t", x_label="x", y_label="y", series=[])


def test_text_is_escaped() -> None:
    root = parse(plot.chart(title="a <b> & c", x_label="x", y_label="y", series=[plot.Series("k", ((1, 1.0), (2, 2.0)))]))
    assert next(root.iter(f"{SVG}title")).text == "a <b> & c"
