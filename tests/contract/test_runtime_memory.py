"""The in-memory runtime passes the runtime contract suite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import pytest

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import FailureReason, Runtime, WorkloadKey
from services.agent.runtimes.memory import FAIL_PARAMETER, MemoryRuntime
from tests.contract.runtime_suite import FailureMode, RuntimeContract, RuntimeFactory


def _memory(runtime: Runtime) -> MemoryRuntime:
    assert isinstance(runtime, MemoryRuntime)
    return runtime


class TestMemoryRuntime(RuntimeContract):
    failure_modes: ClassVar[Mapping[str, str]] = {
        FailureMode.CRASH_LOOP: FailureReason.CRASH_LOOP,
        FailureMode.NEVER_READY: FailureReason.PROGRESS_DEADLINE,
        FailureMode.BAD_COMMAND: FailureReason.APPLY_ERROR,
    }

    @pytest.fixture(params=[0.0, 0.01], ids=["instant", "progressing"])
    def runtime_factory(self, request: pytest.FixtureRequest) -> RuntimeFactory:
        async def make() -> Runtime:
            return MemoryRuntime(name="mem", rollout_delay=request.param)

        return make

    def healthy_spec(self, key: WorkloadKey, *, version: str) -> convergence_pb2.WorkloadSpec:
        return convergence_pb2.WorkloadSpec(
            application=key.application, service=key.service, channel="staging", version=version, replicas=2
        )

    def failing_spec(self, key: WorkloadKey, mode: str) -> convergence_pb2.WorkloadSpec:
        spec = self.healthy_spec(key, version="bad")
        spec.parameters[FAIL_PARAMETER] = self.failure_modes[mode]
        return spec

    async def drift(self, runtime: Runtime, key: WorkloadKey) -> None:
        _memory(runtime).tamper(key)

    async def fingerprint(self, runtime: Runtime, key: WorkloadKey) -> object:
        return _memory(runtime).incarnation(key)

    async def add_foreign_workload(self, runtime: Runtime, namespace: str) -> None:
        _memory(runtime).add_foreign(WorkloadKey(namespace=namespace, application="other", service="thing"))

    async def assert_stopped(self, runtime: Runtime, keys: list[WorkloadKey]) -> None:
        assert _memory(runtime).closed
