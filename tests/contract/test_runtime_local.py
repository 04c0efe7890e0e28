"""The local process runtime passes the runtime contract, plus what only it does:
ports and endpoints, a failed rollout leaving the old replicas serving, restarts from the
state folder, orphans of a crashed agent, and process groups stopped for good.

A crashed agent is a real one: `CrashHost` runs a LocalRuntime in a subprocess (the
`HOST` script) and the test kills it with SIGKILL once it reported what the test waits
for; the next LocalRuntime opens the same state folder in the test's process and must
adopt what still runs (same pids, same ports, HEALTHY, no restart) and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from google.protobuf.duration_pb2 import Duration

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes import documents, processes
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    Runtime,
    StaleGeneration,
    Workload,
    WorkloadKey,
)
from services.agent.runtimes.local import LocalRuntime, LocalSettings, parse_endpoints, probe_values
from services.agent.runtimes.localstate import STATE_ENV, process_start_time
from services.agent.runtimes.supervisor import ProcessSpec, ReplicaState, Supervisor, SupervisorSettings
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
ROOT = Path(__file__).resolve().parents[2]
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
    """Not running any more (a zombie nobody reaped yet counts as gone: orphans of a killed
    agent belong to init, which may be slow to reap them)."""
    info = processes.inspect(pid)
    return info is None or info.state == "Z"


HOST = r'''
"""A LocalRuntime in a process of its own, to be killed like a crashing agent.
argv: ROOT WORKLOAD-FILE...: applies each workload once the one before is HEALTHY, and
prints a line `STATUS <json>` whenever the status or the pids change, until killed (its
log lines go to stdout too)."""
import asyncio, json, sys
from pathlib import Path
from services.agent.runtimes import documents
from services.agent.runtimes.base import Phase
from services.agent.runtimes.local import LocalRuntime
from tests.contract.test_runtime_local import local_settings


async def main():
    runtime = await LocalRuntime.open(settings=local_settings(Path(sys.argv[1])))
    workloads = [documents.loads(Path(path).read_bytes()) for path in sys.argv[2:]]
    last = None
    for n, workload in enumerate(workloads):
        await runtime.apply(workload)
        while True:  # polled: a new pid alone changes no status
            status = await runtime.status(workload.key)
            seen = {"generation": status.generation, "phase": status.phase.value,
                    "pids": runtime.pids(workload.key), "message": status.message}
            if seen != last:
                print("STATUS", json.dumps(seen), flush=True)
                last = seen
            if n < len(workloads) - 1 and status.phase is Phase.HEALTHY and status.generation == workload.generation:
                break
            await asyncio.sleep(0.01)


asyncio.run(main())
'''


class CrashHost:
    """A LocalRuntime in a subprocess, killed with SIGKILL by the test: an agent crash."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.proc: asyncio.subprocess.Process | None = None
        self.seen: list[dict[str, object]] = []

    async def run(self, *workloads: Workload) -> None:
        paths = []
        for n, workload in enumerate(workloads):
            path = self.tmp_path / f"workload-{n}.json"
            path.write_text(documents.dumps(workload))
            paths.append(str(path))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOST, str(self.tmp_path), *paths, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT
        )

    async def until(self, predicate: Callable[[dict[str, object]], bool], *, what: str) -> dict[str, object]:
        """Read its status lines until one satisfies `predicate`."""
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(30):
            while line := await self.proc.stdout.readline():
                if not line.startswith(b"STATUS "):
                    continue
                self.seen.append(json.loads(line.removeprefix(b"STATUS ")))
                if predicate(self.seen[-1]):
                    return self.seen[-1]
        raise AssertionError(f"the runtime host exited before {what}; it said: {self.seen[-3:]}")

    async def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        assert await self.proc.wait() == -signal.SIGKILL


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[CrashHost]:
    made = CrashHost(tmp_path)
    try:
        yield made
    finally:
        if made.proc is not None and made.proc.returncode is None:
            made.proc.kill()
            await made.proc.wait()
        # Whatever a failing test left of the host's processes goes with it.
        for pid in running_in(tmp_path):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def running_in(folder: Path) -> list[int]:
    """Processes whose working directory is inside `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder.resolve()):
                found.append(int(entry.name))
    return found


def healthy_at(generation: int, replicas: int) -> Callable[[dict[str, object]], bool]:
    return lambda s: s["phase"] == "healthy" and s["generation"] == generation and len(s["pids"]) == replicas  # type: ignore[arg-type]


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

    async def test_a_nul_byte_is_refused_before_anything_starts_and_later_generations_apply(
        self, local: LocalRuntime, key: WorkloadKey
    ) -> None:
        """The issue's `docroot: "\u0000"` reaching the runtime (an old release, a client
        that bypassed the API): it used to start a supervision that died on spawn and
        whose stop re-raised `ValueError: embedded null byte` on every later rollout."""
        first = make_workload(key, server_spec(key, version="v1"), generation=1)
        await local.apply(first)
        await self.wait_healthy(local, first)
        bad = spec(key, [sys.executable, str(SCRIPTS / "version_server.py"), "{{.Port}}", "/srv\x00"], version="v9")
        with pytest.raises(ApplyRejected, match="NUL byte"):
            await local.apply(make_workload(key, bad, generation=2))
        env = server_spec(key, version="v9")
        env.programs[0].env["DOCROOT"] = "\x00"
        with pytest.raises(ApplyRejected, match="environment variable DOCROOT holds a NUL byte"):
            await local.apply(make_workload(key, env, generation=2))
        assert (await local.status(key)).generation == 1  # v1 kept serving
        third = make_workload(key, server_spec(key, version="v10"), generation=3)
        await local.apply(third)
        await self.wait_healthy(local, third)

    async def test_a_replica_whose_spawn_raises_crashes_and_stops_cleanly(self, tmp_path: Path) -> None:
        """Below the render's check: an argument the OS refuses is a replica that cannot
        start (a crash, with the reason), and stopping it raises nothing."""
        settings = FAST
        changed = asyncio.Event()
        replica = Supervisor(
            ProcessSpec(name="web-0", argv=(sys.executable, "bad\x00arg"), env=None, cwd=tmp_path, log=tmp_path / "web-0.log"),
            settings=settings, on_change=changed.set,
        )
        replica.start()
        await eventually(lambda: replica.snapshot().crashes >= 1, message="the spawn failure counted as a crash")
        assert "embedded null byte" in replica.snapshot().output
        await replica.stop()
        assert replica.snapshot().state is ReplicaState.STOPPED

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

    # ---- a crashed agent's processes are adopted -----------------------------------------

    def chatty_spec(self, key: WorkloadKey, *, replicas: int) -> convergence_pb2.WorkloadSpec:
        """Python's http.server: it writes a log line for every request (so a pipe to a
        dead agent would break it)."""
        command = [sys.executable, "-m", "http.server", "{{.Port}}", "--bind", "127.0.0.1", "--directory", str(SCRIPTS)]
        return spec(key, command, replicas=replicas, check=http_check())

    @pytest.mark.fault
    async def test_a_crashed_agents_processes_are_adopted_not_restarted(
        self, tmp_path: Path, key: WorkloadKey, host: CrashHost
    ) -> None:
        workload = make_workload(key, self.chatty_spec(key, replicas=2), generation=3)
        await host.run(workload)
        healthy = await host.until(healthy_at(3, 2), what="HEALTHY")
        pids, endpoints = list(healthy["pids"]), parse_endpoints(str(healthy["message"]))  # type: ignore[call-overload]
        await host.crash()
        # The processes outlive their agent and keep serving (and logging) without it.
        assert [gone(pid) for pid in pids] == [False, False]
        for port in endpoints.values():
            await get(port)
        assert [gone(pid) for pid in pids] == [False, False]

        runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            status = await runtime.status(key)  # right away: adopted, checked once, not restarted
            assert (status.phase, status.generation, status.spec_hash) == (Phase.HEALTHY, 3, workload.spec_hash), status
            assert runtime.pids(key) == pids
            assert parse_endpoints(status.message) == endpoints
            for port in endpoints.values():
                await get(port)
            await runtime.apply(workload)  # the intent again: nothing changes
            assert runtime.pids(key) == pids

            # Supervised as its own: a crash of an adopted process is seen and restarted ...
            os.kill(pids[0], signal.SIGABRT)
            await eventually(lambda: len(runtime.pids(key)) == 2 and pids[0] not in runtime.pids(key), message="restarted")
            await self.wait_healthy(runtime, workload)
            assert pids[1] in runtime.pids(key)
            # ... and a new generation replaces the adopted replica.
            second = make_workload(key, self.chatty_spec(key, replicas=1), generation=4)
            await runtime.apply(second)
            await self.wait_healthy(runtime, second)
            await eventually(lambda: gone(pids[1]), message="the adopted replica stopped")
            last = runtime.pids(key)
        finally:
            await runtime.close()
        assert all(gone(pid) for pid in last)

    @pytest.mark.fault
    async def test_a_replica_that_died_while_no_agent_ran_is_started_again(
        self, tmp_path: Path, key: WorkloadKey, host: CrashHost
    ) -> None:
        workload = make_workload(key, server_spec(key, replicas=2), generation=1)
        await host.run(workload)
        healthy = await host.until(healthy_at(1, 2), what="HEALTHY")
        pids, endpoints = list(healthy["pids"]), parse_endpoints(str(healthy["message"]))  # type: ignore[call-overload]
        await host.crash()
        died, kept = pids
        os.kill(died, signal.SIGKILL)
        await eventually(lambda: gone(died), message="replica 0 dead")

        runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            status = await self.wait_healthy(runtime, workload)
            now = runtime.pids(key)
            assert kept in now and died not in now and len(now) == 2
            found = parse_endpoints(status.message)
            assert found["web-1"] == endpoints["web-1"]  # the adopted replica keeps its port
            assert [await get(port) for port in found.values()] == ["v1", "v1"]
            await runtime.delete(key)  # the adopted process goes with its workload
            assert all(gone(pid) for pid in now)
            assert (await runtime.status(key)).phase is Phase.ABSENT
        finally:
            await runtime.close()

    @pytest.mark.fault
    async def test_a_reused_pid_is_neither_adopted_nor_killed(
        self, tmp_path: Path, key: WorkloadKey, host: CrashHost
    ) -> None:
        workload = make_workload(key, server_spec(key, replicas=1), generation=1)
        await host.run(workload)
        [pid] = (await host.until(healthy_at(1, 1), what="HEALTHY"))["pids"]  # type: ignore[misc]
        await host.crash()
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: gone(pid), message="the replica dead")
        # Its pid is taken by an unrelated process: the record names a stranger, once with
        # the stranger's own start time (reused within the same clock tick: only the token
        # tells them apart), once with the recorded one.
        stranger = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True)
        try:
            pids_file = tmp_path / "local-state" / "workloads" / key.namespace / key.application / f"{key.service}.pids"
            [record] = json.loads(pids_file.read_text())
            assert record["pid"] == pid
            same_tick = {**record, "pid": stranger.pid, "start": process_start_time(stranger.pid)}
            pids_file.write_text(json.dumps([same_tick, {**record, "pid": stranger.pid}]))

            runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
            try:
                await self.wait_healthy(runtime, workload)
                assert stranger.pid not in runtime.pids(key) and len(runtime.pids(key)) == 1
                assert stranger.poll() is None, "an unrelated process was killed"
            finally:
                await runtime.close()
            assert stranger.poll() is None, "close() stopped an unrelated process"
        finally:
            stranger.kill()
            stranger.wait()

    @pytest.mark.fault
    async def test_a_crash_mid_rollout_keeps_the_new_generation_and_kills_the_old(
        self, tmp_path: Path, key: WorkloadKey, host: CrashHost
    ) -> None:
        first = make_workload(key, server_spec(key, replicas=1), generation=1)
        # Runs, never ready: the rollout is still under way when the agent dies.
        never = resources_pb2.HealthCheck(tcp=resources_pb2.TcpSocket(port=8080), period=duration(0.1))
        waiting = spec(key, [sys.executable, "-c", "import signal; signal.pause()"], replicas=1, check=never)
        second = make_workload(key, waiting, generation=2)
        await host.run(first, second)
        both = await host.until(lambda s: s["generation"] == 2 and len(s["pids"]) == 2, what="both generations running")  # type: ignore[arg-type]
        await host.crash()
        old = next(s["pids"] for s in host.seen if s["phase"] == "healthy" and s["generation"] == 1)
        new = [p for p in both["pids"] if p not in old]  # type: ignore[union-attr, operator]
        assert len(old) == len(new) == 1, host.seen  # type: ignore[arg-type]

        runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
        try:
            assert gone(old[0]), "the stale generation's process was left running"
            assert runtime.pids(key) == new
            status = await runtime.status(key)
            assert (status.phase, status.generation) == (Phase.PROGRESSING, 2)
        finally:
            await runtime.close()
        assert gone(new[0])

    @pytest.mark.fault
    async def test_an_unrecorded_process_of_this_state_folder_is_killed(self, tmp_path: Path) -> None:
        """Spawned by an agent that died before it could record it: found by its marker."""
        state = tmp_path / "local-state"
        state.mkdir()
        pause = [sys.executable, "-c", "import signal; signal.pause()"]
        ours = subprocess.Popen(pause, start_new_session=True, env={**os.environ, STATE_ENV: str(state.resolve())})
        other = subprocess.Popen(pause, start_new_session=True, env={**os.environ, STATE_ENV: str(tmp_path / "elsewhere")})
        try:
            await eventually(lambda: processes.environment(ours.pid).get(STATE_ENV) == str(state.resolve()))
            runtime = await LocalRuntime.open(settings=local_settings(tmp_path))
            await runtime.close()
            assert ours.wait(timeout=5) == -signal.SIGKILL
            assert other.poll() is None
        finally:
            for proc in (ours, other):
                proc.kill()
                proc.wait()
