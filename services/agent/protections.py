"""Protection checks the planner asks an agent to run: each at its interval, each result
reported as CHECK_PASSED / CHECK_FAILED with its check id.

A ChecksRequested replaces the earlier set for its target (empty = stop), so the runner
keeps one task per target and restarts it on every request. Each result's observation id
uses the check's interval slot (wall time // interval), so a retried publish and a
restarted agent re-running the same slot are recorded once. Running one check is
`services.agent.checks.run_check` (HTTP probe or command).
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
from services.agent.runtimes.base import WorkloadKey

log = structlog.get_logger("convoy.agent.protections")

DEFAULT_INTERVAL = 10.0

Report = Callable[[WorkloadKey, convergence_pb2.CheckRequest, checks.CheckResult, str], Awaitable[None]]
"""(target, check, result, interval slot) -> publish the observation."""


ExtraValues = Callable[[WorkloadKey], Awaitable[Mapping[str, str]]]
"""Runtime-specific template values for a target (the local runtime's `{{.Port}}`)."""


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
    """One supervised task per target running its requested checks."""

    def __init__(
        self,
        *,
        report: Report,
        spec_of: Callable[[WorkloadKey], convergence_pb2.WorkloadSpec | None],
        clock: Callable[[], float] = time.time,
        extra_values: ExtraValues | None = None,
    ) -> None:
        self._report = report
        self._spec_of = spec_of
        self._extra_values = extra_values
        self._clock = clock
        self._tasks: dict[WorkloadKey, asyncio.Task[None]] = {}

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
                extra = await self._extra_values(key) if self._extra_values is not None else None
                result = await run_once(request, key=key, spec=self._spec_of(key), extra=extra)
                await self._report(key, request, result, slot)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a broken check must not stop the others
                log.error("check failed to run", check_id=request.check_id, error=describe(error))
            await asyncio.sleep(interval - (self._clock() % interval))
