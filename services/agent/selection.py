"""Which Runtime implementation an agent runs, from its runtime's registered configuration.

kind kubernetes → `runtimes.kubernetes`; kind exec whose apply command is `convoy-local`
→ the built-in local process runtime; any other exec → `runtimes.exec`. `memory` (an
override only, never registered) → the in-memory runtime for simulations. The process
runtimes (local, exec) get `convoy_secrets`, the agent's way to ask the control plane for
a Convoy-kept secret (services/agent/secretclient.py); Kubernetes refuses `convoy:`
references (its Secrets are the cluster's). Imports are
deferred to the branch taken, so an agent of one kind never loads another kind's client
library (kubernetes_asyncio for an exec agent).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from eventstore.errors import InvalidInput
from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes.base import Runtime
from services.agent.runtimes.secretenv import ConvoySecrets


async def build_runtime(
    config: resources_pb2.Runtime,
    *,
    state_dir: Path,
    override_kind: str = "",
    convoy_secrets: ConvoySecrets | None = None,
) -> Runtime:
    """A started Runtime for `config`; `state_dir` is this runtime's own folder."""
    kind = override_kind or _kind(config)
    if kind == "memory":
        from services.agent.runtimes.memory import MemoryRuntime

        return MemoryRuntime(name=config.name)
    if kind == "local":
        from services.agent.runtimes.local import LocalRuntime, LocalSettings

        return await LocalRuntime.open(
            settings=LocalSettings(state_dir=state_dir / "local", name=config.name, convoy_secrets=convoy_secrets)
        )
    if kind == "exec":
        return await _open("services.agent.runtimes.exec", config, state_dir, convoy_secrets=convoy_secrets)
    if kind == "kubernetes":
        return await _open("services.agent.runtimes.kubernetes", config, state_dir)
    raise InvalidInput(f"runtime {config.name!r} has kind {kind!r}; expected kubernetes, exec, local or memory")


def _kind(config: resources_pb2.Runtime) -> str:
    if config.kind == resources_pb2.RUNTIME_KIND_KUBERNETES:
        return "kubernetes"
    if config.kind == resources_pb2.RUNTIME_KIND_EXEC:
        apply = list(config.exec.apply)
        return "local" if apply and apply[0] == "convoy-local" else "exec"
    raise InvalidInput(f"runtime {config.name!r} has no kind; register it with kind kubernetes or exec")


async def _open(module_name: str, config: resources_pb2.Runtime, state_dir: Path, **extra: Any) -> Runtime:
    """The module's `open_runtime(config=…, state_dir=…)` (each runtime module offers one)."""
    module: Any = importlib.import_module(module_name)
    opener = getattr(module, "open_runtime", None)
    if opener is None:
        raise InvalidInput(f"{module_name} has no open_runtime(config=, state_dir=): this build cannot run it")
    runtime: Runtime = await opener(config=config, state_dir=state_dir, **extra)
    return runtime
