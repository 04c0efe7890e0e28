"""bench/run: runs benchmarks, keeps the RESULT table of docs/performance.md current.

Benchmarks take minutes, so these tests run bench/run on stand-in benchmark scripts and
on a temporary copy of docs/performance.md: the rows of the benchmarks that ran are
replaced, failed ones keep their old row, and nothing outside the markers changes.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "run"
DOC = ROOT / "docs" / "performance.md"


def bench_run() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bench_run", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up while the class is built
    loader.exec_module(module)
    return module


def outside_markers(text: str) -> tuple[str, str]:
    m = bench_run()
    return text[: text.index(m.BEGIN)], text[text.index(m.END) :]


def test_it_is_an_executable_script_covering_every_benchmark() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    scripts = {b.script for b in bench_run().BENCHMARKS}
    # every script in bench/ (a module with a `__main__` block; stats.py and plot.py are libraries)
    runnable = {p.name for p in (ROOT / "bench").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert runnable >= {"eventstore.py", "api.py", "agents.py", "planner.py"}
    missing = runnable - scripts
    assert not missing, f"bench/run does not run {missing}"


def test_the_committed_table_is_in_the_form_bench_run_writes() -> None:
    m = bench_run()
    text = DOC.read_text()
    assert text.index(m.BEGIN) < text.index("\n## "), "the table sits at the top, before the first section"
    assert m.update_document(text, {}) == text
    rows = m.parse_table(text[text.index(m.BEGIN) : text.index(m.END)])
    assert set(rows) == {b.name for b in m.BENCHMARKS}


def test_result_line_is_the_last_result_without_the_word() -> None:
    m = bench_run()
    output = "warming up\nRESULT a=1\nnoise\nRESULT a=2 b=3\ntrailing log line\n"
    assert m.result_line(output) == "a=2 b=3"
    assert m.result_line("no result here\n") is None


def test_updating_replaces_only_the_rows_that_ran(tmp_path: Path) -> None:
    m = bench_run()
    doc = tmp_path / "performance.md"
    doc.write_text(DOC.read_text())
    before = m.parse_table(doc.read_text())
    new = m.update_document(doc.read_text(), {"api": m.Row("api", "grpc_cps=9999 grpc_p99_ms=1.0 rest_rps=8888", "2030-01-02")})
    after = m.parse_table(new[new.index(m.BEGIN) : new.index(m.END)])
    assert after["api"] == m.Row("api", "grpc_cps=9999 grpc_p99_ms=1.0 rest_rps=8888", "2030-01-02")
    assert {k: v for k, v in after.items() if k != "api"} == {k: v for k, v in before.items() if k != "api"}
    assert outside_markers(new) == outside_markers(DOC.read_text())
    assert m.update_document(new, {}) == new  # stable


def test_a_run_updates_a_copy_and_keeps_the_rows_of_failed_benchmarks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = bench_run()
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "good.py").write_text("import sys\nprint('RESULT x=1', flush=True)\nprint('RESULT x=2 y=a|b', sys.argv[1:])\n")
    (bench / "broken.py").write_text("print('RESULT x=3')\nraise SystemExit(3)\n")
    monkeypatch.setattr(m, "BENCH", bench)
    monkeypatch.setattr(m, "_python", lambda: sys.executable)
    monkeypatch.setattr(
        m, "BENCHMARKS", (m.Benchmark("eventstore", "good.py", ("--quick-arg",)), m.Benchmark("api", "broken.py", ()))
    )
    doc = tmp_path / "performance.md"
    doc.write_text(DOC.read_text())
    old_api = m.parse_table(doc.read_text())["api"]

    assert m.main(["--quick", "--doc", str(doc)]) == 1  # one benchmark failed
    out = capsys.readouterr().out
    assert "RESULT x=2" in out, "the benchmark's output is passed through"
    rows = m.parse_table(doc.read_text())
    assert rows["eventstore"].result == "x=2 y=a|b ['--quick-arg']"
    assert rows["eventstore"].measured.endswith("(--quick)")
    assert rows["api"] == old_api
    assert outside_markers(doc.read_text()) == outside_markers(DOC.read_text())
    assert DOC.read_text() != doc.read_text()


def test_quick_figures_never_go_into_the_real_document() -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_run().main(["--quick", "eventstore"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        bench_run().main(["--doc", "/nonexistent", "nosuchbench"])


# ---------------------------------------------------------------------------------------
# --curve: CURVE lines become a table in the document and SVG charts beside it

STAND_IN_CURVE = """\
import sys
import xml.etree.ElementTree as ET
args = sys.argv[1:]
points = args[args.index("--curve-points") + 1].split(",") if "--curve-points" in args else ["1", "4", "16"]
if "--curve" in args:
    for w in points:
        w = int(w)
        print(f"CURVE append writers={w} append_eps={1000 * w} p99_ms={w + 0.5} ratio_vs_group_commit=0.75", flush=True)
