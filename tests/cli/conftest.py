"""The CLI tests' harness: a real `ApiServer` on port 0 over a fresh PostgreSQL schema,
and `convoy(...)`, which runs the typer app in a worker thread (the server lives on the
test's event loop, which must keep running while the CLI blocks on its gRPC calls).

The CLI never sees the developer's own configuration: CONVOY_CONFIG points at a missing
file and CONVOY_STATE_DIR at an empty folder, and CONVOY_ENDPOINT/CONVOY_TOKEN are unset.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from click.testing import Result
from typer.testing import CliRunner

from cli.main import app
from eventstore.postgres import PostgresEventStore
from tests.integration.test_api_support import Running, running_api


@dataclass
class Cli:
    api: Running
    home: Path

    def isolation(self) -> dict[str, str]:
        """Environment that keeps the developer's own config and `convoy up` out of reach."""
        return {
            "CONVOY_CONFIG": str(self.home / "missing-config.toml"),
            "CONVOY_STATE_DIR": str(self.home / "no-local-state"),
        }

    def env(self, **extra: str) -> dict[str, str | None]:
        return {**self.isolation(), "CONVOY_ENDPOINT": None, "CONVOY_TOKEN": None, **extra}

    async def run(self, *args: str, token: str | None = None, endpoint: str | None = None, **env: str) -> Result:
        """`convoy ARGS --endpoint <the test API> --token <admin>` (override either; pass
        token="" / endpoint="" to leave the flag out)."""
        argv = list(args)
        target = self.api.grpc_target if endpoint is None else endpoint
        secret = self.api.admin if token is None else token
        if target:
            argv += ["--endpoint", target]
        if secret:
            argv += ["--token", secret]
        return await self.raw(*argv, **env)

    async def raw(self, *argv: str, **env: str) -> Result:
        runner = CliRunner()
        return await asyncio.to_thread(runner.invoke, app, list(argv), env=self.env(**env), catch_exceptions=False)


@pytest.fixture
def server_logs_aside() -> Iterator[None]:
    """The in-process server logs through structlog to whatever sys.stdout is at the time,
    which inside CliRunner is the CLI's captured output; send it to the real stderr."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture
async def cli(server_logs_aside: None, pg_store: PostgresEventStore, tmp_path: Path) -> AsyncIterator[Cli]:
    async with running_api(pg_store, tmp_path / "state") as running:
        yield Cli(running, tmp_path)
