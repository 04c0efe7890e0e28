"""Resolving a workload's secret environment (`Program.secret_env`) where it runs.

The spec an agent receives carries only references (`SecretRef`): the bus, the agent's
state files and the exec runtime's stdin document hold no value. A process runtime
resolves them at apply time on this machine — an environment variable of the agent, a
file on its disk — and hands the values only to the process environment (the local
runtime's service processes; the exec runtime's apply command, as `CONVOY_SECRET_<NAME>`).

A reference that cannot be resolved refuses the apply before anything starts, with a
message that names the reference (never a value) and says whether trying again can help
(a variable or file that may appear: set it and deploy again). A Kubernetes Secret
reference is for the cluster to resolve (kubernetes_manifests.py). A Convoy-kept secret
(`convoy:<name>`) is asked of the control plane through the `convoy` callback the agent's
composition gives the runtime (services/agent/secretclient.py: sealed to a key made for
the request, on the runtime's own subject); without one it is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes.base import ApplyRejected, Workload
from services.secrets.references import SecretUnavailable, describe, resolve

ConvoySecrets = Callable[[Workload, str], Awaitable[str]]
"""A Convoy-kept secret's value for a workload (SecretClient.fetch); raises
SecretUnavailable naming the reference and whether a retry can help."""

SECRET_PREFIX = "CONVOY_SECRET_"
"""The exec runtime's apply command gets each secret variable NAME as CONVOY_SECRET_NAME."""


async def resolve_program(
    workload: Workload,
    program: resources_pb2.Program,
    *,
    environ: Mapping[str, str] | None = None,
    convoy: ConvoySecrets | None = None,
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
        if source == "convoy" and convoy is None:
            raise ApplyRejected(
                f"{workload.key}: program {program.name!r}: {name} references {describe(ref)}, a Convoy-kept secret; "
                "this runtime was started without a way to ask the control plane for one — retrying will not help"
            )
        try:
            if source == "convoy":
                assert convoy is not None
                values[name] = await convoy(workload, ref.convoy)
            else:
                values[name] = resolve(ref, environ=environ)
        except SecretUnavailable as error:
            if source == "convoy":
                hint = "retryable: deploy again once the cause is fixed" if error.retryable else "retrying will not help"
            else:
                hint = "retryable: provide it on the agent's machine and deploy again" if error.retryable else "retrying will not help"
            raise ApplyRejected(f"{workload.key}: program {program.name!r}: {name}: {error} ({hint})") from None
    return values


async def resolve_all(
    workload: Workload, *, environ: Mapping[str, str] | None = None, convoy: ConvoySecrets | None = None
) -> list[dict[str, str]]:
    """Per program (in spec order) its secret variables' values."""
    return [await resolve_program(workload, program, environ=environ, convoy=convoy) for program in workload.spec.programs]


async def for_command(
    workload: Workload, *, environ: Mapping[str, str] | None = None, convoy: ConvoySecrets | None = None
) -> dict[str, str]:
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
    for values in await resolve_all(workload, environ=environ, convoy=convoy):
        out.update({SECRET_PREFIX + name: value for name, value in values.items()})
    return out
