"""A small exec runtime for tests: `fake_runtime.py --store DIR apply|fetch|delete`.

It follows the exec contract (services/agent/runtimes/exec.py, execstatus.py): the workload
arrives as JSON on stdin and in CONVOY_* variables; apply records it under DIR, fetch
answers with a JSON status (or, with FAKE_FETCH=exit, only with exit 0 / 2), delete forgets
it. What the "workload" does is chosen by its first program's env FAKE_BEHAVIOUR:

  healthy (default)  progressing for FAKE_READY_AFTER seconds (0.2), then healthy
  crash              failed with crash_loop after 0.1s
  never_ready        progressing until the spec's progress deadline, then progress_deadline
  reject             apply exits 1 (the spec cannot run here)
  tempfail:N         apply exits 75 (unavailable) the first N times
  hang               apply starts a child and never exits (the runtime's timeout kills both)

A stored workload whose "edited" flag a test set by hand is reported drifted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


def seconds(duration: str) -> float:
    return float(duration.rstrip("s")) if duration else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("action", choices=["apply", "fetch", "delete"])
    arguments = parser.parse_args()
    document = json.loads(sys.stdin.read() or "{}")
    assert os.environ["CONVOY_ACTION"] == arguments.action
    key = (os.environ["CONVOY_NAMESPACE"], os.environ["CONVOY_APPLICATION"], os.environ["CONVOY_SERVICE"])
    path = arguments.store.joinpath(*key[:2], f"{key[2]}.json")
    return {"apply": apply, "fetch": fetch, "delete": delete}[arguments.action](path, document)


def behaviour(document: dict) -> str:
    programs = document.get("spec", {}).get("programs", [])
    return programs[0].get("env", {}).get("FAKE_BEHAVIOUR", "healthy") if programs else "healthy"


def apply(path: Path, document: dict) -> int:
    assert document["generation"] == int(os.environ["CONVOY_GENERATION"])
    assert document["spec_hash"] == os.environ["CONVOY_SPEC_HASH"]
    mode = behaviour(document)
    if mode == "reject":
        print("invalid spec: FAKE_BEHAVIOUR=reject cannot run here", file=sys.stderr)
        return 1
    if mode.startswith("tempfail:"):
        counter = path.with_suffix(".attempts")
        counter.parent.mkdir(parents=True, exist_ok=True)
        attempts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempts + 1))
        if attempts < int(mode.split(":")[1]):
            print(f"control plane busy (attempt {attempts + 1})")
            return 75
    if mode == "hang":
        subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])  # a child that never ends
        print("applying forever", flush=True)
        signal.pause()  # hang until the runtime's timeout kills the process group
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"document": document, "applied_at": time.time(), "instance": uuid.uuid4().hex, "edited": False}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(path)
    print(f"applied generation {document['generation']}")
    return 0


def fetch(path: Path, document: dict) -> int:
    if not path.exists():
        print(json.dumps({"phase": "absent"}))
        return 0
    record = json.loads(path.read_text())
    applied = record["document"]
    drifted = bool(record["edited"])
    if os.environ.get("FAKE_FETCH") == "exit":
        return 2 if drifted else 0
    spec = applied["spec"]
    replicas = int(spec.get("replicas", 0))
    age = time.time() - record["applied_at"]
    mode = behaviour(applied)
    status: dict = {"phase": "progressing", "ready": 0, "desired": replicas}
    if mode == "crash" and age > 0.1:
        status.update(phase="failed", reason="crash_loop", message="container web exited with code 3 (restarted 3 times)")
    elif mode == "never_ready" and age > seconds(spec.get("progressDeadline", "")):
        status.update(phase="failed", reason="progress_deadline", message="0 of 1 ready at the progress deadline")
    elif mode == "progressing":
        pass  # progressing forever: judging the deadline is left to the runtime
    elif mode in ("healthy",) or mode.startswith("tempfail:"):
        if age > float(os.environ.get("FAKE_READY_AFTER", "0.2")):
            status.update(phase="healthy", ready=replicas)
    status.update(
        generation=applied["generation"],
        spec_hash=applied["spec_hash"],
        intent_id=applied["intent_id"],
        drifted=drifted,
        message=status.get("message", f"{status['ready']}/{replicas} ready"),
    )
    print("fetching", applied["namespace"], applied["service"])  # logs may come before the status line
    print(json.dumps(status))
    return 2 if drifted else 0


def delete(path: Path, document: dict) -> int:
    path.unlink(missing_ok=True)
    path.with_suffix(".attempts").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
