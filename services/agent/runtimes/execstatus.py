"""What an exec runtime's `fetch` (or `apply`) command says about a workload.

The contract for command authors, kept small so a shell script can meet it:

- exit 0: in sync (the workload runs what was applied and is healthy);
- exit 2: drifted (it runs, but no longer matches what was applied);
- or, with exit 0 or 2, one JSON object on stdout (the last line that is one, so logs may
  come first):

      {"phase": "progressing", "reason": "", "message": "1/2 ready",
       "ready": 1, "desired": 2, "generation": 3, "spec_hash": "…", "intent_id": "…",
       "drifted": false}

  `phase` is required (absent | progressing | healthy | failed); `reason` (for failed) is
  one of FailureReason; the rest is optional and defaults to what was applied;
- exit 75 (EX_TEMPFAIL): the runtime is unavailable, try again later;
- any other exit: the command failed; its output (truncated) says why.
"""

from __future__ import annotations

import json
from typing import Any

from services.agent.runtimes.base import FailureReason, Phase, Workload, WorkloadKey, WorkloadStatus, truncate

IN_SYNC = 0
DRIFTED = 2
TEMPFAIL = 75
PHASES = {phase.value: phase for phase in Phase}
REASONS = {
    value for name, value in vars(FailureReason).items() if not name.startswith("_") and isinstance(value, str)
}


class StatusFormatError(ValueError):
    """The command printed a status that does not follow the format: fix the command."""


def find_json(output: str) -> dict[str, Any] | None:
    """The whole output as a JSON object, else its last line that is one, else None."""
    text = output.strip()
    candidates = [text, *reversed([line.strip() for line in text.splitlines()])]
    for candidate in candidates:
        if candidate.startswith("{") and candidate.endswith("}"):
            try:
                value = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def parse_status(key: WorkloadKey, *, exit_code: int, output: str, applied: Workload | None) -> WorkloadStatus:
    """The status a fetch reported (exit code 0 or 2, maybe a JSON object on stdout).

    Raises StatusFormatError for a JSON status that breaks the format."""
    drifted = exit_code == DRIFTED
    document = find_json(output)
    generation = applied.generation if applied is not None else 0
    spec_hash = applied.spec_hash if applied is not None else ""
    intent_id = applied.intent_id if applied is not None else ""
    desired = applied.spec.replicas if applied is not None else 0
    if document is None:
        if applied is None:
            return WorkloadStatus(key=key, phase=Phase.ABSENT, drifted=drifted)
        return WorkloadStatus(
            key=key,
            phase=Phase.HEALTHY,
            generation=generation,
            spec_hash=spec_hash,
            intent_id=intent_id,
            drifted=drifted,
            message=truncate(output.strip() or ("drifted" if drifted else "in sync")),
            ready_replicas=desired,
            desired_replicas=desired,
        )
    phase = PHASES.get(str(document.get("phase", "")))
    if phase is None:
        raise StatusFormatError(f"status phase must be one of {sorted(PHASES)}, not {document.get('phase')!r}")
    reason = str(document.get("reason") or "")
    if phase is Phase.FAILED and reason not in REASONS:
        raise StatusFormatError(f"a failed status needs a reason among {sorted(REASONS)}, not {reason!r}")
    if phase is Phase.ABSENT:
        return WorkloadStatus(key=key, phase=Phase.ABSENT, message=_text(document, "message"))
    return WorkloadStatus(
        key=key,
        phase=phase,
        generation=_int(document, "generation", generation),
        spec_hash=_text(document, "spec_hash") or spec_hash,
        intent_id=_text(document, "intent_id") or intent_id,
        drifted=drifted or _bool(document, "drifted"),
        reason=reason if phase is Phase.FAILED else "",
        message=truncate(_text(document, "message")),
        ready_replicas=_int(document, "ready", desired if phase is Phase.HEALTHY else 0),
        desired_replicas=_int(document, "desired", desired),
    )


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name, "")
    if not isinstance(value, str):
        raise StatusFormatError(f"status field {name!r} must be a string")
    return value


def _int(document: dict[str, Any], name: str, default: int) -> int:
    value = document.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StatusFormatError(f"status field {name!r} must be a non-negative integer")
    return value


def _bool(document: dict[str, Any], name: str) -> bool:
    value = document.get(name, False)
    if not isinstance(value, bool):
        raise StatusFormatError(f"status field {name!r} must be true or false")
    return value
