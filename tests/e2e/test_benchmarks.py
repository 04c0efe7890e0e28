"""Every benchmark still runs: `bench/run --quick` on a copy of docs/performance.md.

The real runs take minutes and are not part of the test suite, so a change could break a
benchmark unnoticed until someone measures (a planner that records more than its
decisions once left bench/planner.py waiting forever for a checkpoint). The quick run
starts the same servers and processes with small settings; its figures mean nothing and
only go to the copy."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def benchmark_names() -> list[str]:
    """The benchmarks bench/run knows (its BENCHMARKS list), so a new one is checked too."""
    loader = importlib.machinery.SourceFileLoader("bench_run_names", str(ROOT / "bench" / "run"))
    spec = importlib.util.spec_from_loader("bench_run_names", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run_names"] = module  # dataclasses look their module up while the class is built
    loader.exec_module(module)
    return sorted(b.name for b in module.BENCHMARKS)


def test_every_benchmark_runs_and_prints_its_result(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    shutil.copy(ROOT / "docs" / "performance.md", doc)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run"), "--quick", "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    results = re.findall(r"^RESULT (.+)$", done.stdout, re.M)
    names = benchmark_names()
    assert len(names) >= 7  # eventstore, api, agents, planner, ui, growth, snapshots
    assert len(results) == len(names), done.stdout[-3000:]
    rows = [line for line in doc.read_text().splitlines() if line.endswith("(--quick) |")]
    assert sorted(row.split("|")[1].strip(" `") for row in rows) == names, rows
