"""The local runtime's state folder: which workloads it runs, at which generation, in
which processes.

What was applied must survive a restart: a restarted agent must still refuse an older
generation, list its workloads in `live()`, and run them. One JSON document per workload
(`workloads/<namespace>/<application>/<service>.json`, see documents.py), written
atomically; its digest is remembered so an edit by hand shows as drift.

Next to it a `.pids` file lists the running processes (`ProcessRecord`): pid, start time,
the token in its environment, and the generation, spec hash, replica and ports it serves.
A restarted agent adopts those that still run the applied generation (processes.adopt
proves a process is the one recorded, not one that reused its pid) and kills the rest as
orphans (`kill_orphans`): a stale generation, a workload whose state is gone. Every
service process also carries `STATE_ENV=<this folder>` in its environment, so a process
spawned by an agent that crashed before it could record it is found (in /proc) and
killed too. The processes' output goes to `logs/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import asdict, dataclass, field
from typing import Final
from pathlib import Path

import structlog

from eventstore import securefile
from services.agent.runtimes import documents
from services.agent.runtimes import processes
from services.agent.runtimes.base import ApplyRejected, Workload, WorkloadKey
from services.agent.runtimes.processes import process_start_time

__all__ = ["STATE_ENV", "ProcessRecord", "StateStore", "process_start_time"]

log = structlog.get_logger("convoy.agent.local")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")

STATE_ENV = "CONVOY_LOCAL_STATE"
"""In every service process's environment: the state folder of the runtime that runs it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessRecord:
    """One running process of a workload, as recorded for the next agent."""

    pid: int
    start: int | None
    """Start time in clock ticks since boot (processes.inspect)."""
    token: str = ""
    """Its processes.TOKEN_ENV ('' in records of older versions: killed, never adopted)."""
    generation: int = 0
    spec_hash: str = ""
    replica: int = 0
    name: str = ""
    """The process's name (`<program>-<replica>`, its ProcessSpec name)."""
    ports: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: object) -> ProcessRecord | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int):
            return None
        start, ports = raw.get("start"), raw.get("ports") or {}
        try:
            return cls(
                pid=raw["pid"],
                start=start if isinstance(start, int) else None,
                token=str(raw.get("token") or ""),
                generation=int(raw.get("generation") or 0),
                spec_hash=str(raw.get("spec_hash") or ""),
                replica=int(raw.get("replica") or 0),
                name=str(raw.get("name") or ""),
                ports={str(k): int(v) for k, v in dict(ports).items()},
            )
        except (TypeError, ValueError):
            return None

    def serves(self, workload: Workload) -> bool:
        """It runs `workload`'s generation with its spec (so it may be adopted for it)."""
        return bool(self.token) and (self.generation, self.spec_hash) == (workload.generation, workload.spec_hash)


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workloads = root / "workloads"
        self.work = root / "work"
        self._digests: dict[WorkloadKey, str] = {}

    @property
    def marker(self) -> str:
        """The STATE_ENV value of this folder's processes."""
        return str(self.root.resolve())

    def path(self, key: WorkloadKey) -> Path:
        for part in (key.namespace, key.application, key.service):
            if not NAME.match(part) or part in (".", ".."):
                raise ApplyRejected(f"{key}: {part!r} cannot name a local workload (letters, digits, . _ -)")
        return self.workloads / key.namespace / key.application / f"{key.service}.json"

    def workdir(self, key: WorkloadKey) -> Path:
        path = self.work / key.namespace / key.application / key.service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def logdir(self, key: WorkloadKey) -> Path:
        """Where the workload's processes write their output (one file each)."""
        return self.root / "logs" / key.namespace / key.application / key.service

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
        shutil.rmtree(self.logdir(key), ignore_errors=True)
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

    def save_pids(self, key: WorkloadKey, records: Iterable[ProcessRecord]) -> None:
        data = json.dumps([asdict(r) | {"ports": dict(r.ports)} for r in records])
        with contextlib.suppress(OSError):
            _write_atomically(self.path(key).with_suffix(".pids"), data.encode())

    def load_pids(self) -> dict[WorkloadKey, list[ProcessRecord]]:
        """Every workload's recorded processes (`.pids` files with or without a workload
        beside them); an unreadable file counts as empty."""
        found: dict[WorkloadKey, list[ProcessRecord]] = {}
        for path in sorted(self.workloads.glob("*/*/*.pids")):
            key = WorkloadKey(path.parent.parent.name, path.parent.name, path.stem)
            try:
                raw = json.loads(path.read_bytes())
            except (OSError, ValueError):
                raw = []
            found[key] = [r for r in map(ProcessRecord.parse, raw if isinstance(raw, list) else []) if r is not None]
        return found

    def kill_orphans(self, recorded: Mapping[WorkloadKey, list[ProcessRecord]], *, keep: Set[int]) -> list[int]:
        """Kill what an earlier agent left running that is not adopted (`keep`: the
        adopted processes, each leading its group): every recorded process that is still
        the very process recorded, and every process whose environment names this state
        folder (spawned, not yet recorded, when that agent died) — their whole process
        groups. A recorded pid that now names an unrelated process is left alone. The
        `.pids` files go (the runtime writes its own)."""
        groups: set[int] = set()
        for records in recorded.values():
            for record in records:
                if record.pid in keep or record.start is None:
                    continue
                info = processes.inspect(record.pid)
                if info is None or info.start != record.start or info.state == "Z":
                    continue
                if record.token and processes.environment(record.pid).get(processes.TOKEN_ENV) != record.token:
                    continue  # started in the same clock tick, yet another process: not ours
                groups.add(record.pid)
        for info in _marked(self.marker).values():
            if info.pgrp not in keep:
                groups.add(info.pgrp)
        killed = []
        for group in sorted(groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
                killed.append(group)
        _wait_gone(set(killed))
        for path in self.workloads.glob("*/*/*.pids"):
            with contextlib.suppress(OSError):
                path.unlink()
        if killed:
            log.warning("killed processes left by a previous agent", pids=killed)
        return killed


ORPHANS_GONE_WITHIN: Final = 5.0
"""Seconds to wait for killed orphans to be gone before the runtime starts anything (a
SIGKILL takes effect in microseconds; the bound only guards against a process stuck in
the kernel)."""


def _wait_gone(groups: Set[int], *, timeout: float = ORPHANS_GONE_WITHIN) -> None:
    """Until no live (non-zombie) process is left in `groups`: a killed orphan still
    running would hold its port, or look live to whoever lists the workload's processes."""
    deadline = time.monotonic() + timeout
    while groups and time.monotonic() < deadline:
        if not any(_in_groups(groups)):
            return
        time.sleep(0.002)
    left = list(_in_groups(groups))
    if left:
        log.warning("killed orphans still running", pids=left)


def _in_groups(groups: Set[int]) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = processes.inspect(int(entry.name))
            if info is not None and info.state != "Z" and info.pgrp in groups:
                yield int(entry.name)


def _marked(root: str) -> dict[int, processes.ProcessInfo]:
    """Live processes whose environment says they belong to the state folder `root`."""
    found = {}
    own = os.getpgrp()  # never this process's own group, whatever its environment says
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if processes.environment(pid).get(STATE_ENV) != root:
            continue
        info = processes.inspect(pid)
        if info is not None and info.state != "Z" and info.pgrp != own:
            found[pid] = info
    return found


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Owner-only: a workload's document holds its environment (resolved secrets
    included) and a `.pids` file the token in its processes' environment."""
    securefile.write_private(path, data)
