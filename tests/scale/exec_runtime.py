"""An exec runtime for the scale tests whose every side effect is counted: its apply,
fetch and delete commands are one small script (`COMMANDS`). Apply and delete append one
line (the effect, and the agent process that ran it) to `effects.jsonl` under a lock;
fetch reads the file back and reports each workload's generation and spec hash, so the
file is both the record of every effect and the runtime's live state. With `kill_after`
N, the command that makes the N-th apply kills its own agent (SIGKILL, its parent) right
after the effect, once: a crash at the worst moment, chosen by progress, not by time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMMANDS = r'''
"""apply / fetch / delete of the scale tests' exec runtime. argv: EFFECTS TRIGGER KILL_AFTER."""
import fcntl, json, os, signal, sys, time

effects, trigger, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
action, namespace, service = os.environ["CONVOY_ACTION"], os.environ["CONVOY_NAMESPACE"], os.environ["CONVOY_SERVICE"]
agent = os.getppid()
with open(effects, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_SH if action == "fetch" else fcntl.LOCK_EX)
    f.seek(0)
    records = [json.loads(line) for line in f.read().splitlines()]
    mine = [r for r in records if (r["namespace"], r["service"]) == (namespace, service)]
    current = mine[-1] if mine and mine[-1]["action"] == "apply" else None
    if action == "fetch":
        if current is None:
            print(json.dumps({"phase": "absent"}))
        else:
            print(json.dumps({"phase": "healthy", **{k: current[k] for k in ("generation", "spec_hash", "intent_id")}}))
        sys.exit(0)
    record = {
        "action": action, "namespace": namespace, "service": service,
        "generation": int(os.environ.get("CONVOY_GENERATION") or 0), "spec_hash": os.environ.get("CONVOY_SPEC_HASH", ""),
        "intent_id": os.environ.get("CONVOY_INTENT_ID", ""), "agent": agent, "at": time.time(),
    }
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())
    applies = sum(1 for r in records if r["action"] == "apply") + (action == "apply")
if action == "apply" and applies == kill_after:
    try:
        os.unlink(trigger)  # once
    except FileNotFoundError:
        pass
    else:
        os.kill(agent, signal.SIGKILL)
print(f"{action} {namespace}/{service} generation {record['generation']}")
'''




def commands(root: Path, *, kill_after: int = 0) -> list[str]:
    """The command line of apply, fetch and delete (the script written under `root`)."""
    script = root / "commands.py"
    script.write_text(COMMANDS)
    (root / "effects.jsonl").touch()
    trigger = root / "kill-trigger"
    if kill_after:
        trigger.touch()
    return [sys.executable, str(script), str(root / "effects.jsonl"), str(trigger), str(kill_after)]


def records(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / "effects.jsonl").read_text().splitlines()]
