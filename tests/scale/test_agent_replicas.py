"""Two agents of one runtime as replicas: one active, one standby (eventstore.leases),
and no intent applied twice when the active one is killed with SIGKILL mid-release.

Real processes on real servers: `convoy api` and `convoy planner`, and two `convoy agent
--runtime rt-ha` with their own state folders, on an exec runtime whose apply / fetch /
delete commands are one small script (tests/scale/exec_runtime.py). Each apply or delete
appends one line — the effect, and the process that ran it — to an effects file under a
lock, and fetch reads that file back, reporting the generation and spec hash it finds:
the file is both the record of every side effect and the runtime's live state, so the
test counts effects exactly. The script kills its own agent (SIGKILL, its parent) right after the effect of
the release's `KILL_AFTER`-th apply — the worst moment: the runtime changed, the agent
neither recorded, reported nor acknowledged it. Progress, not a timer, picks it.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from eventstore.embedded import NatsServer
from tests.conftest import eventually
from tests.e2e.processes import convoy, convoy_process, service_process
from tests.scale import exec_runtime
from tests.scale.test_api_replicas import base_env, drop_schema, two_apis

pytestmark = [pytest.mark.scale, pytest.mark.fault]

RUNTIME = "rt-ha"
NAMESPACES = [f"n{i}" for i in range(6)]
KILL_AFTER = 3
"""The apply after whose effect the active agent dies (of the release's len(NAMESPACES))."""

def config(root: Path) -> Path:
    command = json.dumps(exec_runtime.commands(root, kill_after=KILL_AFTER))
    targets = ", ".join(f"{{runtime: {RUNTIME}, namespace: {ns}}}" for ns in NAMESPACES)
    folder = root / "config"
    folder.mkdir()
    (folder / "all.yaml").write_text(
        f"runtime:\n  name: {RUNTIME}\n  kind: exec\n  exec:\n    apply: {command}\n    fetch: {command}\n"
        f"    delete: {command}\n---\n"
        f"application:\n  name: fleet\n  releaseChannels:\n    - name: staging\n      runtimes: [{targets}]\n---\n"
        "service:\n  application: fleet\n  name: web\n  programs:\n    - image: registry.example/web:1\n"
    )
    return folder


async def test_two_agent_replicas_apply_each_intent_once_when_the_active_one_is_killed(
    tmp_path: Path, database_url: str, schema_name: str, embedded_nats: NatsServer
) -> None:
    env = base_env(tmp_path, database_url, schema_name, embedded_nats.url)
    folder = config(tmp_path)
    try:
        async with (
            two_apis(env, tmp_path, count=1) as (api, _, token),
            service_process(env, "planner", "--ops-port", "0", ready="press Ctrl-C"),
        ):
            cli_env = env | {"CONVOY_TOKEN": token, "CONVOY_ENDPOINT": api.grpc}
            code, out = await convoy(cli_env, "apply", "-f", str(folder))
            assert code == 0, out
            agent_args = ("agent", "--runtime", RUNTIME, "--instance", schema_name, "--health", "")
            async with (
                convoy_process(env, *agent_args, "--state-dir", str(tmp_path / "agent-1"), ready="started") as one,
                convoy_process(env, *agent_args, "--state-dir", str(tmp_path / "agent-2"), ready="started") as two,
            ):
                by_pid = {one.proc.pid: one, two.proc.pid: two}
                # One is active, the other waits as standby.
                await eventually(lambda: "agent standby" in one.output + two.output, timeout=60, interval=0.1,
                                 message="a standby replica")
                code, out = await convoy(cli_env, "deploy", "fleet/web", "--version", "v1")
                assert code == 0, out

                # The script kills the active agent after the KILL_AFTER-th apply's effect.
                await eventually(lambda: any(p.proc.returncode is not None for p in by_pid.values()), timeout=60,
                                 interval=0.1, message="the active agent killed by its runtime")
                dead = next(p for p in by_pid.values() if p.proc.returncode is not None)
                survivor = next(p for p in by_pid.values() if p is not dead)
                assert dead.proc.returncode == -signal.SIGKILL, dead.output[-3000:]
                assert sum(1 for r in exec_runtime.records(tmp_path) if r["action"] == "apply") == KILL_AFTER

                async def converged() -> bool:
                    code, out = await convoy(cli_env, "status", "fleet", "-o", "json")
                    if code != 0:
                        return False
                    targets = [t for c in json.loads(out)["channels"] for t in c.get("targets", [])]
                    statuses = [t.get("status") for t in targets]
                    return len(targets) == len(NAMESPACES) and set(statuses) == {"INSTANCE_STATUS_CONVERGED"}

                await eventually(converged, timeout=90, interval=0.5, message="the release converged everywhere")
                assert "lease acquired" in survivor.output, survivor.output[-3000:]
                assert survivor.proc.returncode is None
                survivor.proc.send_signal(signal.SIGTERM)
                assert await survivor.proc.wait() == 0, survivor.output[-3000:]

            effects = exec_runtime.records(tmp_path)
            applied = Counter((r["namespace"], r["service"], r["generation"]) for r in effects if r["action"] == "apply")
            assert sorted(applied) == sorted((ns, "web", 1) for ns in NAMESPACES), effects
            assert set(applied.values()) == {1}, f"an intent was applied twice: {effects}"
            # The standby touched nothing before it took over; the dead one nothing after.
            pids = [r["agent"] for r in effects]
            assert pids[:KILL_AFTER] == [dead.proc.pid] * KILL_AFTER, effects
            assert pids[KILL_AFTER:] == [survivor.proc.pid] * (len(NAMESPACES) - KILL_AFTER), effects
            # From the dead agent's last effect to the standby's first (lease TTL 10 s + a poll).
            takeover = float(effects[KILL_AFTER]["at"]) - float(effects[KILL_AFTER - 1]["at"])  # type: ignore[arg-type]
            print(f"agent takeover after SIGKILL: {takeover:.1f} s")
    finally:
        await drop_schema(database_url, schema_name)
