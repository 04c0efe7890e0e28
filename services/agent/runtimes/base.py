"""The Runtime Protocol: what an agent needs from a place that runs services.

An agent turns intents into `apply`/`delete` calls and turns what `status`/`watch`/`live`
report into observations; everything runtime-specific (Kubernetes objects, exec commands,
local processes) stays behind this Protocol. Every implementation passes the one contract
suite in tests/contract/runtime_suite.py.

The rules every runtime keeps:

- `apply` is idempotent: applying a workload whose spec hash and generation are already
  live changes nothing. A generation older than the live one is refused with
  `StaleGeneration` and changes nothing (an old intent redelivered late must never undo a
  newer one). Applying the same generation with a different hash is a programming error.
- `apply` returns once the runtime has accepted the spec; the rollout continues after it.
  `status` reports where it is, `watch` yields each change until the caller stops.
- `drifted` means the live workload no longer matches what was applied (someone edited it
  by hand); `apply` of the same generation with `repair=True` puts it back.
- `delete` of an absent workload succeeds (deletes are idempotent too).
- `live` lists every workload Convoy manages on this runtime (what a fresh agent compares
  with desired state, and what pruning starts from).
- Errors say whether to retry: `RuntimeUnavailable` (retry later), `ApplyRejected` (the
  spec cannot run here; report FAILED with its reason), `StaleGeneration` (drop the intent).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from eventstore.errors import ConvoyError
from schemas.convoy.v1 import convergence_pb2


@dataclass(frozen=True, slots=True, order=True)
class WorkloadKey:
    """One service of one application in one namespace of a runtime."""

    namespace: str
    application: str
    service: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.application}/{self.service}"


@dataclass(frozen=True, slots=True)
class Workload:
    """What to run: the rendered spec of an intent, with the intent's identity."""

    key: WorkloadKey
    spec: convergence_pb2.WorkloadSpec
    spec_hash: str
    generation: int
    intent_id: str
    channel: str = ""


class Phase(enum.Enum):
    ABSENT = "absent"
    """Nothing Convoy manages is there."""
    PROGRESSING = "progressing"
    """Rolling out: not every replica runs the spec and passes its health check yet."""
    HEALTHY = "healthy"
    """Every replica runs the applied spec and passes its health check."""
    FAILED = "failed"
    """The rollout failed; `reason` says how."""


class FailureReason:
    """The `reason` values of a FAILED status (and of FAILED observations)."""

    IMAGE_PULL = "image_pull"
    CRASH_LOOP = "crash_loop"
    PROGRESS_DEADLINE = "progress_deadline"
    COMMAND_EXIT = "command_exit"
    HEALTH_CHECK = "health_check"
    APPLY_ERROR = "apply_error"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    key: WorkloadKey
    phase: Phase
    generation: int = 0
    """The generation of the applied spec (0 when absent)."""
    spec_hash: str = ""
    """The spec hash the live workload was applied with."""
    intent_id: str = ""
    drifted: bool = False
    """The live workload differs from the applied spec."""
    reason: str = ""
    """For FAILED: one of `FailureReason`."""
    message: str = ""
    """Human-readable detail, truncated to `MAX_MESSAGE` characters."""
    ready_replicas: int = 0
    desired_replicas: int = 0


MAX_MESSAGE = 4096


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    """Runtime output goes into observations: keep the end, which says what failed."""
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]


class RuntimeUnavailable(ConvoyError):
    """The runtime cannot be reached or answered with a server error: retry later."""

    retryable = True


class ApplyRejected(ConvoyError):
    """The runtime refused the spec (invalid, forbidden, conflicting): retrying the same
    spec will not help. `reason` is a `FailureReason`."""

    retryable = False

    def __init__(self, message: str, *, reason: str = FailureReason.APPLY_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class StaleGeneration(ConvoyError):
    """The runtime already runs a newer generation of this workload: drop the intent."""

    retryable = False


def same_generation(key: WorkloadKey, live_generation: int, live_hash: str, workload: Workload) -> bool:
    """The generation rule every runtime keeps, against what it runs now: True when the
    workload is the live generation (re-applying changes nothing unless repairing);
    `StaleGeneration` for an older one; `ApplyRejected` for the live generation with
    another spec."""
    if workload.generation < live_generation:
        raise StaleGeneration(f"{key} runs generation {live_generation}; refusing older generation {workload.generation}")
    if workload.generation != live_generation:
        return False
    if workload.spec_hash != live_hash:
        raise ApplyRejected(
            f"{key}: generation {workload.generation} is live with spec hash {live_hash}, "
            f"not {workload.spec_hash}: one generation has one spec"
        )
    return True


class Runtime(Protocol):
    """A place that runs services. Implementations: kubernetes, exec, local."""

    name: str

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        """Make the workload look like `workload.spec`; return the status right after."""
        ...

    async def status(self, key: WorkloadKey) -> WorkloadStatus: ...

    def watch(self, key: WorkloadKey) -> AsyncIterator[WorkloadStatus]:
        """The current status, then every change, until the caller stops iterating."""
        ...

    async def delete(self, key: WorkloadKey) -> None: ...

    async def live(self) -> list[WorkloadStatus]:
        """Every workload Convoy manages on this runtime."""
        ...

    async def close(self) -> None:
        """Release connections; the local runtime also stops every process it started."""
        ...
