"""Deploy, approve, events, status, and the other release commands, against a real API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


async def applied(cli: Cli) -> None:
    result = await cli.run("apply", "-f", str(EXAMPLES))
    assert result.exit_code == 0, result.output


async def test_deploy_approve_events_and_status(cli: Cli) -> None:
    await applied(cli)
    deployed = await cli.run(
        "deploy", "shop/api", "--version", "v2", "--image", "registry.example/api:2", "--output", "json",
    )
    assert deployed.exit_code == 0, deployed.output
    release = json.loads(deployed.stdout)["release"]
    assert release["version"] == "v2"
    assert release["config"]["programs"][0]["image"] == "registry.example/api:2"

    approved = await cli.run("approve", "shop/api", "--channel", "prod", "--comment", "looks good")
    assert approved.exit_code == 0, approved.output
    assert "approved shop/api in prod" in approved.stdout

    listed = await cli.run("releases", "list", "shop/api")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == ["VERSION", "ID", "IMAGES", "DIGESTS", "PARAMETERS", "DEPLOYER"]
    # registry.example is no declared registry: nothing pinned.
    assert row.split()[:4] == ["v2", release["id"], "registry.example/api:2", "-"] and row.split()[-1] == release["createdBy"]

    events = await cli.run("events", "--app", "shop", "--output", "json")
    assert events.exit_code == 0, events.output
    parsed = [json.loads(line) for line in events.stdout.splitlines()]
    types = [e["type"] for e in parsed]
    assert "convoy.v1.ReleaseCreated" in types and types[-1] == "convoy.v1.ApprovalGranted", types
    positions = [int(e["position"]) for e in parsed]
    assert positions == sorted(positions)

    only = await cli.run("events", "--type", "ApprovalGranted", "--output", "json")
    assert [json.loads(line)["type"] for line in only.stdout.splitlines()] == ["convoy.v1.ApprovalGranted"]

    # No planner runs here: status says so per service instead of inventing progress
    # (tests/cli/test_convergence_commands.py runs one).
    status = await cli.run("status", "shop")
    assert status.exit_code == 0, status.output
    assert "channel staging" in status.stdout and "channel prod" in status.stdout
    assert "no release yet" in status.stdout
    as_json = await cli.run("status", "shop", "--output", "json")
    assert json.loads(as_json.stdout)["channels"] == []


async def test_pause_resume_bypass_reject_rollback(cli: Cli) -> None:
    await applied(cli)
    assert (await cli.run("deploy", "shop/web", "--version", "v1")).exit_code == 0
    paused = await cli.run("pause", "shop/web", "--channel", "prod", "--reason", "incident")
    assert paused.exit_code == 0, paused.output
    paused_events = await cli.run("events", "--type", "ConvergencePaused", "--output", "json")
    assert json.loads(paused_events.stdout.splitlines()[-1])["actor"]
    assert (await cli.run("resume", "shop/web", "--channel", "prod")).exit_code == 0
    bypassed = await cli.run(
        "bypass", "shop/web", "--channel", "prod", "--target", "precondition:prod-signoff", "--reason", "hotfix"
    )
    assert bypassed.exit_code == 0, bypassed.output
    rejected = await cli.run("reject", "shop/web", "--channel", "prod", "--reason", "no")
    assert rejected.exit_code == 0, rejected.output
    rolled = await cli.run("rollback", "shop/web", "--channel", "prod", "--reason", "bad")
    assert rolled.exit_code in (0, 4), rolled.output  # 4: nothing converged to roll back to yet


async def test_read_commands(cli: Cli) -> None:
    await applied(cli)
    apps = await cli.run("apps", "list")
    assert apps.exit_code == 0 and apps.stdout.splitlines()[0].split()[:2] == ["NAME", "CHANNELS"], apps.output
    assert "shop" in apps.stdout
    got = await cli.run("apps", "get", "shop", "--output", "json")
    assert json.loads(got.stdout)["name"] == "shop"
    services = await cli.run("services", "list", "shop", "--output", "yaml")
    assert "name: api" in services.stdout and "name: web" in services.stdout
    service = await cli.run("services", "get", "shop", "api")
    assert "programs:" in service.stdout
    channels = await cli.run("channels", "list", "shop")
    assert [line.split()[0] for line in channels.stdout.splitlines()[1:]] == ["staging", "prod"], channels.stdout
    runtimes = await cli.run("runtimes", "list")
    assert "local" in runtimes.stdout and "exec" in runtimes.stdout
    runtime = await cli.run("runtimes", "get", "local", "--output", "json")
    assert json.loads(runtime.stdout)["runtime"]["name"] == "local"
    missing = await cli.run("apps", "get", "nope")
    assert missing.exit_code == 3 and "nope" in missing.stderr, missing.output


async def test_bad_input_exits_2(cli: Cli) -> None:
    await applied(cli)
    bad_target = await cli.run("deploy", "shop", "--version", "v1")
    assert bad_target.exit_code == 2 and "APP/SERVICE" in bad_target.stderr
    undeclared = await cli.run("deploy", "shop/api", "--version", "v1", "--param", "flag=on")
    assert undeclared.exit_code == 2 and "flag" in undeclared.stderr, undeclared.output
    bad_since = await cli.run("events", "--since", "yesterday")
    assert bad_since.exit_code == 2 and "ISO 8601" in bad_since.stderr


async def test_events_follow_uses_watch_and_stops_on_ctrl_c(cli: Cli) -> None:
    await applied(cli)
    head = await cli.api.store.head()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "events", "--app", "shop", "--follow", "--output", "json",
        "--endpoint", cli.api.grpc_target, "--token", cli.api.admin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}, **cli.isolation()},
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen = await read_events_until(proc.stdout, lambda e: int(e["position"]) >= head)
        assert seen[0]["type"] == "convoy.v1.ApplicationCreated"
        assert (await cli.run("deploy", "shop/web", "--version", "v7")).exit_code == 0
        more = await read_events_until(proc.stdout, lambda e: e["type"] == "convoy.v1.ReleaseCreated")
        assert json.loads(more[-1]["json"])["release"]["version"] == "v7"
        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("Ctrl-C did not stop `convoy events --follow`:\n" + (await proc.stderr.read()).decode())
        assert code == 0
        errors = (await proc.stderr.read()).decode()
        assert "Traceback" not in errors, errors
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_events_until(
    stream: asyncio.StreamReader, done: Callable[[dict[str, Any]], bool], *, timeout: float = 30.0
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    async def scan() -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended early: {events}")
            events.append(json.loads(raw))
            if done(events[-1]):
                return

    await asyncio.wait_for(scan(), timeout)
    return events
