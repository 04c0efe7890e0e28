"""The local runtime's agent, killed with SIGKILL while its workload runs and a protection
check soaks, and started again: the new `convoy agent` adopts the processes the dead one
left (same pids), does not restart it (it reports no PROGRESSING or FAILED), and the
check goes on passing: no CHECK_FAILED is charged to the release for Convoy's crash.

The agent runs as `convoy agent` in a subprocess (tests/integration/test_agent_crash.py's
`Agents`) against the real control plane on PostgreSQL and NATS; the runtime is the
built-in local one, the workload the tests' version server."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
from services.agent.runtimes import processes
from tests.conftest import eventually
from tests.integration.test_agent_crash import RUNTIME, Agents
from tests.integration.test_agent_support import Plane, control_plane

SERVER = Path(__file__).resolve().parents[1] / "contract" / "exec_scripts" / "version_server.py"
K = convergence_pb2


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def workload_intent() -> events_pb2.IntentIssued:
    program = resources_pb2.Program(
        name="web",
        command=[sys.executable, str(SERVER), "{{.Port}}"],
        env={"VERSION": "v1"},
        ports=[resources_pb2.Port(name="http", port=8080, protocol="TCP")],
        health_check=resources_pb2.HealthCheck(
            http=resources_pb2.HttpGet(path="/", port=8080), period=seconds(0.2), failure_threshold=2
        ),
    )
    spec = K.WorkloadSpec(
        application="shop", service="web", channel="prod", release_id="rel-v1", version="v1", replicas=2,
        programs=[program], progress_deadline=seconds(30),
    )
    return events_pb2.IntentIssued(
        intent_id="intent-web-1",
        target=K.Target(runtime=RUNTIME, namespace="prod"),
        action=K.INTENT_ACTION_APPLY,
        spec=spec,
        spec_hash=hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:20],
        generation=1,
    )


def soak_check() -> events_pb2.ChecksRequested:
    check = K.CheckRequest(
        check_id="chk-rel-v1.prod.http-ok.post-deployment",
        protection="http-ok",
        lifecycle=resources_pb2.LIFECYCLE_POST_DEPLOYMENT,
        http_probe=resources_pb2.HttpProbe(url="http://127.0.0.1:{{.Port}}/", expect_status=200, timeout=seconds(1)),
        interval=seconds(0.2),
    )
    return events_pb2.ChecksRequested(
        target=K.Target(runtime=RUNTIME, namespace="prod"), application="shop", service="web", channel="prod",
        release_id="rel-v1", checks=[check],
    )


def services_in(folder: Path) -> list[int]:
    """The running workload processes (not zombies) whose working folder is in `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inside = Path(os.readlink(entry / "cwd")).is_relative_to(folder)
        except OSError:
            continue
        info = processes.inspect(int(entry.name))
        if inside and info is not None and info.state != "Z" and "CONVOY_NAMESPACE" in processes.environment(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


@pytest.fixture
async def plane(pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Plane]:
    async with control_plane(pg_store, embedded_nats.url, subject_prefix) as made:
        yield made


@pytest.fixture
async def agents(plane: Plane, embedded_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Agents]:
    made = Agents(nats_url=embedded_nats.url, instance=plane.instance, root=tmp_path)
    try:
        yield made
    finally:
        await made.kill()
        for pid in services_in(tmp_path / "state"):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.fault
async def test_a_restarted_agent_adopts_the_local_workload_and_its_check_keeps_passing(
    plane: Plane, agents: Agents, tmp_path: Path
) -> None:
    await plane.register(RUNTIME)  # the built-in local runtime
    stream = f"intent/{RUNTIME}/prod/shop/web"
    await plane.store.append(stream, [plane.registry.encode(workload_intent(), actor="planner")])
    await plane.store.append(stream, [plane.registry.encode(soak_check(), actor="planner")])
    await agents.start()

    async def kinds() -> list[int]:
        return [o.kind for o in await plane.observations(RUNTIME)]

    async def healthy_and_passing() -> bool:
        seen = await kinds()
        return K.OBSERVATION_KIND_HEALTHY in seen and K.OBSERVATION_KIND_CHECK_PASSED in seen

    await eventually(healthy_and_passing, timeout=30, message="HEALTHY and CHECK_PASSED in the store")
    before = services_in(tmp_path / "state")
    assert len(before) == 2, before
    await agents.kill()
    assert services_in(tmp_path / "state") == before  # they outlive their agent
    recorded = len(await kinds())

    await agents.start()

    async def passing_again() -> bool:
        return (await kinds())[recorded:].count(K.OBSERVATION_KIND_CHECK_PASSED) >= 3

    await eventually(passing_again, timeout=30, message="CHECK_PASSED again after the restart")
    assert services_in(tmp_path / "state") == before, "the restarted agent restarted the workload"
    everything = await kinds()
    assert K.OBSERVATION_KIND_CHECK_FAILED not in everything
    after = everything[recorded:]
    assert K.OBSERVATION_KIND_PROGRESSING not in after and K.OBSERVATION_KIND_FAILED not in after, after
    assert await agents.stop() == 0
    await eventually(lambda: services_in(tmp_path / "state") == [], message="a clean stop stops the workload")
