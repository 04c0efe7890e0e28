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
