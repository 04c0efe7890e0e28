"""`convoy runtimes get|list` say what the API heard from each runtime's agent: heartbeats
published on real NATS, ingested by the real observation ingest, served by a real API."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventstore import natsauth
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import convergence_pb2
from tests.cli.conftest import Cli
from tests.conftest import eventually
from tests.integration.test_agent_support import Plane, control_plane
from tests.integration.test_api_support import running_api

RUNTIME = Path(__file__).resolve().parents[2] / "examples" / "shop" / "runtime.yaml"
Beat = convergence_pb2.Heartbeat


@pytest.fixture
async def plane(pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Plane]:
    async with control_plane(pg_store, embedded_nats.url, subject_prefix) as made:
        yield made


@pytest.fixture
async def cli(server_logs_aside: None, plane: Plane, tmp_path: Path) -> AsyncIterator[Cli]:
    async with running_api(plane.store, tmp_path / "state", heartbeats=plane.ingest.last_heartbeat) as running:
        yield Cli(running, tmp_path)


async def heartbeat(plane: Plane, agent_id: str, *, interval: timedelta, **fields: object) -> None:
    """Publish one heartbeat of runtime `local` and wait until the ingest holds it."""
    beat = Beat(runtime="local", agent_id=agent_id, **fields)  # type: ignore[arg-type]
    beat.sent_at.GetCurrentTime()
    beat.interval.FromTimedelta(interval)
    await plane.nc.publish(natsauth.heartbeat_subject(plane.instance, "local"), beat.SerializeToString())
    await eventually(
        lambda: getattr(plane.ingest.last_heartbeat("local"), "agent_id", None) == agent_id, message="heartbeat ingested"
    )


async def test_runtimes_get_and_list_show_the_agent_and_its_runtime(cli: Cli, plane: Plane) -> None:
    applied = await cli.run("apply", "-f", str(RUNTIME))
    assert applied.exit_code == 0, applied.output

    unheard = await cli.run("runtimes", "get", "local")
    assert unheard.exit_code == 0, unheard.output
    assert "# agent: no heartbeat heard by this API" in unheard.stdout

    since = Beat().runtime_unavailable_since
    since.FromDatetime(datetime(2026, 1, 31, 12, 3, 4, tzinfo=UTC))
    await heartbeat(
        plane,
        "agent-7",
        interval=timedelta(minutes=10),  # connected for the whole test, however slow the machine
        workloads=3,
        runtime_availability=Beat.RUNTIME_AVAILABILITY_UNAVAILABLE,
        runtime_unavailable_since=since,
        runtime_error="connection refused to https://k8s.example:6443\n(retrying)",
    )
    shown = await cli.run("runtimes", "get", "local")
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^# agent: connected \(last heartbeat \d+s ago; agent-7, 3 workloads\)$", shown.stdout, re.M), shown.stdout
    assert (
        "# runtime: UNAVAILABLE since 2026-01-31 12:03:04 UTC — connection refused to https://k8s.example:6443 (retrying)"
        in shown.stdout.splitlines()
    ), shown.stdout
    as_json = json.loads((await cli.run("runtimes", "get", "local", "-o", "json")).stdout)
    assert as_json["agent"]["runtimeAvailability"] == "RUNTIME_AVAILABILITY_UNAVAILABLE"
    assert as_json["agent"]["runtimeUnavailableSince"] == "2026-01-31T12:03:04Z" and as_json["agent"]["connected"]
    listed = await cli.run("runtimes", "list")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[-2:] == ["AGENT", "RUNTIME"], listed.stdout
    assert re.search(r"connected \(\d+s ago\)\s+UNAVAILABLE$", row), listed.stdout

    await heartbeat(plane, "agent-8", interval=timedelta(milliseconds=1), runtime_availability=Beat.RUNTIME_AVAILABILITY_AVAILABLE)
    seen = plane.ingest.last_heartbeat("local")
    assert seen is not None
    await eventually(lambda: not seen.connected(time.monotonic()), message="three 1 ms intervals without a heartbeat")
    lost = await cli.run("runtimes", "get", "local")
    assert re.search(r"^# agent: NOT CONNECTED \(last heartbeat \d+s ago; agent-8, 0 workloads\)$", lost.stdout, re.M), lost.stdout
    assert "# runtime: available (as of its last heartbeat)" in lost.stdout.splitlines()
    row = (await cli.run("runtimes", "list")).stdout.splitlines()[1]
    assert re.search(r"LOST \(\d+s ago\)\s+available$", row), row
