"""The exec runtime passes the runtime contract, driving a small exec script
(exec_scripts/fake_runtime.py) — plus the exec contract itself: the document and
variables commands get, exit-code-only fetches, retries of exit 75, timeouts that kill
the command's process group, and commands that fail."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from google.protobuf.duration_pb2 import Duration

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes import documents
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    Runtime,
    RuntimeUnavailable,
    StaleGeneration,
    WorkloadKey,
)
from services.agent.runtimes.exec import ExecRuntime, ExecSettings, open_runtime
from tests.contract.runtime_suite import (
    FailureMode,
    RuntimeContract,
    RuntimeFactory,
    make_workload,
    processes_with_env,
    zombie_children,
)

SCRIPT = Path(__file__).parent / "exec_scripts" / "fake_runtime.py"


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def fake_spec(
    key: WorkloadKey, *, version: str = "v1", behaviour: str = "healthy", deadline: float = 15.0
) -> convergence_pb2.WorkloadSpec:
    return convergence_pb2.WorkloadSpec(
        application=key.application,
        service=key.service,
        channel="staging",
        version=version,
        replicas=2,
        progress_deadline=duration(deadline),
        programs=[
            resources_pb2.Program(
                name=key.service,
                image=f"registry.example/{key.service}:{version}",
                env={"FAKE_BEHAVIOUR": behaviour, "VERSION": version},
            )
        ],
    )


def exec_settings(
    tmp_path: Path, *, timeout: float = 10.0, retries: int = 2, env: dict[str, str] | None = None, **config: list[str]
) -> ExecSettings:
    store = tmp_path / "fake-store"
    command = [sys.executable, str(SCRIPT), "--store", str(store)]
    exec_config = resources_pb2.ExecRuntimeConfig(
        apply=config.get("apply", [*command, "apply"]),
        fetch=config.get("fetch", [*command, "fetch"]),
        delete=config.get("delete", [*command, "delete"]),
        timeout=duration(timeout),
        retries=retries,
    )
    return ExecSettings(
        name="fake",
        config=exec_config,
        state_dir=tmp_path / "exec-state",
        retry_backoff=0.01,
        retry_backoff_cap=0.05,
        kill_grace=0.5,
        poll_interval=0.05,
        base_env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def stored(tmp_path: Path, key: WorkloadKey) -> dict[str, object]:
    path = tmp_path / "fake-store" / key.namespace / key.application / f"{key.service}.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


class TestExecRuntime(RuntimeContract):
    failure_modes: ClassVar[dict[str, str]] = {
        FailureMode.CRASH_LOOP: FailureReason.CRASH_LOOP,
        FailureMode.NEVER_READY: FailureReason.PROGRESS_DEADLINE,
        FailureMode.BAD_COMMAND: FailureReason.COMMAND_EXIT,
    }

    @pytest.fixture
    def runtime_factory(self, tmp_path: Path) -> RuntimeFactory:
        async def make() -> Runtime:
            return await ExecRuntime.open(settings=exec_settings(tmp_path))

        return make

    def healthy_spec(self, key: WorkloadKey, *, version: str) -> convergence_pb2.WorkloadSpec:
        return fake_spec(key, version=version)

    def failing_spec(self, key: WorkloadKey, mode: str) -> convergence_pb2.WorkloadSpec:
        behaviour = {
            FailureMode.CRASH_LOOP: "crash",
            FailureMode.NEVER_READY: "never_ready",
            FailureMode.BAD_COMMAND: "reject",
        }[mode]
        return fake_spec(key, behaviour=behaviour, deadline=0.5)

    def store_path(self, runtime: Runtime, key: WorkloadKey) -> Path:
        assert isinstance(runtime, ExecRuntime)
        store = Path(runtime.settings.config.apply[3])
        return store / key.namespace / key.application / f"{key.service}.json"

    async def drift(self, runtime: Runtime, key: WorkloadKey) -> None:
        path = self.store_path(runtime, key)
        record = json.loads(path.read_text())
        record["edited"] = True
        path.write_text(json.dumps(record))

    async def fingerprint(self, runtime: Runtime, key: WorkloadKey) -> object:
        return json.loads(self.store_path(runtime, key).read_text())["instance"]

    async def add_foreign_workload(self, runtime: Runtime, namespace: str) -> None:
        # Something in the script's store that Convoy never applied.
        foreign = self.store_path(runtime, WorkloadKey(namespace=namespace, application="legacy", service="cron"))
        foreign.parent.mkdir(parents=True, exist_ok=True)
        foreign.write_text(json.dumps({"document": {}, "applied_at": 0, "instance": "x", "edited": False}))

    async def assert_stopped(self, runtime: Runtime, keys: list[WorkloadKey]) -> None:
        # Nothing runs between commands; no command or child of one is left, none unreaped.
        for namespace in {k.namespace for k in keys}:
            assert processes_with_env("CONVOY_NAMESPACE", namespace) == []
        assert zombie_children() == []
        with pytest.raises(RuntimeUnavailable):
            await runtime.status(keys[0])

    # ---- the exec contract ---------------------------------------------------------------

    async def test_commands_get_the_workload_document_and_variables(self, tmp_path: Path, key: WorkloadKey) -> None:
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path))
        try:
            workload = make_workload(key, fake_spec(key, version="v9"), generation=3)
            await runtime.apply(workload)
            record = stored(tmp_path, key)
            assert documents.from_document(record["document"]) == workload
        finally:
            await runtime.close()

    async def test_a_fetch_may_answer_with_exit_codes_only(self, tmp_path: Path, key: WorkloadKey) -> None:
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path, env={"FAKE_FETCH": "exit"}))
        try:
            workload = make_workload(key, fake_spec(key), generation=1)
            await runtime.apply(workload)
            status = await runtime.status(key)
            assert (status.phase, status.generation, status.spec_hash, status.drifted) == (
                Phase.HEALTHY,
                1,
                workload.spec_hash,
                False,
            )
            assert status.ready_replicas == status.desired_replicas == 2
            await self.drift(runtime, key)
            assert (await runtime.status(key)).drifted
        finally:
            await runtime.close()

    async def test_unavailable_is_retried_with_backoff(self, tmp_path: Path, key: WorkloadKey) -> None:
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path, retries=2))
        try:
            workload = make_workload(key, fake_spec(key, behaviour="tempfail:2"), generation=1)
            await runtime.apply(workload)
            attempts = tmp_path / "fake-store" / key.namespace / key.application / f"{key.service}.attempts"
            assert attempts.read_text() == "3"
            await self.wait_healthy(runtime, workload)

            other = WorkloadKey(namespace=key.namespace, application="shop", service="api")
            busy = make_workload(other, fake_spec(other, behaviour="tempfail:5"), generation=1)
            with pytest.raises(RuntimeUnavailable, match="control plane busy") as raised:
                await runtime.apply(busy)
            assert raised.value.retryable
            assert (await runtime.status(other)).phase is Phase.ABSENT
        finally:
            await runtime.close()

    async def test_a_command_that_hangs_is_killed_with_its_children(self, tmp_path: Path, key: WorkloadKey) -> None:
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path, timeout=0.5, retries=0))
        try:
            workload = make_workload(key, fake_spec(key, behaviour="hang"), generation=1)
            with pytest.raises(ApplyRejected, match="timed out") as raised:
                await runtime.apply(workload)
            assert raised.value.reason == FailureReason.TIMEOUT
            assert "applying forever" in str(raised.value)
            assert processes_with_env("CONVOY_NAMESPACE", key.namespace) == []
            assert zombie_children() == []
            assert (await runtime.status(key)).phase is Phase.ABSENT
        finally:
            await runtime.close()

    async def test_a_failing_fetch_reports_failed_with_its_output(self, tmp_path: Path, key: WorkloadKey) -> None:
        broken = [sys.executable, "-c", "import sys; print('kaputt: no credentials'); sys.exit(5)"]
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path, fetch=broken))
        try:
            await runtime.apply(make_workload(key, fake_spec(key), generation=1))
            status = await runtime.status(key)
            assert (status.phase, status.reason) == (Phase.FAILED, FailureReason.COMMAND_EXIT)
            assert "exited with code 5" in status.message and "kaputt: no credentials" in status.message
        finally:
            await runtime.close()

    async def test_a_workload_progressing_past_its_deadline_is_failed_by_the_runtime(
        self, tmp_path: Path, key: WorkloadKey
    ) -> None:
        """fetch never says failed; the runtime judges the deadline itself, from its apply."""
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path))
        try:
            await runtime.apply(make_workload(key, fake_spec(key, behaviour="progressing", deadline=0.3), generation=1))
            assert (await runtime.status(key)).phase in (Phase.PROGRESSING, Phase.FAILED)
            statuses = runtime.watch(key)
            async with asyncio.timeout(60):
                async for status in statuses:
                    if status.phase is Phase.FAILED:
                        break
                    assert status.phase is Phase.PROGRESSING
            await statuses.aclose()  # type: ignore[attr-defined]
            assert status.reason == FailureReason.PROGRESS_DEADLINE
            assert status.message.startswith("not healthy within the 0.3s progress deadline: 0/2 ready")
            healthy = make_workload(key, fake_spec(key, version="v2", deadline=60), generation=2)
            await runtime.apply(healthy)
            await self.wait_healthy(runtime, healthy)
        finally:
            await runtime.close()

    async def test_a_missing_command_is_rejected(self, tmp_path: Path, key: WorkloadKey) -> None:
        runtime = await ExecRuntime.open(settings=exec_settings(tmp_path, apply=["/nonexistent/convoy-apply"]))
        try:
            with pytest.raises(ApplyRejected, match="cannot start apply") as raised:
                await runtime.apply(make_workload(key, fake_spec(key), generation=1))
            assert raised.value.reason == FailureReason.APPLY_ERROR
        finally:
            await runtime.close()

    async def test_a_restarted_agent_remembers_what_it_applied(self, tmp_path: Path, key: WorkloadKey) -> None:
        first = await ExecRuntime.open(settings=exec_settings(tmp_path))
        workload = make_workload(key, fake_spec(key), generation=5)
        try:
            await first.apply(workload)
        finally:
            await first.close()
        second = await ExecRuntime.open(settings=exec_settings(tmp_path))
        try:
            assert [(s.key, s.generation) for s in await second.live()] == [(key, 5)]
            with pytest.raises(StaleGeneration):
                await second.apply(make_workload(key, fake_spec(key, version="v0"), generation=4))
            instance = stored(tmp_path, key)["instance"]
            await second.apply(workload)
            assert stored(tmp_path, key)["instance"] == instance
        finally:
            await second.close()


async def test_an_agent_opens_the_exec_runtime_of_a_registered_runtime(tmp_path: Path) -> None:
    settings = exec_settings(tmp_path)
    config = resources_pb2.Runtime(name="fake", kind=resources_pb2.RUNTIME_KIND_EXEC, exec=settings.config)
    runtime = await open_runtime(config=config, state_dir=tmp_path / "agent")
    try:
        assert isinstance(runtime, ExecRuntime)
        assert runtime.settings.state_dir == tmp_path / "agent" / "exec"
        assert runtime.name == "fake" and await runtime.live() == []
    finally:
        await runtime.close()
