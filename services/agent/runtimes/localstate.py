"""The local runtime's state folder: which workloads it runs, at which generation.

The processes are the agent's children and stop with it, but what was applied must
survive a restart: a restarted agent must still refuse an older generation, list its
workloads in `live()`, and start them again. One JSON document per workload
(`workloads/<namespace>/<application>/<service>.json`, see documents.py), written
atomically; its digest is remembered so an edit by hand shows as drift. Next to it a
`.pids` file lists the running process groups with their start times, so a restarted
agent can kill the orphans of one that crashed (and not an unrelated process that reused
the pid).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

import structlog

from services.agent.runtimes import documents
from services.agent.runtimes.base import ApplyRejected, Workload, WorkloadKey

log = structlog.get_logger("convoy.agent.local")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workloads = root / "workloads"
        self.work = root / "work"
        self._digests: dict[WorkloadKey, str] = {}

    def path(self, key: WorkloadKey) -> Path:
        for part in (key.namespace, key.application, key.service):
            if not NAME.match(part) or part in (".", ".."):
                raise ApplyRejected(f"{key}: {part!r} cannot name a local workload (letters, digits, . _ -)")
        return self.workloads / key.namespace / key.application / f"{key.service}.json"

    def workdir(self, key: WorkloadKey) -> Path:
        path = self.work / key.namespace / key.application / key.service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self, workload: Workload) -> None:
        path = self.path(workload.key)
        text = documents.dumps(workload).encode()
        _write_atomically(path, text)
        self._digests[workload.key] = _digest(text)

    def changed(self, key: WorkloadKey) -> bool:
        """The file no longer holds what this runtime wrote (edited or removed by hand)."""
        expected = self._digests.get(key)
        if expected is None:
            return False
        try:
            return _digest(self.path(key).read_bytes()) != expected
        except OSError:
            return True

    def save_pending(self, workload: Workload) -> None:
        """Write ahead: `workload` is about to be applied. If the agent dies before `save`,
        the next apply of the same generation knows an earlier attempt may have taken
        effect (the exec runtime then asks fetch before applying again)."""
        _write_atomically(self.path(workload.key).with_suffix(".pending"), documents.dumps(workload).encode())

    def pending(self, key: WorkloadKey) -> Workload | None:
        """What an apply that never finished was applying (None: nothing pending)."""
        try:
            return documents.loads(self.path(key).with_suffix(".pending").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, documents.DocumentError) as error:
            log.warning("ignoring an unreadable pending-apply record", workload=str(key), error=str(error))
            return None

    def clear_pending(self, key: WorkloadKey) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).with_suffix(".pending").unlink()

    def remove(self, key: WorkloadKey) -> None:
        path = self.path(key)
        for file in (path, path.with_suffix(".pids"), path.with_suffix(".pending")):
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
        self._digests.pop(key, None)

    def load(self) -> list[Workload]:
        """Every workload recorded; unreadable files are logged and left alone."""
        found = []
        for path in sorted(self.workloads.glob("*/*/*.json")):
            try:
                text = path.read_bytes()
                workload = documents.loads(text)
                if self.path(workload.key) != path:
                    raise documents.DocumentError(f"its key {workload.key} does not match its path")
            except (OSError, documents.DocumentError, ApplyRejected) as error:
                log.warning("ignoring a state file that is not a workload", path=str(path), error=str(error))
                continue
            self._digests[workload.key] = _digest(text)
            found.append(workload)
        return found

    def save_pids(self, key: WorkloadKey, pids: Iterable[int]) -> None:
        records = [{"pid": pid, "start": process_start_time(pid)} for pid in sorted(pids)]
        with contextlib.suppress(OSError):
            _write_atomically(self.path(key).with_suffix(".pids"), json.dumps(records).encode())

    def kill_orphans(self) -> list[int]:
        """Kill the process groups recorded by an agent that did not stop them (it crashed)."""
        killed = []
        for path in self.workloads.glob("*/*/*.pids"):
            try:
                records = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            for record in records if isinstance(records, list) else []:
                pid, start = record.get("pid"), record.get("start")
                if isinstance(pid, int) and start is not None and process_start_time(pid) == start:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                        killed.append(pid)
            with contextlib.suppress(OSError):
                path.unlink()
        if killed:
            log.warning("killed processes left by a previous agent", pids=killed)
        return killed


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
