"""The local process runtime passes the runtime contract, plus what only it does:
ports and endpoints, a failed rollout leaving the old replicas serving, restarts from the
state folder, orphans of a crashed agent, and process groups stopped for good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from google.protobuf.duration_pb2 import Duration

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes.base import FailureReason, Phase, Runtime, StaleGeneration, WorkloadKey
from services.agent.runtimes.local import LocalRuntime, LocalSettings, parse_endpoints, probe_values
from services.agent.runtimes.localstate import process_start_time
from services.agent.runtimes.supervisor import SupervisorSettings
from tests.conftest import eventually
from tests.contract.runtime_suite import (
    FailureMode,
    RuntimeContract,
    RuntimeFactory,
    make_workload,
    processes_with_env,
    zombie_children,
)

SCRIPTS = Path(__file__).parent / "exec_scripts"
FAST = SupervisorSettings(
    restart_backoff=0.05,
    restart_backoff_cap=0.2,
    crash_loop_after=3,
    stop_grace=2.0,
    startup_check_period=0.05,
    ready_without_check_after=0.1,
)


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def http_check(port: int = 8080) -> resources_pb2.HealthCheck:
    return resources_pb2.HealthCheck(
        http=resources_pb2.HttpGet(path="/", port=port),
        period=duration(0.1),
        timeout=duration(1),
        failure_threshold=2,
    )


def spec(
    key: WorkloadKey,
    command: list[str],
    *,
    version: str = "v1",
    replicas: int = 2,
    check: resources_pb2.HealthCheck | None = None,
    deadline: float = 15.0,
) -> convergence_pb2.WorkloadSpec:
    program = resources_pb2.Program(
        name=key.service,
        command=command,
        env={"VERSION": version, "PYTHONUNBUFFERED": "1"},
        ports=[resources_pb2.Port(name="http", port=8080, protocol="TCP")],
    )
    if check is not None:
        program.health_check.CopyFrom(check)
    return convergence_pb2.WorkloadSpec(
        application=key.application,
        service=key.service,
        channel="staging",
        version=version,
        programs=[program],
        replicas=replicas,
        progress_deadline=duration(deadline),
    )


def server_spec(key: WorkloadKey, *, version: str = "v1", replicas: int = 2) -> convergence_pb2.WorkloadSpec:
    command = [sys.executable, str(SCRIPTS / "version_server.py"), "{{.Port}}"]
    return spec(key, command, version=version, replicas=replicas, check=http_check())


def local_settings(tmp_path: Path, **overrides: object) -> LocalSettings:
    values: dict[str, object] = {
        "state_dir": tmp_path / "local-state",
        "supervisor": FAST,
        "watch_interval": 0.05,
        "default_progress_deadline": 15.0,
    }
    values.update(overrides)
    return LocalSettings(**values)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    return process_start_time(pid) is None


async def get(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
        assert response.status == 200
        return await response.text()


class TestLocalRuntime(RuntimeContract):
    failure_modes: ClassVar[dict[str, str]] = {
        FailureMode.CRASH_LOOP: FailureReason.CRASH_LOOP,
        FailureMode.NEVER_READY: FailureReason.PROGRESS_DEADLINE,
        FailureMode.BAD_COMMAND: FailureReason.APPLY_ERROR,
    }

    @pytest.fixture
    def runtime_factory(self, tmp_path: Path) -> RuntimeFactory:
        async def make() -> Runtime:
            return await LocalRuntime.open(settings=local_settings(tmp_path))

        return make

    def healthy_spec(self, key: WorkloadKey, *, version: str) -> convergence_pb2.WorkloadSpec:
        return server_spec(key, version=version)

    def failing_spec(self, key: WorkloadKey, mode: str) -> convergence_pb2.WorkloadSpec:
        if mode == FailureMode.CRASH_LOOP:
            crash = "import sys; print('boom: no database', flush=True); sys.exit(3)"
            return spec(key, [sys.executable, "-c", crash], check=http_check())
        if mode == FailureMode.NEVER_READY:
            wait = "import signal; signal.pause()"
            never = resources_pb2.HealthCheck(tcp=resources_pb2.TcpSocket(port=8080), period=duration(0.1))
            return spec(key, [sys.executable, "-c", wait], check=never, deadline=1.0)
        assert mode == FailureMode.BAD_COMMAND
        return spec(key, ["/nonexistent/convoy-test-server", "{{.Port}}"])

    async def drift(self, runtime: Runtime, key: WorkloadKey) -> None:
        assert isinstance(runtime, LocalRuntime)
        os.kill(runtime.pids(key)[0], signal.SIGKILL)

    async def fingerprint(self, runtime: Runtime, key: WorkloadKey) -> object:
        assert isinstance(runtime, LocalRuntime)
        return tuple(runtime.pids(key))

    async def add_foreign_workload(self, runtime: Runtime, namespace: str) -> None:
        assert isinstance(runtime, LocalRuntime)
        # Files in the state folder that this runtime did not write are not workloads.
        folder = runtime.settings.state_dir / "workloads" / namespace
        (folder / "notes.txt").write_text("not a workload\n")
        (folder / "other" / "app").mkdir(parents=True)
        (folder / "other" / "app" / "svc.json").write_text("{}\n")

    async def assert_stopped(self, runtime: Runtime, keys: list[WorkloadKey]) -> None:
        for namespace in {k.namespace for k in keys}:
            assert processes_with_env("CONVOY_NAMESPACE", namespace) == []
        assert zombie_children() == []

    # ---- the local runtime only ----------------------------------------------------------

    @pytest.fixture
    async def local(self, tmp_path: Path) -> AsyncIterator[LocalRuntime]:
        runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
        yield runtime
        await runtime.close()

    async def test_each_replica_gets_its_own_port_in_the_message(self, local: LocalRuntime, key: WorkloadKey) -> None:
        workload = make_workload(key, server_spec(key, version="v7"), generation=1)
        await local.apply(workload)
        healthy = await self.wait_healthy(local, workload)
        endpoints = parse_endpoints(healthy.message)
        assert sorted(endpoints) == ["web-0", "web-1"]
        assert len(set(endpoints.values())) == 2
        assert [await get(port) for port in endpoints.values()] == ["v7", "v7"]
        assert local.endpoints(key) == endpoints
        assert probe_values(healthy)["Port"] == str(endpoints["web-0"])

    async def test_a_failed_rollout_leaves_the_old_replicas_serving(self, local: LocalRuntime, key: WorkloadKey) -> None:
        first = make_workload(key, server_spec(key, version="v1"), generation=1)
        await local.apply(first)
        old_endpoints = parse_endpoints((await self.wait_healthy(local, first)).message)
        old_pids = set(local.pids(key))

        second = make_workload(key, self.failing_spec(key, FailureMode.CRASH_LOOP), generation=2)
        await local.apply(second)
        failed = await self.wait_for(local, key, lambda s: s.phase is Phase.FAILED, what="FAILED")
        assert (failed.reason, failed.generation, failed.ready_replicas) == (FailureReason.CRASH_LOOP, 2, 0)
        assert "boom: no database" in failed.message
        assert "exited with code 3" in failed.message
        assert old_pids <= set(local.pids(key))
        assert [await get(port) for port in old_endpoints.values()] == ["v1", "v1"]

        # A good third generation replaces both.
        third = make_workload(key, server_spec(key, version="v3", replicas=1), generation=3)
        await local.apply(third)
        healthy = await self.wait_healthy(local, third)
        assert [await get(port) for port in parse_endpoints(healthy.message).values()] == ["v3"]
        await eventually(lambda: all(gone(pid) for pid in old_pids), message="old replicas stopped")
        assert len(local.pids(key)) == 1

    async def test_a_restarted_agent_runs_what_was_applied(self, tmp_path: Path, key: WorkloadKey) -> None:
        first = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            workload = make_workload(key, server_spec(key, replicas=1), generation=4)
            await first.apply(workload)
            await self.wait_healthy(first, workload)
            before = first.pids(key)
        finally:
            await first.close()
        assert all(gone(pid) for pid in before)

        second = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            listed = await second.live()
            assert [(s.key, s.generation, s.spec_hash) for s in listed] == [(key, 4, workload.spec_hash)]
            await self.wait_healthy(second, workload)
            with pytest.raises(StaleGeneration):
                await second.apply(make_workload(key, server_spec(key, version="v0"), generation=3))
            pids = second.pids(key)
            await second.apply(workload)
            assert second.pids(key) == pids
        finally:
            await second.close()

    async def test_orphans_of_a_crashed_agent_are_killed(self, tmp_path: Path, key: WorkloadKey) -> None:
        orphan = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True)
        try:
            folder = tmp_path / "local-state" / "workloads" / key.namespace / key.application
            folder.mkdir(parents=True)
            records = [{"pid": orphan.pid, "start": process_start_time(orphan.pid)}]
            (folder / f"{key.service}.pids").write_text(json.dumps(records))
            runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
            await runtime.close()
            assert orphan.wait(timeout=5) == -signal.SIGKILL
        finally:
            orphan.kill()
            orphan.wait()

    async def test_a_state_file_edited_by_hand_is_drift(self, local: LocalRuntime, key: WorkloadKey) -> None:
        workload = make_workload(key, server_spec(key, replicas=1), generation=1)
        await local.apply(workload)
        await self.wait_healthy(local, workload)
        path = local.settings.state_dir / "workloads" / key.namespace / key.application / f"{key.service}.json"
        path.write_text(path.read_text().replace('"generation": 1', '"generation": 9'))
        drifted = await self.wait_for(local, key, lambda s: s.drifted, what="drifted")
        assert "state file" in drifted.message
        await local.apply(workload, repair=True)
        assert not (await local.status(key)).drifted
        assert json.loads(path.read_text())["generation"] == 1

    async def test_close_kills_a_process_group_that_ignores_sigterm(self, tmp_path: Path, key: WorkloadKey) -> None:
        stubborn = (
            "import signal, subprocess, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()']);"
            "print('started', flush=True); signal.pause()"
        )
        quick = SupervisorSettings(
            restart_backoff=0.05, startup_check_period=0.05, ready_without_check_after=0.1, stop_grace=0.3
        )
        runtime = await LocalRuntime.open(settings=local_settings(tmp_path, supervisor=quick))
        try:
            workload = make_workload(key, spec(key, [sys.executable, "-c", stubborn], replicas=1), generation=1)
            await runtime.apply(workload)
            await self.wait_healthy(runtime, workload)
            await eventually(lambda: len(processes_with_env("CONVOY_NAMESPACE", key.namespace)) == 2)
        finally:
            await runtime.close()
        assert processes_with_env("CONVOY_NAMESPACE", key.namespace) == []
        assert zombie_children() == []

    async def test_a_replica_that_crashes_once_is_restarted_without_drift(
        self, local: LocalRuntime, key: WorkloadKey
    ) -> None:
        workload = make_workload(key, server_spec(key, replicas=1), generation=1)
        await local.apply(workload)
        await self.wait_healthy(local, workload)
        [pid] = local.pids(key)
        os.kill(pid, signal.SIGABRT)  # a crash, not someone stopping it
        await eventually(lambda: local.pids(key) not in ([], [pid]), message="restarted")
        restarted = await self.wait_healthy(local, workload)
        assert not restarted.drifted

    async def test_a_restored_workload_that_cannot_start_fails_until_repaired(
        self, tmp_path: Path, key: WorkloadKey
    ) -> None:
        program = tmp_path / "bin" / "web-server"
        program.parent.mkdir()
        program.write_text(f"#!{sys.executable}\nimport runpy, sys\nrunpy.run_path({str(SCRIPTS / 'version_server.py')!r}, run_name='__main__')\n")
        program.chmod(0o755)
        workload = make_workload(key, spec(key, [str(program), "{{.Port}}"], replicas=1, check=http_check()), generation=2)
        first = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            await first.apply(workload)
            await self.wait_healthy(first, workload)
        finally:
            await first.close()

        program.rename(program.with_suffix(".moved"))
        second = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            status = await second.status(key)
            assert (status.phase, status.reason, status.generation) == (Phase.FAILED, FailureReason.APPLY_ERROR, 2)
            assert "not an executable" in status.message
            program.with_suffix(".moved").rename(program)
            await second.apply(workload, repair=True)
            await self.wait_healthy(second, workload)
        finally:
            await second.close()
