"""`convoy up` keeps its secrets: no password of CONVOY_NATS_URL / CONVOY_DATABASE_URL
reaches its output or its log lines, and every secret file it leaves in the state
folder is owner-only (0600) in a folder nobody else may write to."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import asyncpg

from eventstore.embedded import NatsServer
from tests.e2e.test_up import clean_env, read_until, up_args

NATS_PASSWORD = "N4ts-Pa55w0rd-never-printed"

SECRET_FILES = {"admin-token", "database-url", "nats-password", "nats.conf", "password", "secrets.keys",
                "agent-state.json"}


async def stop(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    proc.send_signal(signal.SIGINT)
    rest = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
    assert await asyncio.wait_for(proc.wait(), 60) == 0, rest
    return rest


async def test_passwords_in_the_server_urls_appear_nowhere_in_output_or_logs(
    tmp_path: Path, embedded_nats: NatsServer, database_url: str, schema_name: str
) -> None:
    db_password = database_url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    assert len(db_password) >= 8
    nats_url = embedded_nats.url.replace("nats://", f"nats://convoy:{NATS_PASSWORD}@")  # no auth there: accepted
    env = clean_env() | {
        "CONVOY_NATS_URL": nats_url, "CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": schema_name,
        "CONVOY_LOG_FORMAT": "json", "CONVOY_LOG_LEVEL": "debug", "CONVOY_CONFIG": str(tmp_path / "none.toml"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *up_args(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    try:
        lines = await read_until(proc.stdout, "press Ctrl-C")  # type: ignore[arg-type]
        output = "".join(lines) + await stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema_name} CASCADE")
        finally:
            await conn.close()
    assert f"NATS:         nats://convoy:***@127.0.0.1:{embedded_nats.port}" in output, output
    assert "PostgreSQL:   postgresql://convoy:***@127.0.0.1:" in output, output
    assert NATS_PASSWORD not in output and db_password not in output, output


async def test_every_secret_file_convoy_up_writes_is_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0o002)  # a permissive (but common) umask: the writers' own care must hold
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", *up_args(state),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=clean_env(),
        )
    finally:
        os.umask(old)
    try:
        lines = await read_until(proc.stdout, "press Ctrl-C")  # type: ignore[arg-type]
        found = [p for p in state.rglob("*") if p.name in SECRET_FILES]
        names = {p.name for p in found}
        assert {"admin-token", "database-url", "nats-password", "nats.conf", "password"} <= names, (names, lines)
        for path in found:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == 0o600, f"{path} is {mode:o}"
            assert not path.parent.stat().st_mode & stat.S_IWOTH, f"{path.parent} is world-writable"
        await stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
