#!/usr/bin/env python3
"""`make stress`: the fault and crash tests (marker `fault`), N times in a row.

A fault test that passes once proves little: where its fault lands differs from run to run
(a kill placed by progress, a batch formed by timing), so a rare failure shows only when it
runs again and again. Every run goes to the end; the summary names each test that failed
and in which runs, and the exit code is 1 if any did. Not part of CI: it takes N times
as long as the fault tests. The whole output of a run that failed is kept in
`.stress/run-<N>.log` (the summary says where).

Usage: scripts/stress.py [N] [-- extra pytest args]   (N defaults to 10)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".stress"
FAILED = re.compile(r"^(FAILED|ERROR) (\S+)")


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    runs = int(argv[0]) if argv else 10
    failures: dict[str, list[int]] = defaultdict(list)
    broken: list[int] = []
    began = time.monotonic()
    for run in range(1, runs + 1):
        print(f"== stress run {run} of {runs}", flush=True)
        command = [sys.executable, "-m", "pytest", "-q", "-m", "fault", "-rfE", "-p", "no:cacheprovider", *extra]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        tail = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
        print(f"   {tail[0]}", flush=True)
        found = [m.group(2) for line in result.stdout.splitlines() if (m := FAILED.match(line))]
        for test in found:
            failures[test].append(run)
        if result.returncode != 0:
            kept = LOGS / f"run-{run}.log"
            LOGS.mkdir(exist_ok=True)
            kept.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
            print(f"   failed: {', '.join(found) or 'no test failure (collection or crash)'}; output in {kept}", flush=True)
            if not found:
                broken.append(run)
    minutes = (time.monotonic() - began) / 60
    print(f"\nstress: {runs} runs in {minutes:.1f} min")
    for test, where in sorted(failures.items()):
        print(f"  FAILED {test} in run(s) {', '.join(map(str, where))}")
    for run in broken:
        print(f"  run {run} failed without a test failure (collection or crash)")
    if not failures and not broken:
        print("  no failure")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
