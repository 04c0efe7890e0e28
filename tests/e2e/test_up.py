"""`convoy up` — the README's main command — starts, serves and stops cleanly, and starts
again cleanly on the state folder of a `convoy up` that was killed with -9, whether its
servers were left running or died with it (leaving stale pid files behind)."""

from __future__ import annotations

import pytest

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg
import grpc.aio

from eventstore.embedded import pid_alive
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import NewEvent
from schemas.convoy.v1 import api_pb2, api_pb2_grpc
from tests.conftest import eventually
from tests.e2e.processes import convoy_process


async def read_until(stream: asyncio.StreamReader, marker: str, *, timeout: float = 60.0) -> list[str]:
    lines: list[str] = []

    async def scan() -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended before {marker!r}: {lines}")
            lines.append(raw.decode())
            if marker in lines[-1]:
                return

    await asyncio.wait_for(scan(), timeout)
    return lines


def printed(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(label)).split(label, 1)[1].strip()


async def check_api_answers(state: Path, lines: list[str]) -> None:
    """The printed API addresses answer; the token file's path is printed, never its secret."""
    grpc_target = printed(lines, "API (gRPC):")
    rest_url = printed(lines, "API (REST):")
    assert printed(lines, "transport:").startswith("plain HTTP/gRPC on 127.0.0.1 only;")
    token_path = Path(printed(lines, "admin token:").split(" (")[0])
    assert token_path == state / "admin-token"
    secret = token_path.read_text().strip()
    assert secret not in "".join(lines), "the admin token was printed"
    assert json.loads((state / "endpoint.json").read_text()) == {"grpc": grpc_target, "rest": rest_url}
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = api_pb2_grpc.ApplicationServiceStub(channel)
        answer = await stub.ListApplications(
            api_pb2.ListApplicationsRequest(), metadata=(("authorization", f"Bearer {secret}"),), timeout=30
        )
        assert isinstance(answer, api_pb2.ListApplicationsResponse)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{rest_url}/v1/applications", headers={"authorization": f"Bearer {secret}"}
        ) as response:
            assert response.status == 200, await response.text()


async def test_convoy_up_runs_on_embedded_servers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "up", "--state-dir", str(state), "--grpc-port", "0", "--http-port", "0",
        "--ops-port", "0", "--local-runtime", "",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    assert proc.stdout is not None
    try:
        lines = await read_until(proc.stdout, "press Ctrl-C")
        output = "".join(lines)
        assert "PostgreSQL:   postgresql://convoy:***@127.0.0.1:" in output, output
        password = (state / "postgres" / "password").read_text().strip()
        assert password not in output, "the database password was printed"
        dsn_line = next(line for line in lines if line.startswith("PostgreSQL:"))
        port = int(dsn_line.rsplit(":", 1)[1].split("/")[0])
        # The server it started is real and holds Convoy's schema.
        store = await PostgresEventStore.open(
            PostgresSettings(dsn=f"postgresql://convoy:{password}@127.0.0.1:{port}/postgres", schema="convoy")
        )
        await store.append("app/shop", [NewEvent(type="convoy.v1.ApplicationDeleted", data=b"")])
        await store.close()
        await check_api_answers(state, lines)
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(proc.wait(), 60) == 0, rest
        assert "stopped" in rest
        assert "Task was destroyed" not in rest and "Traceback" not in rest, rest
        assert not (state / "endpoint.json").exists(), "endpoint.json outlived the API"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Both servers are gone: nothing listens on the database port any more.
    try:
        conn = await asyncpg.connect(f"postgresql://convoy:{password}@127.0.0.1:{port}/postgres", timeout=2)
    except (OSError, asyncpg.PostgresError):
        pass
    else:
        await conn.close()
        raise AssertionError("PostgreSQL still running after convoy up stopped")


