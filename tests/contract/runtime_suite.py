"""One contract suite, every Runtime (services/agent/runtimes/base.py).

The agent treats every runtime the same way — apply, watch until healthy or failed, detect
drift, delete, list what is live — so every implementation must behave the same way on
the same scenarios. A runtime's test module subclasses `RuntimeContract` (its name must
start with `Test`) and implements the hooks below; the tests themselves live here.

Hooks a subclass implements:

- fixture `runtime_factory`: an async callable returning a new, started Runtime. The suite
  closes every runtime it makes (close() must be idempotent: a subclass may close too).
- `healthy_spec(key, *, version)`: a WorkloadSpec that becomes HEALTHY; different
  `version`s must differ in something the runtime rolls out (env, args, image tag).
- `failure_modes`: a mapping {FailureMode: expected FailureReason} of the failure modes the
  runtime can produce; `test_failure_is_detected` is generated for exactly these modes
  (a mode the runtime cannot produce is simply left out: no skip).
- `failing_spec(key, mode)`: a WorkloadSpec that fails in that mode.
- `drift(runtime, key)`: edit the live workload out of band, the way a person would.
- `fingerprint(runtime, key)`: something that changes whenever the live workload is
  restarted or re-created (PIDs, a Deployment's resourceVersion …) — how "changed nothing"
  is checked.
- `add_foreign_workload(runtime, namespace)`: put something Convoy does not manage next to
  Convoy's workloads (`live()` must not list it).
- `assert_stopped(runtime, keys)`: after close(), assert that nothing the runtime was
  supposed to stop is left (processes, connections); runtimes whose workloads outlive the
  agent (Kubernetes) assert that the workloads are still there and nothing else leaked.

What the tests ask beyond base.py, spelled out: a failure may show either as `ApplyRejected`
with the expected reason (refused up front) or as a FAILED status with it; an open watch
ends (returns, or raises RuntimeUnavailable) when the runtime closes; `live()` is compared
only within the test's own namespace (a real cluster may hold other workloads).

Timing: `timeout` bounds every wait; runtimes make their rollouts fast in tests through
their settings (short health periods, short progress deadlines), never through sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import (
    ApplyRejected,
    Phase,
    Runtime,
    RuntimeUnavailable,
    StaleGeneration,
    Workload,
    WorkloadKey,
    WorkloadStatus,
)
from tests.conftest import eventually

RuntimeFactory = Callable[[], Awaitable[Runtime]]


class FailureMode:
    """Ways a rollout can fail that the suite knows how to ask for."""

    CRASH_LOOP = "crash_loop"
    """The program starts, then exits again and again."""
    NEVER_READY = "never_ready"
    """The program runs but never passes its health check (→ progress deadline)."""
    BAD_COMMAND = "bad_command"
    """The program cannot even start: a missing executable, an image that does not exist."""


def spec_hash(spec: convergence_pb2.WorkloadSpec) -> str:
    """The tests' stand-in for the planner's spec hash: any stable digest of the spec."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:20]


def make_workload(key: WorkloadKey, spec: convergence_pb2.WorkloadSpec, generation: int) -> Workload:
    return Workload(
        key=key,
        spec=spec,
        spec_hash=spec_hash(spec),
        generation=generation,
        intent_id=f"intent-{key.service}-{generation}-{uuid.uuid4().hex[:6]}",
        channel=spec.channel,
    )