print("RESULT append_eps=1000 args=" + "_".join(args))
"""


def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripts: dict[str, str], benchmarks: list[tuple[str, str, str | None]]) -> ModuleType:
    """bench/run with BENCHMARKS = `benchmarks` (name, script, curve name or None) over the
    stand-in `scripts`."""
    m = bench_run()
    bench = tmp_path / "bench"
    bench.mkdir()
    for name, text in scripts.items():
        (bench / name).write_text(text)
    monkeypatch.setattr(m, "BENCH", bench)
    monkeypatch.setattr(m, "_python", lambda: sys.executable)
    monkeypatch.setattr(m, "BENCHMARKS", tuple(
        m.Benchmark(name, script, ("--q",), curve=m.Curve(curve, "writers", ("2", "8")) if curve else None)
        for name, script, curve in benchmarks
    ))
    return m


def curve_block(m: ModuleType, text: str) -> str:
    return text[text.index(m.CURVES_BEGIN) + len(m.CURVES_BEGIN) : text.index(m.CURVES_END)]


def test_the_committed_curves_block_is_in_the_form_bench_run_writes() -> None:
    m = bench_run()
    text = DOC.read_text()
    assert text.index(m.END) < text.index("\n## Cost curves") < text.index(m.CURVES_BEGIN), "the curves close the document"
    assert m.update_curves(text, {}) == text
    assert set(m.parse_curves(curve_block(m, text))) <= {b.curve.name for b in m.BENCHMARKS if b.curve}
    assert {b.name: b.curve.name for b in m.BENCHMARKS if b.curve} == {
        "eventstore": "append", "api": "api", "agents": "agents", "planner": "fleet"
    }
    for b in m.BENCHMARKS:
        assert "--curve" not in b.quick
        if b.curve:
            assert b.arguments(quick=True, curve=True) == (*b.quick, "--curve", "--curve-points", ",".join(b.curve.quick_points))
            assert b.arguments(quick=False, curve=True) == ("--curve",)
        else:
            assert b.arguments(quick=True, curve=True) == b.quick
        assert b.arguments(quick=False, curve=False) == ()


def without_curves() -> str:
    """docs/performance.md with an empty curves block: what the curve tests start from, so
    they do not depend on which curves the committed document holds."""
    m = bench_run()
    text = DOC.read_text()
    return text[: text.index(m.CURVES_BEGIN) + len(m.CURVES_BEGIN)] + "\nNo cost curve measured yet.\n" + text[text.index(m.CURVES_END) :]


def test_curve_lines_become_a_table_and_charts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = stand_ins(tmp_path, monkeypatch, {"es.py": STAND_IN_CURVE, "plain.py": "print('RESULT x=1')\n"},
                  [("eventstore", "es.py", "append"), ("ui", "plain.py", None)])
    doc = tmp_path / "docs" / "performance.md"
    doc.parent.mkdir()
    doc.write_text(without_curves())

    assert m.main(["--quick", "--curve", "--doc", str(doc)]) == 0
    text = doc.read_text()
    rows = m.parse_table(text)
    assert rows["eventstore"].result == "append_eps=1000 args=--q_--curve_--curve-points_2,8"
    assert rows["ui"].result == "x=1"
    parts = m.parse_curves(curve_block(m, text))
    assert list(parts) == ["append"]
    lines = parts["append"].splitlines()
    assert lines[0] == "### `append` (`eventstore`, by writers)"
    assert lines[2].startswith("Measured ") and "(--quick)" in lines[2]
    table = [line for line in lines if line.startswith("|")]
    assert table == [
        "| writers | append_eps | p99_ms | ratio_vs_group_commit |",
        "|---:|---:|---:|---:|",
        "| 2 | 2000 | 2.5 | 0.75 |",
        "| 8 | 8000 | 8.5 | 0.75 |",
    ]
    images = [line for line in lines if line.startswith("![")]
    assert images == [
        "![append-throughput](curves/append-throughput.svg)",
        "![append-latency](curves/append-latency.svg)",
        "![append-ratio](curves/append-ratio.svg)",
    ]
    charts = sorted(p.name for p in (doc.parent / "curves").iterdir())
    assert charts == ["append-latency.svg", "append-ratio.svg", "append-throughput.svg"]
    throughput = ET.fromstring((doc.parent / "curves" / "append-throughput.svg").read_text())
    circles = [(c.get("data-x"), c.get("data-y")) for c in throughput.iter("{http://www.w3.org/2000/svg}circle")]
    assert circles == [("2", "2000"), ("8", "8000")]
    assert outside_curves(m, text) == outside_curves(m, m.update_document(without_curves(), {k: rows[k] for k in ("eventstore", "ui")}))

    # a second run of the same data rewrites nothing but the date line
    before = {p.name: p.read_bytes() for p in (doc.parent / "curves").iterdir()}
    assert m.main(["--quick", "--curve", "--doc", str(doc)]) == 0
    assert {p.name: p.read_bytes() for p in (doc.parent / "curves").iterdir()} == before


def outside_curves(m: ModuleType, text: str) -> tuple[str, str]:
    return text[: text.index(m.CURVES_BEGIN)], text[text.index(m.CURVES_END) :]


def test_without_curve_no_curve_is_asked_for_or_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = stand_ins(tmp_path, monkeypatch, {"es.py": STAND_IN_CURVE}, [("eventstore", "es.py", "append")])
    doc = tmp_path / "performance.md"
    doc.write_text(without_curves())
    assert m.main(["--quick", "--doc", str(doc)]) == 0
    assert m.parse_table(doc.read_text())["eventstore"].result == "append_eps=1000 args=--q"
    assert curve_block(m, doc.read_text()) == curve_block(m, without_curves())
    assert not (tmp_path / "curves").exists()


@pytest.mark.parametrize(
    "script, problem",
    [
        ("print('RESULT a=1')\n", "no CURVE append line"),
        ("print('CURVE append writers=1 a_eps=x')\nprint('RESULT a=1')\n", "not a number"),
        ("print('CURVE append writers=1')\nprint('RESULT a=1')\n", "needs a name, a load and a figure"),
        ("print('CURVE other writers=1 a_eps=1')\nprint('RESULT a=1')\n", "expected CURVE append writers="),
        ("print('CURVE append clients=1 a_eps=1')\nprint('RESULT a=1')\n", "expected CURVE append writers="),
        ("print('CURVE append writers=1 a_eps=1')\nprint('CURVE append writers=2 b_eps=1')\nprint('RESULT a=1')\n",
         "different figures"),
        ("print('CURVE append writers=1 a_eps=1')\nprint('CURVE append writers=1 a_eps=2')\nprint('RESULT a=1')\n",
         "two points at writers=1"),
        ("print('CURVE append writers=1 a_eps=1')\nraise SystemExit(2)\n", "exit 2"),
    ],
)
def test_a_missing_or_malformed_curve_fails_that_benchmark_after_running_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], script: str, problem: str
) -> None:
    m = stand_ins(tmp_path, monkeypatch, {"bad.py": script, "es.py": STAND_IN_CURVE.replace("append", "fleet")},
                  [("eventstore", "bad.py", "append"), ("planner", "es.py", "fleet")])
    doc = tmp_path / "performance.md"
    doc.write_text(without_curves())
    old = m.parse_table(doc.read_text())["eventstore"]

    assert m.main(["--quick", "--curve", "--doc", str(doc)]) == 1
    out = capsys.readouterr().out
    assert "== eventstore: failed (" in out and problem in out, out
    text = doc.read_text()
    assert m.parse_table(text)["eventstore"] == old, "a failed benchmark keeps its row"
    assert m.parse_table(text)["planner"].measured.endswith("(--quick)"), "the rest still ran"
    assert list(m.parse_curves(curve_block(m, text))) == ["fleet"]
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["fleet-latency.svg", "fleet-ratio.svg", "fleet-throughput.svg"]


def test_curves_not_measured_keep_their_old_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = stand_ins(tmp_path, monkeypatch, {"es.py": STAND_IN_CURVE, "fleet.py": STAND_IN_CURVE.replace("append", "fleet")},
                  [("eventstore", "es.py", "append"), ("planner", "fleet.py", "fleet")])
    doc = tmp_path / "performance.md"
    doc.write_text(without_curves())
    assert m.main(["--quick", "--curve", "--doc", str(doc)]) == 0
    parts = m.parse_curves(curve_block(m, doc.read_text()))
    assert list(parts) == ["append", "fleet"]
    # an old part of a curve nobody measures any more stays too, after the known ones
    text = m.update_curves(doc.read_text(), {})
    text = text.replace(m.CURVES_END, "\n### `retired` (`gone`, by x)\n\nMeasured long ago.\n" + m.CURVES_END)
    doc.write_text(text)

    (tmp_path / "bench" / "fleet.py").write_text(STAND_IN_CURVE.replace("append", "fleet").replace("1000 * w", "7 * w"))
    assert m.main(["--quick", "--curve", "--doc", str(doc), "planner"]) == 0
    after = m.parse_curves(curve_block(m, doc.read_text()))
    assert list(after) == ["append", "fleet", "retired"]
    assert after["append"] == parts["append"]
    assert after["retired"] == "### `retired` (`gone`, by x)\n\nMeasured long ago."
    assert "| 8 | 56 | 8.5 | 0.75 |" in after["fleet"]
    assert m.update_curves(doc.read_text(), {}) == doc.read_text()  # stable


def test_a_family_a_curve_no_longer_has_loses_its_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = stand_ins(tmp_path, monkeypatch, {"es.py": STAND_IN_CURVE}, [("eventstore", "es.py", "append")])
    doc = tmp_path / "performance.md"
    doc.write_text(without_curves())
    assert m.main(["--quick", "--curve", "--doc", str(doc)]) == 0
    (tmp_path / "bench" / "es.py").write_text(STAND_IN_CURVE.replace(" p99_ms={w + 0.5}", ""))
    (tmp_path / "curves" / "unrelated.svg").write_text("<svg/>")
    assert m.main(["--quick", "--curve", "--doc", str(doc)]) == 0
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["append-ratio.svg", "append-throughput.svg", "unrelated.svg"]