async def test_convoy_api_serves_an_existing_database_and_the_cli_finds_it(
    tmp_path: Path, database_url: str, schema_name: str
) -> None:
    """`convoy api` on CONVOY_DATABASE_URL; a plain `convoy apps list` finds it through the
    state folder (endpoint.json + admin-token) with no flags."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env |= {"CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": schema_name, "CONVOY_STATE_DIR": str(state),
            "CONVOY_CONFIG": str(tmp_path / "no-config.toml")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "api", "--grpc-port", "0", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    assert proc.stdout is not None
    try:
        lines = await read_until(proc.stdout, "press Ctrl-C")
        assert printed(lines, "PostgreSQL:").endswith(database_url.rsplit("@", 1)[-1])
        await check_api_answers(state, lines)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "apps", "list", "--output", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0, err.decode()
        assert json.loads(out) == []
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(proc.wait(), 60) == 0, rest
        assert "Traceback" not in rest, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema_name} CASCADE")
        finally:
            await conn.close()


def up_args(state: Path) -> tuple[str, ...]:
    return ("up", "--state-dir", str(state), "--grpc-port", "0", "--http-port", "0", "--ops-port", "0",
            "--local-runtime", "")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}


def server_ports(lines: list[str]) -> tuple[int, int]:
    """The embedded (NATS, PostgreSQL) ports a `convoy up` printed."""
    nats_url = printed(lines, "NATS:")
    dsn = printed(lines, "PostgreSQL:")
    return int(nats_url.rsplit(":", 1)[1]), int(dsn.rsplit(":", 1)[1].split("/")[0])


def server_pids(state: Path) -> tuple[int, int]:
    """(nats-server, postmaster) of a running `convoy up`, from their pid files."""
    nats_pid = int((state / "nats" / "nats-server.pid").read_text().split()[0])
    postmaster = int((state / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])
    return nats_pid, postmaster


def kill_if_ours(pid: int, state: Path) -> None:
    """Test cleanup: kill a leftover server only if it still is one of this state folder's."""
    with contextlib.suppress(OSError):
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if str(state) in cmdline or cwd.startswith(str(state)):
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)


@pytest.mark.fault
async def test_convoy_up_starts_again_after_a_kill_9_that_left_its_servers_running(tmp_path: Path) -> None:
    """Stopped servers outlive their killed `convoy up` (the parent-death signal waits until
    they continue); the next `convoy up` stops them and takes their ports back."""
    state = tmp_path / "state"
    async with convoy_process(clean_env(), *up_args(state)) as first:
        ports = server_ports(first.lines)
        pids = server_pids(state)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    try:
        assert all(pid_alive(pid) for pid in pids), "the servers did not outlive their convoy up"
        async with convoy_process(clean_env(), *up_args(state), timeout=60) as second:
            assert server_ports(second.lines) == ports
            assert not any(pid_alive(pid) for pid in pids), "the leftover servers still run"
            assert "left running by an earlier run" in second.output
            await check_api_answers(state, second.lines)
            assert await second.stop() == 0, second.output
    finally:
        for pid in pids:
            kill_if_ours(pid, state)


@pytest.mark.fault
async def test_convoy_up_starts_again_after_a_kill_9_took_its_servers_down(tmp_path: Path) -> None:
    """The servers died with their `convoy up`, leaving pid files behind whose pids now name
    somebody else's process: the next `convoy up` leaves that process alone, starts at
    once and on the same ports."""
    state = tmp_path / "state"
    pgdata = state / "postgres" / "pgdata"
    async with convoy_process(clean_env(), *up_args(state)) as first:
        ports = server_ports(first.lines)
        pids = server_pids(state)
        postmaster_pid_file = (pgdata / "postmaster.pid").read_text()
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    await eventually(lambda: not any(pid_alive(pid) for pid in pids), message="the servers died with their convoy up")
    bystander = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE)  # idles until stdin closes
    try:
        (state / "nats" / "nats-server.pid").write_text(f"{bystander.pid}")
        (pgdata / "postmaster.pid").write_text("\n".join([str(bystander.pid), *postmaster_pid_file.split("\n")[1:]]))
        async with convoy_process(clean_env(), *up_args(state), timeout=60) as second:
            assert server_ports(second.lines) == ports
            assert bystander.returncode is None and pid_alive(bystander.pid), "convoy up killed a stranger"
            await check_api_answers(state, second.lines)
            assert await second.stop() == 0, second.output
    finally:
        assert bystander.stdin is not None
        bystander.stdin.close()
        await bystander.wait()
