"""Protection checks are verdicts on a release, never on a workload's (re)start: against a
real local runtime whose workload crashes and restarts, and real loopback servers.

The workload is the tests' version server behind a gate file: while the file is missing a
(re)started process waits before it listens, so the test decides how long a restart lasts
and triggers everything from observed state (the runtime's status, the runner's `held`)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
from services.agent import checks
from services.agent.protections import ProtectionRunner
from services.agent.runtimes.base import Phase, WorkloadKey, WorkloadStatus
from services.agent.runtimes.local import LocalRuntime, probe_values
from tests.conftest import eventually
from tests.contract.runtime_suite import make_workload
from tests.contract.test_runtime_local import SCRIPTS, http_check, local_settings, spec

KEY = WorkloadKey("prod", "shop", "web")

GATED = """
import os, runpy, sys, time
gate, sys.argv = sys.argv[1], sys.argv[2:]  # then: SCRIPT PORT, as the script expects
while not os.path.exists(gate):
    time.sleep(0.01)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def interval(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def probe(url: str, *, every: float = 0.05, expect: int = 200) -> events_pb2.ChecksRequested:
    request = convergence_pb2.CheckRequest(
        check_id="chk-rel-1.prod.http-ok.post-deployment",
        protection="http-ok",
        http_probe=resources_pb2.HttpProbe(url=url, expect_status=expect, timeout=interval(1)),
        interval=interval(every),
    )
    return events_pb2.ChecksRequested(checks=[request])


@dataclass
class Reports:
    results: list[checks.CheckResult]

    async def __call__(self, key: WorkloadKey, request: object, result: checks.CheckResult, slot: str) -> None:
        self.results.append(result)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> list[checks.CheckResult]:
        return [r for r in self.results if not r.passed]


@dataclass
class Gated:
    runtime: LocalRuntime
    gate: Path

    async def status(self, key: WorkloadKey) -> WorkloadStatus:
        return await self.runtime.status(key)

    async def values(self, key: WorkloadKey) -> dict[str, str]:
        return probe_values(await self.runtime.status(key))

    def runner(self, reports: Reports, **options: object) -> ProtectionRunner:
        return ProtectionRunner(
            report=reports, spec_of=lambda _key: None, extra_values=self.values, status_of=self.status, **options  # type: ignore[arg-type]
        )

    async def crash_into_a_slow_restart(self) -> None:
        """Close the gate and crash the process: it is restarted and waits at the gate."""
        [pid] = self.runtime.pids(KEY)
        self.gate.unlink()
        os.kill(pid, signal.SIGABRT)  # a crash (not a stop by hand): the supervisor restarts it

        async def restarting() -> bool:
            status = await self.runtime.status(KEY)
            return status.phase is Phase.PROGRESSING and self.runtime.pids(KEY) not in ([], [pid])

        await eventually(restarting, message="restarted, not listening yet")


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Gated]:
    gate = tmp_path / "gate"
    gate.touch()
    command = [sys.executable, "-c", GATED, str(gate), str(SCRIPTS / "version_server.py"), "{{.Port}}"]
    workload = make_workload(KEY, spec(KEY, command, replicas=1, check=http_check()), generation=1)
    runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
    try:
        await runtime.apply(workload)

        async def healthy() -> bool:
            return (await runtime.status(KEY)).phase is Phase.HEALTHY

        await eventually(healthy, message="HEALTHY")
        yield Gated(runtime, gate)
    finally:
        gate.touch()
        await runtime.close()


async def test_a_check_requested_while_the_workload_restarts_waits_for_it(gated: Gated) -> None:
    await gated.crash_into_a_slow_restart()
    reports = Reports([])
    runner = gated.runner(reports, confirm_after=0.05)
    await runner.replace(KEY, probe("http://127.0.0.1:{{.Port}}/"))
    try:
        await eventually(lambda: runner.held >= 5 or reports.results, message="probe slots passing while it restarts")
        assert reports.results == []  # nothing at all: no CHECK_FAILED for a restart
        gated.gate.touch()
        await eventually(lambda: reports.passed >= 1, message="CHECK_PASSED once it listens again")
        assert reports.failed == []
    finally:
        await runner.stop()


async def test_a_crash_and_restart_under_a_running_check_is_not_a_failure(gated: Gated) -> None:
    reports = Reports([])
    runner = gated.runner(reports)  # a failure is probed again up to an interval later: the crash shows by then
    await runner.replace(KEY, probe("http://127.0.0.1:{{.Port}}/", every=0.5))
    try:
        await eventually(lambda: reports.passed >= 1, message="CHECK_PASSED")
        await gated.crash_into_a_slow_restart()
        held = runner.held
        await eventually(lambda: runner.held >= held + 3 or reports.failed, message="slots held while it restarts")
        assert reports.failed == []
        passed = reports.passed
        gated.gate.touch()
        await eventually(lambda: reports.passed > passed, message="CHECK_PASSED after the restart")
        assert reports.failed == []
    finally:
        await runner.stop()


async def test_a_ready_workload_that_fails_its_probe_fails_the_check(gated: Gated) -> None:
    reports = Reports([])
    runner = gated.runner(reports, confirm_after=0.05)
    await runner.replace(KEY, probe("http://127.0.0.1:{{.Port}}/", expect=204))
    try:
        await eventually(lambda: reports.failed != [], message="CHECK_FAILED")
        assert "expected 204" in reports.failed[0].message and reports.passed == 0
    finally:
        await runner.stop()


async def test_a_single_failure_is_probed_again_before_it_is_reported() -> None:
    """The first probe after an agent starts may meet a moment of the target's own: one
    failure is confirmed by a second probe before it becomes CHECK_FAILED."""
    answers = iter([500])

    async def once_broken(request: web.Request) -> web.Response:
        return web.Response(status=next(answers, 200), text="starting up")

    app = web.Application()
    app.router.add_get("/", once_broken)
    server = web.AppRunner(app, shutdown_timeout=0.1)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = server.addresses[0][1]
    reports = Reports([])
    runner = ProtectionRunner(report=reports, spec_of=lambda _key: None, confirm_after=0.05)
    try:
        await runner.replace(KEY, probe(f"http://127.0.0.1:{port}/"))
        await eventually(lambda: reports.passed >= 2, message="CHECK_PASSED")
        assert reports.failed == []
        assert next(answers, None) is None  # the 500 was served
    finally:
        await runner.stop()
        await server.cleanup()
