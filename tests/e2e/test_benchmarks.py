"""Every benchmark still runs: `bench/run --quick` on a copy of docs/performance.md.

The real runs take minutes and are not part of the test suite, so a change could break a
benchmark unnoticed until someone measures (a planner that records more than its
decisions once left bench/planner.py waiting forever for a checkpoint). The quick run
starts the same servers and processes with small settings; its figures mean nothing and
only go to the copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_benchmark_runs_and_prints_its_result(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    shutil.copy(ROOT / "docs" / "performance.md", doc)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run"), "--quick", "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    results = re.findall(r"^RESULT (.+)$", done.stdout, re.M)
    assert len(results) == 5, done.stdout[-3000:]
    rows = [line for line in doc.read_text().splitlines() if line.endswith("(--quick) |")]
    assert sorted(row.split("|")[1].strip(" `") for row in rows) == ["agents", "api", "eventstore", "planner", "ui"], rows
