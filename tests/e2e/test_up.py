"""`convoy up` — the README's main command — starts, serves and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg

from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import NewEvent


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


async def test_convoy_up_runs_on_embedded_servers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "up", "--state-dir", str(state),
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
        proc.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(proc.wait(), 60) == 0, rest
        assert "stopped" in rest
        assert "Task was destroyed" not in rest and "Traceback" not in rest, rest
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
