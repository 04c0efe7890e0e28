"""An in-memory Runtime: a real implementation of the Protocol that runs nothing.

Benchmarks and simulated agents need hundreds of runtimes that answer at once, and the
agent's own tests need a runtime whose behaviour they can steer without processes or a
cluster — the way the in-memory event store serves the store's tests. It keeps every rule
of `base.Runtime` (idempotent apply, stale generations refused, drift, idempotent delete,
`live`, watches that end on close) and passes the same contract suite.

A workload becomes HEALTHY as soon as it is applied (or after `rollout_delay` seconds of
PROGRESSING). Failures are asked for per spec — parameter `memory.fail` = a
`FailureReason` — or per workload with `fail(key, reason)`: `apply_error` refuses the spec
(`ApplyRejected`), any other reason makes the rollout FAILED with that reason.
`tamper(key)` edits a live workload out of band (drift); `outage(True)` makes every call
raise `RuntimeUnavailable`, as an unreachable cluster would.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    Runtime,
    RuntimeUnavailable,
    StaleGeneration,
    Workload,
    WorkloadKey,
    WorkloadStatus,
)

FAIL_PARAMETER = "memory.fail"
"""Spec parameter naming the `FailureReason` a rollout of that spec ends in."""


@dataclass(slots=True)
class _Live:
    workload: Workload
    status: WorkloadStatus
    incarnation: int
    managed: bool = True


class MemoryRuntime:
    """`Runtime` held in a dict. `rollout_delay` > 0 makes rollouts PROGRESSING first."""

    def __init__(self, *, name: str = "memory", rollout_delay: float = 0.0) -> None:
        self.name = name
        self.rollout_delay = rollout_delay
        self.applies = 0
        """Rollouts actually started (a no-op apply does not count): what tests assert on."""
        self.rollouts: Counter[str] = Counter()
        """Rollouts started per intent id (a drift repair counts for the intent it repairs):
        how a benchmark tells an intent applied twice from one applied once."""
        self.deletes = 0
        self._live: dict[WorkloadKey, _Live] = {}
        self._failures: dict[WorkloadKey, str] = {}
        self._incarnations = 0
        self._changed = asyncio.Event()
        self._timers: dict[WorkloadKey, asyncio.TimerHandle] = {}
        self._closed = False
        self._unavailable = False
        self.refused = 0
        """Calls refused during an `outage`."""

    # -- steering (tests, benchmarks) ---------------------------------------------------

    def fail(self, key: WorkloadKey, reason: str | None) -> None:
        """Make the next rollouts of `key` fail with `reason` (None: stop failing)."""
        if reason is None:
            self._failures.pop(key, None)
        else:
            self._failures[key] = reason

    def tamper(self, key: WorkloadKey) -> None:
        """Edit the live workload by hand: it no longer matches what was applied."""
        live = self._live.get(key)
        if live is None or not live.managed:
            raise KeyError(f"{key} is not live")
        self._incarnations += 1
        live.incarnation = self._incarnations
        self._set(key, replace(live.status, drifted=True))

    def remove_behind_our_back(self, key: WorkloadKey) -> None:
        """The workload disappears (someone deleted it, the cluster was rebuilt)."""
        self._live.pop(key, None)
        self._signal()

    def add_foreign(self, key: WorkloadKey) -> None:
        """Something Convoy does not manage, next to its workloads (`live` skips it)."""
        status = WorkloadStatus(key=key, phase=Phase.HEALTHY)
        dummy = Workload(key=key, spec=convergence_pb2.WorkloadSpec(), spec_hash="", generation=0, intent_id="")
        self._live[key] = _Live(dummy, status, 0, managed=False)

    def outage(self, down: bool) -> None:
        self._unavailable = down

    def incarnation(self, key: WorkloadKey) -> int:
        """Changes whenever the workload is (re)started: the contract's fingerprint."""
        live = self._live.get(key)
        return live.incarnation if live is not None else 0

    # -- the Protocol -------------------------------------------------------------------

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        self._check()
        key = workload.key
        live = self._live.get(key)
        if live is not None and live.managed:
            current = live.status
            if workload.generation < current.generation:
                raise StaleGeneration(
                    f"{key} runs generation {current.generation}; generation {workload.generation} is older"
                )
            if workload.generation == current.generation:
                if workload.spec_hash != current.spec_hash:
                    raise ApplyRejected(
                        f"{key}: generation {workload.generation} was applied with spec {current.spec_hash}, "
                        f"not {workload.spec_hash}; a new spec needs a new generation"
                    )
                if repair and current.drifted:
                    return self._roll_out(workload, intent_id=current.intent_id)
                return current
        reason = self._failures.get(key) or workload.spec.parameters.get(FAIL_PARAMETER, "")
        if reason == FailureReason.APPLY_ERROR:
            raise ApplyRejected(f"{key}: the memory runtime was told to refuse this spec", reason=reason)
        return self._roll_out(workload, intent_id=workload.intent_id, failure=reason)

    async def status(self, key: WorkloadKey) -> WorkloadStatus:
        self._check()
        return self._status(key)

    async def watch(self, key: WorkloadKey) -> AsyncIterator[WorkloadStatus]:
        self._check()
        changed = self._changed  # taken before reading: a change while we yield is not missed
        last = self._status(key)
        yield last
        while not self._closed:
            await changed.wait()
            changed = self._changed
            if self._closed:
                return
            current = self._status(key)
            if current != last:
                last = current
                yield current

    async def delete(self, key: WorkloadKey) -> None:
        self._check()
        live = self._live.get(key)
        if live is not None and live.managed:
            del self._live[key]
            self.deletes += 1
            self._cancel_timer(key)
            self._signal()

    async def live(self) -> list[WorkloadStatus]:
        self._check()
        return sorted((v.status for v in self._live.values() if v.managed), key=lambda s: s.key)

    async def close(self) -> None:
        self._closed = True
        for key in list(self._timers):
            self._cancel_timer(key)
        self._signal()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- inside -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RuntimeUnavailable(f"memory runtime {self.name} is closed")
        if self._unavailable:
            self.refused += 1
            raise RuntimeUnavailable(f"memory runtime {self.name} is unavailable (simulated outage)")

    def _status(self, key: WorkloadKey) -> WorkloadStatus:
        live = self._live.get(key)
        if live is None or not live.managed:
            return WorkloadStatus(key=key, phase=Phase.ABSENT)
        return live.status

    def _roll_out(self, workload: Workload, *, intent_id: str, failure: str = "") -> WorkloadStatus:
        key = workload.key
        self.applies += 1
        self.rollouts[intent_id] += 1
        self._incarnations += 1
        self._cancel_timer(key)
        replicas = max(workload.spec.replicas, 0)
        base = WorkloadStatus(
            key=key,
            phase=Phase.PROGRESSING,
            generation=workload.generation,
            spec_hash=workload.spec_hash,
            intent_id=intent_id,
            desired_replicas=replicas,
        )
        self._live[key] = _Live(workload, base, self._incarnations)
        final = (
            replace(base, phase=Phase.FAILED, reason=failure, message=f"the memory runtime was told to fail: {failure}")
            if failure
            else replace(base, phase=Phase.HEALTHY, ready_replicas=replicas)
        )
        if self.rollout_delay > 0:
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(self.rollout_delay, self._finish, key, self._incarnations, final)
            self._signal()
            return base
        self._set(key, final)
        return final

    def _finish(self, key: WorkloadKey, incarnation: int, final: WorkloadStatus) -> None:
        self._timers.pop(key, None)
        live = self._live.get(key)
        if live is not None and live.incarnation == incarnation:
            self._set(key, final)

    def _set(self, key: WorkloadKey, status: WorkloadStatus) -> None:
        self._live[key].status = status
        self._signal()

    def _cancel_timer(self, key: WorkloadKey) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _signal(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()


def _runtime_check(runtime: MemoryRuntime) -> Runtime:
    return runtime  # mypy: MemoryRuntime satisfies the Protocol
