"""What the agent remembers across restarts: the intents it last applied, its checks,
and its runtime's configuration — one small file in its state folder.

The file lets a restarted agent keep the "never apply an older generation" promise for
intents redelivered after the restart, tell drift from "not applied yet", and start its
runtime while the control plane is unreachable. It is a cache, not the truth: losing it
is fine, because a fresh agent asks the control plane for the desired state (see
`snapshot`). Writes replace the file atomically and owner-only (eventstore.securefile).
The folder also holds the replica's identity (`Replica`): one process per folder.
"""

from __future__ import annotations

import base64
import fcntl
import json
import uuid
from pathlib import Path
from typing import Any

from eventstore import securefile
from eventstore.errors import InvalidInput
from schemas.convoy.v1 import events_pb2, resources_pb2
from services.agent import intents

FILE_NAME = "agent-state.json"
FORMAT = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class StateFile:
    """The agent's state file; `path` None keeps nothing (a stateless agent)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def in_folder(cls, state_dir: Path | None, runtime: str) -> StateFile:
        if state_dir is None:
            return cls(None)
        return cls(state_dir / runtime / FILE_NAME)

    def load(self) -> tuple[intents.Applied, resources_pb2.Runtime | None]:
        if self.path is None or not self.path.exists():
            return intents.Applied.empty(), None
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT}")
            applied = intents.Applied.empty()
            for blob in raw.get("intents", []):
                message = events_pb2.IntentIssued.FromString(base64.b64decode(blob))
                applied = applied.with_intent(intents.Intent(intents.key_of(message), message))
            for blob in raw.get("checks", []):
                checks = events_pb2.ChecksRequested.FromString(base64.b64decode(blob))
                key = intents.WorkloadKey(checks.target.namespace, checks.application, checks.service)
                applied = applied.with_checks(intents.Checks(key, checks))
            config = None
            if raw.get("runtime"):
                config = resources_pb2.Runtime.FromString(base64.b64decode(raw["runtime"]))
            return applied, config
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidInput(
                f"agent state file {self.path} is unreadable ({error}); move it away and restart: "
                "the agent then asks the control plane for the desired state"
            ) from error

    def save(self, applied: intents.Applied, config: resources_pb2.Runtime | None) -> None:
        if self.path is None:
            return
        document = {
            "format": FORMAT,
            "intents": [_b64(m.SerializeToString(deterministic=True)) for m in applied.intents.values()],
            "checks": [_b64(m.SerializeToString(deterministic=True)) for m in applied.checks.values()],
            "runtime": _b64(config.SerializeToString(deterministic=True)) if config is not None else "",
        }
        # Its runtime configuration may carry environment values: owner-only.
        securefile.write_private(self.path, json.dumps(document))


REPLICA_FILE = "replica-id"
LOCK_FILE = "agent.lock"


class FolderInUse(InvalidInput):
    """Another agent process uses this state folder: give each replica its own."""


class Replica:
    """Who this agent process is among its runtime's replicas, and its hold on the state
    folder: the id is kept in `<state>/<runtime>/replica-id`, so a restart of the same
    replica (same folder) takes its own lease back at once instead of waiting it out as a
    standby; and the folder is locked (`agent.lock`, an flock the kernel drops when the
    process dies, even by SIGKILL), so two processes never share one id — they would both
    believe they hold the lease. `close()` lets the folder go."""

    def __init__(self, state_dir: Path, runtime: str) -> None:
        folder = state_dir / runtime
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = (folder / LOCK_FILE).open("a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FolderInUse(
                f"another agent process uses the state folder {folder}; give each replica of runtime "
                f"{runtime!r} its own --state-dir"
            ) from None
        path = folder / REPLICA_FILE
        if not path.exists():
            securefile.write_private(path, f"agent-{uuid.uuid4().hex[:12]}\n")
        self.agent_id = path.read_text().strip()

    def close(self) -> None:
        self._lock.close()
