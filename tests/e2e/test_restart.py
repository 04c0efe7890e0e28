"""A crash of the control plane is never charged to a release (DESIGN.md, security model):
`convoy up --demo`, prod approved and soaking behind its HTTP probe, `convoy up` killed
with -9 and started again on the same state folder. The restarted local runtime adopts the
service processes that kept running (same pids, so the same ports), the probe keeps
reaching them, and prod converges: no CHECK_FAILED, no FAILED, nothing restarted."""

from __future__ import annotations

import pytest

import json
import os
import signal
from pathlib import Path

import aiohttp

from services.agent.runtimes import processes
from services.agent.runtimes.local import parse_endpoints
from tests.e2e.processes import convoy
from tests.e2e.test_demo import channels, convoy_up, reaches

HEALTHY = "OBSERVATION_KIND_HEALTHY"
CHECK_FAILED = "OBSERVATION_KIND_CHECK_FAILED"


def service_processes(state: Path) -> dict[int, tuple[str, int]]:
    """The local runtime's running service processes of this test (their working folder is
    in its state folder): pid → (namespace, start time)."""
    found: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        info = processes.inspect(pid)
        namespace = processes.environment(pid).get("CONVOY_NAMESPACE", "")
        if cwd.is_relative_to(state) and namespace and info is not None and info.state != "Z":
            found[pid] = (namespace, info.start)
    return found


async def observations(env: dict[str, str], namespace: str) -> list[dict[str, object]]:
    code, out = await convoy(env, "events", "--type", "ObservationRecorded", "-o", "json")
    assert code == 0, out
    found = [json.loads(json.loads(line)["json"])["observation"] for line in out.splitlines()]
    return [o for o in found if o.get("namespace") == namespace]


async def answers(port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
        return response.status


@pytest.mark.fault
async def test_a_control_plane_killed_while_prod_soaks_adopts_its_services(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env |= {"CONVOY_STATE_DIR": str(state), "CONVOY_CONFIG": str(tmp_path / "no-config.toml")}
    try:
        async with convoy_up(state, env) as up:
            await reaches(env, {("web", "staging"): ("v1", "CONVERGED"), ("web", "prod"): ("v1", "WAITING_APPROVAL")})
            assert (await convoy(env, "approve", "shop/web", "--channel", "prod"))[0] == 0
            # Deployed and soaking: the 5 s delay and 30 s soak leave time for the kill.
            await reaches(env, {("web", "prod"): ("v1", "VERIFYING")})
            before = service_processes(state)
            assert [ns for ns, _ in before.values()].count("shop-prod") == 2, before
            healthy = [o for o in await observations(env, "shop-prod") if o.get("kind") == HEALTHY]
            ports = parse_endpoints(str(healthy[-1]["message"]))
            assert len(ports) == 2, healthy
            assert await up.stop(signal.SIGKILL) == -signal.SIGKILL
        # The services outlive the control plane and keep serving without it.
        assert service_processes(state) == before
        assert [await answers(port) for port in ports.values()] == [200, 200]

        async with convoy_up(state, env) as up:
            await reaches(env, {("web", "prod"): ("v1", "CONVERGED")}, timeout=150)
            assert service_processes(state) == before, "the restarted control plane restarted the services"
            prod = await observations(env, "shop-prod")
            failed = [o for o in prod if o.get("kind") == CHECK_FAILED]
            assert failed == [], failed
            healthy = [o for o in prod if o.get("kind") == HEALTHY]
            assert parse_endpoints(str(healthy[-1]["message"])) == ports  # reported where they always were
            assert (await channels(env))[("web", "staging")]["status"] == "INSTANCE_STATUS_CONVERGED"
            assert "killed processes left by a previous agent" not in up.output, up.output[-3000:]
            assert await up.stop() == 0
        assert service_processes(state) == {}, "a clean stop stops the services"
    finally:
        for pid in service_processes(state):
            os.killpg(pid, signal.SIGKILL)
