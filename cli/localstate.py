"""The local `convoy up` instance as the CLI finds it: `<state_dir>/endpoint.json` and
`<state_dir>/admin-token`.

`convoy up` writes where its API listens into the state folder, so a plain `convoy apps
list` on the same machine needs no flags; the bootstrap admin token sits next to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from eventstore import securefile

ENDPOINT_FILE: Final = "endpoint.json"
ADMIN_TOKEN_FILE: Final = "admin-token"  # written by services.api.auth


@dataclass(frozen=True, slots=True)
class Endpoint:
    grpc: str  # "127.0.0.1:7070"
    rest: str  # "http://127.0.0.1:8080"


def write_endpoint(state_dir: Path, endpoint: Endpoint) -> Path:
    """Write atomically, so a reader never sees half a file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / ENDPOINT_FILE
    tmp = state_dir / f".{ENDPOINT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"grpc": endpoint.grpc, "rest": endpoint.rest}) + "\n")
    tmp.replace(path)
    return path


def read_endpoint(state_dir: Path) -> Endpoint | None:
    try:
        data = json.loads((state_dir / ENDPOINT_FILE).read_text())
        return Endpoint(grpc=str(data["grpc"]), rest=str(data.get("rest", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_admin_token(state_dir: Path) -> str | None:
    try:
        return (state_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


DATABASE_URL_FILE: Final = "database-url"


def write_database_url(state_dir: Path, url: str) -> Path:
    """The embedded PostgreSQL's URL (it holds a password: owner-only, like the token),
    for tools that read the log directly (`convoy planner`, `convoy replay --check`)."""
    return securefile.write_private(state_dir / DATABASE_URL_FILE, url + "\n")


def read_database_url(state_dir: Path) -> str | None:
    try:
        return (state_dir / DATABASE_URL_FILE).read_text().strip() or None
    except OSError:
        return None


PID_FILE: Final = "convoy-up.pid"


def write_pid(state_dir: Path) -> Path:
    """`convoy up` records its process id, so `convoy down` can stop it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / PID_FILE
    path.write_text(f"{os.getpid()}\n")
    return path


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
