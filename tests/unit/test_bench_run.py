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
    missing = {p.name for p in (ROOT / "bench").glob("*.py")} - scripts
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
