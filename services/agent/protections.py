"""Protection checks the planner asks an agent to run: each at its interval, each result
reported as CHECK_PASSED / CHECK_FAILED with its check id.

A ChecksRequested replaces the earlier set for its target (empty = stop), so the runner
keeps one task per target and restarts it on every request. Each result's observation id
uses the check's interval slot (wall time // interval), so a retried publish and a
restarted agent re-running the same slot are recorded once. Running one check is
`services.agent.checks.run_check` (HTTP probe or command).

A CHECK_FAILED fails a FAIL-mode protection at once (services/planner/checks.py), so it
is sent only when it is a verdict about the release, never about a moment of Convoy's own
or of the workload's lifecycle:

- Only for a target its runtime reports ready: the runner reads the target's status
  (`status_of`, the runtime's `status`) before each probe, and while the workload is not
  HEALTHY — starting, restarting after a crash, rolling out, or its status cannot be read
  (runtime unavailable) — the check waits: it reports nothing for that slot (the planner
  keeps the last result it has; the workload's own FAILED observation, not a probe, is
  the verdict on a workload that cannot start). A process that crashed while a probe ran
  shows in the status read again after a failed probe.
- Only once confirmed: a failed probe is repeated after `confirm_after` seconds (at most
  the interval), with the status read again in between, and only a second failure in a
  row is reported. So the first probe after the agent starts (a restart adopting running
  workloads), after the check is requested, or after a workload came back, is never a
  verdict on its own — the retry semantics of a health check's failure threshold, which
  CheckRequest (interval only) does not carry.

`held` counts the slots that ended without a verdict for these reasons.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from eventstore.tasks import describe, stop_task
from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.agent import checks
from services.agent.runtimes import templates
from services.agent.runtimes.base import Phase, WorkloadKey, WorkloadStatus

log = structlog.get_logger("convoy.agent.protections")

DEFAULT_INTERVAL = 10.0
CONFIRM_AFTER = 1.0
"""Seconds before a failed probe is repeated (at most the check's interval)."""

Report = Callable[[WorkloadKey, convergence_pb2.CheckRequest, checks.CheckResult, str], Awaitable[None]]
"""(target, check, result, interval slot) -> publish the observation."""


ExtraValues = Callable[[WorkloadKey], Awaitable[Mapping[str, str]]]
"""Runtime-specific template values for a target (the local runtime's `{{.Port}}`)."""

StatusOf = Callable[[WorkloadKey], Awaitable[WorkloadStatus | None]]
"""The runtime's status of a target (None: it cannot be read now)."""


def ready(status: WorkloadStatus | None) -> bool:
    """A probe of this target can be a verdict: its workload runs and is HEALTHY."""
    return status is not None and status.phase is Phase.HEALTHY


async def run_once(
    request: convergence_pb2.CheckRequest,
    *,
    key: WorkloadKey,
    spec: convergence_pb2.WorkloadSpec | None,
    extra: Mapping[str, str] | None = None,
) -> checks.CheckResult:
    """Run one check once (the one place that knows the check-running API)."""
    values = templates.workload_values(spec, namespace=key.namespace) if spec is not None else {"Namespace": key.namespace}
    values.update(extra or {})
    values.update({f"Params.{k}": v for k, v in request.parameters.items()})
    return await checks.run_check(request, context=checks.CheckContext(values=values))


class ProtectionRunner:
    """One supervised task per target running its requested checks. Without `status_of`
    every target counts as ready (failures are still confirmed)."""

    def __init__(
        self,
        *,
        report: Report,
        spec_of: Callable[[WorkloadKey], convergence_pb2.WorkloadSpec | None],
        clock: Callable[[], float] = time.time,
        extra_values: ExtraValues | None = None,
        status_of: StatusOf | None = None,
        confirm_after: float = CONFIRM_AFTER,
    ) -> None:
        self._report = report
        self._spec_of = spec_of
        self._extra_values = extra_values
        self._status_of = status_of
        self._confirm_after = confirm_after
        self._clock = clock
        self._tasks: dict[WorkloadKey, asyncio.Task[None]] = {}
        self.held = 0
        """Slots that ended without a verdict: the target was not ready, or a failure waited for its confirmation."""

    async def replace(self, key: WorkloadKey, request: events_pb2.ChecksRequested) -> None:
        await stop_task(self._tasks.pop(key, None))
        if request.checks:
            self._tasks[key] = asyncio.create_task(self._run(key, list(request.checks)), name=f"convoy-agent-checks:{key}")

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            await stop_task(task)

    async def _run(self, key: WorkloadKey, requests: list[convergence_pb2.CheckRequest]) -> None:
        await asyncio.gather(*(self._loop(key, r) for r in requests))

    async def _loop(self, key: WorkloadKey, request: convergence_pb2.CheckRequest) -> None:
        interval = request.interval.ToTimedelta().total_seconds() if request.HasField("interval") else DEFAULT_INTERVAL
        interval = max(interval, 0.05)
        while True:
            slot = str(int(self._clock() // interval))
            try:
                result = await self._verdict(key, request, confirm_after=min(self._confirm_after, interval))
                if result is None:
                    self.held += 1
                else:
                    await self._report(key, request, result, slot)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a broken check must not stop the others
                log.error("check failed to run", check_id=request.check_id, error=describe(error))
            await asyncio.sleep(interval - (self._clock() % interval))

    async def _verdict(
        self, key: WorkloadKey, request: convergence_pb2.CheckRequest, *, confirm_after: float
    ) -> checks.CheckResult | None:
        """The result to report for this slot, None when there is no verdict (see the
        module docstring): a pass at once, a failure only when confirmed on a ready target."""
        if not await self._ready(key):
            return None
        result = await self._probe(key, request)
        if result.passed:
            return result
        if not await self._ready(key):
            return None  # it stopped being ready while we probed: the failure was the restart
        log.info("check failed once; probing again before reporting", check_id=request.check_id, message=result.message)
        await asyncio.sleep(confirm_after)
        if not await self._ready(key):
            return None
        result = await self._probe(key, request)
        if not result.passed and not await self._ready(key):
            return None
        return result

    async def _ready(self, key: WorkloadKey) -> bool:
        if self._status_of is None:
            return True
        return ready(await self._status_of(key))

    async def _probe(self, key: WorkloadKey, request: convergence_pb2.CheckRequest) -> checks.CheckResult:
        extra = await self._extra_values(key) if self._extra_values is not None else None
        return await run_once(request, key=key, spec=self._spec_of(key), extra=extra)
