"""Every benchmark still runs: `bench/run --quick --curve` on a copy of docs/performance.md.

The real runs take minutes and are not part of the test suite, so a change could break a
benchmark unnoticed until someone measures (a planner that records more than its
decisions once left bench/planner.py waiting forever for a checkpoint). The quick run
starts the same servers and processes with small settings; its figures mean nothing and
only go to the copy. With `--curve`, every benchmark whose bench/run entry declares a cost
curve must print that curve (two small load points), and its charts must be drawn beside the
copy — exactly those benchmarks' curves, no more, no fewer."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench_run() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bench_run_names", str(ROOT / "bench" / "run"))
    spec = importlib.util.spec_from_loader("bench_run_names", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run_names"] = module  # dataclasses look their module up while the class is built
    loader.exec_module(module)
    return module


def benchmark_names() -> list[str]:
    """The benchmarks bench/run knows (its BENCHMARKS list), so a new one is checked too."""
    return sorted(b.name for b in bench_run().BENCHMARKS)


@pytest.mark.timeout(900)
def test_every_benchmark_runs_and_prints_its_result_and_curve(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    shutil.copy(ROOT / "docs" / "performance.md", doc)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run"), "--quick", "--curve", "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=840,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    results = re.findall(r"^RESULT (.+)$", done.stdout, re.M)
    names = benchmark_names()
    assert len(names) >= 7  # eventstore, api, agents, planner, ui, growth, snapshots
    assert len(results) == len(names), done.stdout[-3000:]
    rows = [line for line in doc.read_text().splitlines() if line.endswith("(--quick) |")]
    assert sorted(row.split("|")[1].strip(" `") for row in rows) == names, rows

    m = bench_run()
    declared = {b.curve.name: b for b in m.BENCHMARKS if b.curve is not None}
    assert set(declared) == {"append", "api", "agents", "fleet"}
    text = doc.read_text()
    parts = m.parse_curves(text[text.index(m.CURVES_BEGIN) : text.index(m.CURVES_END)])
    assert sorted(parts) == sorted(declared), done.stdout[-3000:]
    for name, benchmark in declared.items():
        assert "(--quick)" in parts[name]
        table = [line for line in parts[name].splitlines() if line.startswith("| ")]
        assert table[0].startswith(f"| {benchmark.curve.x_key} |")
        assert [row.split("|")[1].strip() for row in table[1:]] == list(benchmark.curve.quick_points)
        charts = sorted((tmp_path / "curves").glob(f"{name}-*.svg"))
        assert charts, f"no chart of {name}"
        for chart in charts:
            assert f"(curves/{chart.name})" in parts[name]
            assert ET.fromstring(chart.read_text()).tag == "{http://www.w3.org/2000/svg}svg"
