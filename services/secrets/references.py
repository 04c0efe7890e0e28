"""Resolving a `SecretRef` on this machine: an environment variable or a file.

Only the reference is ever stored or carried; the value exists in memory of the process
that needs it, for as long as it needs it. Errors name the reference (the variable or the
path), never a value. Kubernetes Secret references are resolved by the cluster (the
manifest names the Secret), Convoy-kept values by their keeper: callers pass a `convoy`
resolver for those.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from schemas.convoy.v1 import resources_pb2

MAX_SECRET_BYTES = 64 * 1024


class SecretUnavailable(Exception):
    """A reference could not be resolved here. `retryable` says whether trying again later
    can help (a file or variable that may appear) or the reference itself is wrong."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def describe(ref: resources_pb2.SecretRef) -> str:
    """A reference as a person reads it, safe to log: `env:DB_PASSWORD`, `file:/run/pw`."""
    source = ref.WhichOneof("source")
    if source == "env":
        return f"env:{ref.env}"
    if source == "file":
        return f"file:{ref.file}"
    if source == "kubernetes":
        return f"kubernetes:{ref.kubernetes.name}/{ref.kubernetes.key}"
    if source == "convoy":
        return f"convoy:{ref.convoy}"
    return "unset"


def resolve(
    ref: resources_pb2.SecretRef,
    *,
    environ: Mapping[str, str] | None = None,
    convoy: Callable[[str], str] | None = None,
) -> str:
    source = ref.WhichOneof("source")
    if source == "env":
        env = os.environ if environ is None else environ
        if ref.env not in env:
            raise SecretUnavailable(f"secret {describe(ref)}: the variable is not set on this machine", retryable=True)
        return env[ref.env]
    if source == "file":
        path = Path(ref.file)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            raise SecretUnavailable(f"secret {describe(ref)}: no such file on this machine", retryable=True) from None
        except OSError as e:
            raise SecretUnavailable(f"secret {describe(ref)}: cannot read it ({e.strerror})", retryable=True) from None
        if len(data) > MAX_SECRET_BYTES:
            raise SecretUnavailable(f"secret {describe(ref)}: larger than {MAX_SECRET_BYTES} bytes", retryable=False)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret {describe(ref)}: not UTF-8 text", retryable=False) from None
        return text[:-1] if text.endswith("\n") else text
    if source == "convoy":
        if convoy is None:
            raise SecretUnavailable(f"secret {describe(ref)}: Convoy-kept secrets cannot be read here", retryable=False)
        return convoy(ref.convoy)
    if source == "kubernetes":
        raise SecretUnavailable(
            f"secret {describe(ref)}: a Kubernetes Secret is resolved by the cluster, not by this process",
            retryable=False,
        )
    raise SecretUnavailable("secret reference names no source (env, file, kubernetes or convoy)", retryable=False)
