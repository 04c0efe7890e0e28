"""Resolving a workload's secret environment (`Program.secret_env`) where it runs.

The spec an agent receives carries only references (`SecretRef`): the bus, the agent's
state files and the exec runtime's stdin document hold no value. A process runtime
resolves them at apply time on this machine — an environment variable of the agent, a
file on its disk — and hands the values only to the process environment (the local
runtime's service processes; the exec runtime's apply command, as `CONVOY_SECRET_<NAME>`).

A reference that cannot be resolved refuses the apply before anything starts, with a
message that names the reference (never a value) and says whether trying again can help
(a variable or file that may appear: set it and deploy again). A Kubernetes Secret
reference is for the cluster to resolve (kubernetes_manifests.py); a Convoy-kept secret
is not delivered to agents by this version (see docs/config.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes.base import ApplyRejected, Workload
from services.secrets.references import SecretUnavailable, describe, resolve

SECRET_PREFIX = "CONVOY_SECRET_"
"""The exec runtime's apply command gets each secret variable NAME as CONVOY_SECRET_NAME."""


def resolve_program(
    workload: Workload, program: resources_pb2.Program, *, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The values of `program`'s secret environment, read on this machine."""
    values: dict[str, str] = {}
    for name in sorted(program.secret_env):
        ref = program.secret_env[name]
        source = ref.WhichOneof("source")
        if source == "kubernetes":
            raise ApplyRejected(
                f"{workload.key}: program {program.name!r}: {name} references {describe(ref)}, a Kubernetes Secret; "
                "only a Kubernetes runtime can resolve it (use an env or file reference for this runtime) — "
                "retrying will not help"
            )
        if source == "convoy":
            raise ApplyRejected(
                f"{workload.key}: program {program.name!r}: {name} references {describe(ref)}, a Convoy-kept secret; "
                "agents cannot receive Convoy-kept secrets yet (use an env or file reference on the agent's machine) "
                "— retrying will not help"
            )
        try:
            values[name] = resolve(ref, environ=environ)
        except SecretUnavailable as error:
            hint = "retryable: provide it on the agent's machine and deploy again" if error.retryable else "retrying will not help"
            raise ApplyRejected(f"{workload.key}: program {program.name!r}: {name}: {error} ({hint})") from None
    return values


def resolve_all(workload: Workload, *, environ: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Per program (in spec order) its secret variables' values."""
    return [resolve_program(workload, program, environ=environ) for program in workload.spec.programs]


def for_command(workload: Workload, *, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The exec contract: every secret variable NAME of any program as CONVOY_SECRET_NAME.
    Two programs giving one name different references cannot be told apart there."""
    out: dict[str, str] = {}
    seen: dict[str, resources_pb2.SecretRef] = {}
    for program in workload.spec.programs:
        for name, ref in program.secret_env.items():
            if name in seen and seen[name] != ref:
                raise ApplyRejected(
                    f"{workload.key}: {name} is a secret variable of two programs with different references; an exec "
                    f"runtime gets one {SECRET_PREFIX}{name} per name — rename one (retrying will not help)"
                )
            seen[name] = ref
    for values in resolve_all(workload, environ=environ):
        out.update({SECRET_PREFIX + name: value for name, value in values.items()})
    return out
