"""Validating a `SecretRef` where a declaration holds one (a registry's password, …).

A reference names exactly one place: an environment variable, a file, a Kubernetes Secret
key or a Convoy-kept value. Only its shape is checked here; whether it resolves is known
only where it is used (the value never reaches the control plane's log).
"""

from __future__ import annotations

import re
from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.validation import check_name, q

_ENV: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_SECRET_KEY: Final = re.compile(r"[-._a-zA-Z0-9]{1,253}")
MAX_PATH: Final = 4096


def check_secret_ref(problems: Problems, field: str, ref: resources_pb2.SecretRef, *, kubernetes: bool = True) -> bool:
    source = ref.WhichOneof("source")
    before = len(problems)
    if source is None:
        problems.add(field, "names no secret: set one of env, file, kubernetes or convoy")
    elif source == "env":
        if not _ENV.fullmatch(ref.env):
            problems.add(f"{field}.env", f"{q(ref.env[:80])} is not an environment variable name")
    elif source == "file":
        if not ref.file.startswith("/") or len(ref.file) > MAX_PATH or "\x00" in ref.file:
            problems.add(f"{field}.file", "must be an absolute path (at most 4096 characters)")
    elif source == "kubernetes":
        if not kubernetes:
            problems.add(f"{field}.kubernetes", "a Kubernetes Secret is only readable inside a cluster; use env, file or convoy here")
        check_name(problems, f"{field}.kubernetes.name", ref.kubernetes.name, what="Kubernetes Secret name")
        if not _SECRET_KEY.fullmatch(ref.kubernetes.key):
            problems.add(f"{field}.kubernetes.key", "must be a Secret key: 1-253 of letters, digits, '-', '_', '.'")
    else:
        check_name(problems, f"{field}.convoy", ref.convoy, what="secret name")
    return len(problems) == before
