"""Checking a `SecretRef` where one is declared: a resource's secret attribute, a
program's secret environment.

A reference names exactly one place a value lives, in the terms of that place: an
environment variable name, an absolute file path, a Kubernetes Secret name (a DNS
subdomain) and key, or the name of a Convoy-kept secret (SetSecret). Nothing here sees a
value — that is the point of a reference — so the only thing to check is that the place
could exist; whether it holds something is known only where it is resolved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.validation import q

SECRET_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,251}[a-z0-9])?")
SECRET_NAME_RULE: Final = (
    "use lower-case letters, digits, '-', '.' and '_', starting and ending with a letter or digit, "
    "at most 253 characters"
)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_K8S_SECRET_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_K8S_SECRET_KEY: Final = re.compile(r"[-._a-zA-Z0-9]+")
MAX_PATH: Final = 4096


def check_secret_name(problems: Problems, field: str, name: str) -> bool:
    if SECRET_NAME.fullmatch(name) is None:
        problems.add(field, f"{q(name)} is not a secret name: {SECRET_NAME_RULE}")
        return False
    return True


def check_ref(problems: Problems, field: str, ref: resources_pb2.SecretRef) -> bool:
    source = ref.WhichOneof("source")
    if source is None:
        problems.add(field, "names no source: set exactly one of env, file, kubernetes or convoy")
        return False
    if source == "env":
        if _ENV_NAME.fullmatch(ref.env) is None:
            problems.add(
                f"{field}.env",
                f"{q(ref.env)} is not an environment variable name: letters, digits and '_', not starting "
                "with a digit",
            )
            return False
    elif source == "file":
        if not ref.file.startswith("/") or len(ref.file) > MAX_PATH or "\x00" in ref.file:
            problems.add(f"{field}.file", f"{q(ref.file)} is not an absolute path (at most {MAX_PATH} characters)")
            return False
    elif source == "kubernetes":
        key = ref.kubernetes
        ok = True
        if len(key.name) > 253 or _K8S_SECRET_NAME.fullmatch(key.name) is None:
            problems.add(f"{field}.kubernetes.name", f"{q(key.name)} is not a Kubernetes Secret name (a DNS subdomain)")
            ok = False
        if len(key.key) > 253 or _K8S_SECRET_KEY.fullmatch(key.key) is None:
            problems.add(
                f"{field}.kubernetes.key",
                f"{q(key.key)} is not a Kubernetes Secret key: letters, digits, '-', '_' and '.', at most 253",
            )
            ok = False
        return ok
    elif source == "convoy":
        return check_secret_name(problems, f"{field}.convoy", ref.convoy)
    return True


def check_refs(problems: Problems, field: str, refs: Mapping[str, resources_pb2.SecretRef]) -> bool:
    ok = True
    for key in sorted(refs):
        ok = check_ref(problems, f"{field}[{q(key)}]", refs[key]) and ok
    return ok