class RuntimeContract:
    """The tests every Runtime passes. Subclass it as `TestXxxRuntime` and fill the hooks."""

    timeout: ClassVar[float] = 20.0
    """Upper bound of every wait for a rollout, a failure or a drift to show."""

    failure_modes: ClassVar[Mapping[str, str]] = {}
    """{FailureMode: the FailureReason this runtime reports for it}."""

    # ---- hooks ---------------------------------------------------------------------------

    @pytest.fixture
    def runtime_factory(self) -> RuntimeFactory:
        raise NotImplementedError("a RuntimeContract subclass provides the runtime_factory fixture")

    def healthy_spec(self, key: WorkloadKey, *, version: str) -> convergence_pb2.WorkloadSpec:
        raise NotImplementedError

    def failing_spec(self, key: WorkloadKey, mode: str) -> convergence_pb2.WorkloadSpec:
        raise NotImplementedError

    async def drift(self, runtime: Runtime, key: WorkloadKey) -> None:
        raise NotImplementedError

    async def fingerprint(self, runtime: Runtime, key: WorkloadKey) -> object:
        raise NotImplementedError

    async def add_foreign_workload(self, runtime: Runtime, namespace: str) -> None:
        raise NotImplementedError

    async def assert_stopped(self, runtime: Runtime, keys: list[WorkloadKey]) -> None:
        raise NotImplementedError

    # ---- plumbing ------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "failure_mode" in metafunc.fixturenames:
            modes = sorted(self.failure_modes)
            metafunc.parametrize("failure_mode", modes, ids=modes)

    @pytest.fixture
    async def runtime(self, runtime_factory: RuntimeFactory) -> AsyncIterator[Runtime]:
        made = await runtime_factory()
        try:
            yield made
        finally:
            await made.close()

    @pytest.fixture
    def namespace(self) -> str:
        """A namespace of this test's own (lowercase, DNS-label safe)."""
        return f"ct-{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def key(self, namespace: str) -> WorkloadKey:
        return WorkloadKey(namespace=namespace, application="shop", service="web")

    async def wait_for(
        self,
        runtime: Runtime,
        key: WorkloadKey,
        predicate: Callable[[WorkloadStatus], bool],
        *,
        what: str,
    ) -> WorkloadStatus:
        """Follow `watch(key)` until a status satisfies `predicate` (within `timeout`)."""
        seen: list[WorkloadStatus] = []
        try:
            async with asyncio.timeout(self.timeout):
                async with contextlib.aclosing(runtime.watch(key)) as statuses:  # type: ignore[type-var]
                    async for status in statuses:
                        seen.append(status)
                        if predicate(status):
                            return status
        except TimeoutError:
            pass
        last = seen[-1] if seen else None
        raise AssertionError(f"{key}: {what} not reached within {self.timeout}s; last status: {last}")

    async def wait_healthy(self, runtime: Runtime, workload: Workload) -> WorkloadStatus:
        return await self.wait_for(
            runtime,
            workload.key,
            lambda s: s.phase is Phase.HEALTHY and s.generation == workload.generation and not s.drifted,
            what=f"HEALTHY at generation {workload.generation}",
        )

    async def poll(self, check: Callable[[], Awaitable[bool]], *, what: str) -> None:
        await eventually(check, timeout=self.timeout, interval=0.02, message=what)

    # ---- the contract --------------------------------------------------------------------

    async def test_status_of_an_unknown_workload_is_absent(self, runtime: Runtime, key: WorkloadKey) -> None:
        status = await runtime.status(key)
        assert status.phase is Phase.ABSENT
        assert (status.key, status.generation, status.spec_hash) == (key, 0, "")

    async def test_apply_becomes_healthy(self, runtime: Runtime, key: WorkloadKey) -> None:
        workload = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        applied = await runtime.apply(workload)
        assert applied.key == key
        assert applied.phase in (Phase.PROGRESSING, Phase.HEALTHY)
        assert (applied.generation, applied.spec_hash, applied.intent_id) == (
            1,
            workload.spec_hash,
            workload.intent_id,
        )

        healthy = await self.wait_healthy(runtime, workload)
        assert (healthy.spec_hash, healthy.intent_id) == (workload.spec_hash, workload.intent_id)
        assert healthy.ready_replicas == healthy.desired_replicas == workload.spec.replicas
        assert healthy.reason == ""

        status = await runtime.status(key)
        assert (status.phase, status.generation, status.spec_hash, status.drifted) == (
            Phase.HEALTHY,
            1,
            workload.spec_hash,
            False,
        )

    async def test_applying_the_same_spec_again_changes_nothing(self, runtime: Runtime, key: WorkloadKey) -> None:
        workload = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        await runtime.apply(workload)
        await self.wait_healthy(runtime, workload)
        before = await self.fingerprint(runtime, key)

        again = await runtime.apply(workload)
        assert (again.phase, again.generation, again.spec_hash) == (Phase.HEALTHY, 1, workload.spec_hash)
        # The same generation redelivered by another intent (a retry) changes nothing either.
        redelivered = Workload(
            key=key,
            spec=workload.spec,
            spec_hash=workload.spec_hash,
            generation=1,
            intent_id="intent-redelivered",
            channel=workload.channel,
        )
        await runtime.apply(redelivered)
        assert await self.fingerprint(runtime, key) == before
        assert (await runtime.status(key)).phase is Phase.HEALTHY

    async def test_an_older_generation_is_refused_and_changes_nothing(
        self, runtime: Runtime, key: WorkloadKey
    ) -> None:
        newer = make_workload(key, self.healthy_spec(key, version="v2"), generation=2)
        await runtime.apply(newer)
        await self.wait_healthy(runtime, newer)
        before = await self.fingerprint(runtime, key)

        older = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        with pytest.raises(StaleGeneration) as raised:
            await runtime.apply(older)
        assert raised.value.retryable is False

        status = await runtime.status(key)
        assert (status.phase, status.generation, status.spec_hash, status.intent_id) == (
            Phase.HEALTHY,
            2,
            newer.spec_hash,
            newer.intent_id,
        )
        assert await self.fingerprint(runtime, key) == before

    async def test_a_new_generation_rolls_out(self, runtime: Runtime, key: WorkloadKey) -> None:
        first = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        await runtime.apply(first)
        await self.wait_healthy(runtime, first)
        before = await self.fingerprint(runtime, key)

        second = make_workload(key, self.healthy_spec(key, version="v2"), generation=2)
        assert second.spec_hash != first.spec_hash
        applied = await runtime.apply(second)
        assert (applied.generation, applied.spec_hash, applied.intent_id) == (2, second.spec_hash, second.intent_id)
        healthy = await self.wait_healthy(runtime, second)
        assert healthy.spec_hash == second.spec_hash
        assert await self.fingerprint(runtime, key) != before

    async def test_failure_is_detected(self, runtime: Runtime, key: WorkloadKey, failure_mode: str) -> None:
        expected = self.failure_modes[failure_mode]
        workload = make_workload(key, self.failing_spec(key, failure_mode), generation=1)
        try:
            await runtime.apply(workload)
        except ApplyRejected as rejected:
            # Refusing the spec up front is as good as failing the rollout, with the reason.
            assert rejected.reason == expected, rejected
            assert rejected.retryable is False
            return
        failed = await self.wait_for(runtime, key, lambda s: s.phase is Phase.FAILED, what="FAILED")
        assert failed.reason == expected, failed
        assert (failed.generation, failed.spec_hash) == (1, workload.spec_hash)
        assert failed.message, "a FAILED status says what happened"

    async def test_drift_is_detected_and_repaired(self, runtime: Runtime, key: WorkloadKey) -> None:
        workload = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        await runtime.apply(workload)
        await self.wait_healthy(runtime, workload)

        await self.drift(runtime, key)
        drifted = await self.wait_for(runtime, key, lambda s: s.drifted, what="drifted")
        assert (drifted.generation, drifted.spec_hash) == (1, workload.spec_hash)

        repaired = await runtime.apply(workload, repair=True)
        assert repaired.generation == 1
        await self.wait_healthy(runtime, workload)
        assert not (await runtime.status(key)).drifted

    async def test_delete_is_idempotent_and_live_follows(self, runtime: Runtime, namespace: str) -> None:
        web = WorkloadKey(namespace=namespace, application="shop", service="web")
        api = WorkloadKey(namespace=namespace, application="shop", service="api")
        await runtime.delete(web)  # absent: fine

        workloads = {k: make_workload(k, self.healthy_spec(k, version="v1"), generation=1) for k in (web, api)}
        for workload in workloads.values():
            await runtime.apply(workload)

        async def ours() -> dict[WorkloadKey, WorkloadStatus]:
            return {s.key: s for s in await runtime.live() if s.key.namespace == namespace}

        listed = await ours()
        assert set(listed) == {web, api}
        for k, status in listed.items():
            assert (status.generation, status.spec_hash) == (1, workloads[k].spec_hash)
            assert status.phase is not Phase.ABSENT

        await runtime.delete(web)
        await self.poll(lambda: _keys_are(ours, {api}), what="live() without the deleted workload")
        assert (await runtime.status(web)).phase is Phase.ABSENT
        await runtime.delete(web)
        await runtime.delete(api)
        await self.poll(lambda: _keys_are(ours, set()), what="live() empty")
        assert (await runtime.status(api)).phase is Phase.ABSENT

    async def test_live_lists_only_convoy_workloads(self, runtime: Runtime, key: WorkloadKey) -> None:
        workload = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        await runtime.apply(workload)
        await self.add_foreign_workload(runtime, key.namespace)
        listed = [s.key for s in await runtime.live() if s.key.namespace == key.namespace]
        assert listed == [key]

    async def test_a_watch_yields_the_current_status_then_each_change(
        self, runtime: Runtime, key: WorkloadKey
    ) -> None:
        workload = make_workload(key, self.healthy_spec(key, version="v1"), generation=1)
        async with contextlib.aclosing(runtime.watch(key)) as statuses:  # type: ignore[type-var]
            first = await anext(statuses)
            assert first.phase is Phase.ABSENT
            await runtime.apply(workload)
            seen = [first]
            async with asyncio.timeout(self.timeout):
                while not (seen[-1].phase is Phase.HEALTHY and seen[-1].generation == 1):
                    seen.append(await anext(statuses))
        assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), "watch yields changes only"
        assert seen[-1].intent_id == workload.intent_id

    async def test_close_ends_watches_and_leaves_nothing_running(
        self, runtime_factory: RuntimeFactory, namespace: str
    ) -> None:
        runtime = await runtime_factory()
        try:
            keys = [WorkloadKey(namespace=namespace, application="shop", service=s) for s in ("web", "api")]
            workloads = [make_workload(k, self.healthy_spec(k, version="v1"), generation=1) for k in keys]
            for workload in workloads:
                await runtime.apply(workload)
            for workload in workloads:
                await self.wait_healthy(runtime, workload)

            # An open watch ends (returns, or says the runtime is gone) when the runtime closes.
            statuses = runtime.watch(keys[0])
            assert (await anext(statuses)).phase is Phase.HEALTHY
            pending: asyncio.Task[None] = asyncio.create_task(_drain(statuses))
            await runtime.close()
            async with asyncio.timeout(self.timeout):
                await pending
            await self.assert_stopped(runtime, keys)
        finally:
            await runtime.close()


async def _keys_are(
    ours: Callable[[], Awaitable[dict[WorkloadKey, WorkloadStatus]]], expected: set[WorkloadKey]
) -> bool:
    return set(await ours()) == expected


async def _drain(statuses: AsyncIterator[WorkloadStatus]) -> None:
    with contextlib.suppress(RuntimeUnavailable):
        async for _ in statuses:
            pass


# ---- helpers for runtimes that start local processes ---------------------------------------


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (not zombies) whose environment has name=value."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def zombie_children() -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry.name))
    return zombies
