"""Shared fixtures: real servers, started by the tests themselves.

One embedded PostgreSQL and one embedded nats-server per test session (each ready when
it says so, on a loopback port it picked), and per test a fresh PostgreSQL schema and a
fresh NATS subject prefix, so tests never see each other's data. Tests that stop or
crash a server get their own (`own_nats`, `own_postgres`).

When CONVOY_TEST_DATABASE_URL is set, PostgreSQL tests also run against that server
(for example Debian's PostgreSQL 15) — the `database_url` fixture is parametrised.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from cli import logging as convoy_logging
from eventstore.embedded import NatsServer, PostgresServer
from eventstore.postgres import PostgresEventStore, PostgresSettings


@pytest.fixture(scope="session")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def embedded_postgres(state_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(data_dir=state_root / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_nats(state_root: Path) -> Iterator[NatsServer]:
    server = NatsServer(data_dir=state_root / "nats")
    server.start()
    yield server
    server.stop()


DATABASES = ["postgres", *(["postgres-external"] if os.environ.get("CONVOY_TEST_DATABASE_URL") else [])]
"""PostgreSQL servers the store tests run against: the embedded one, plus the one named by
CONVOY_TEST_DATABASE_URL when set."""


def resolve_database_url(request: pytest.FixtureRequest, which: str) -> str:
    if which == "postgres-external":
        return os.environ["CONVOY_TEST_DATABASE_URL"]
    server: PostgresServer = request.getfixturevalue("embedded_postgres")
    return server.dsn


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    return resolve_database_url(request, request.param)


@pytest.fixture
def schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


@contextlib.asynccontextmanager
async def fresh_store(database_url: str, schema: str | None = None) -> AsyncIterator[PostgresEventStore]:
    """A PostgresEventStore in its own new schema, dropped afterwards."""
    schema = schema or f"t_{uuid.uuid4().hex[:16]}"
    store = await PostgresEventStore.open(PostgresSettings(dsn=database_url, schema=schema))
    try:
        yield store
    finally:
        await store.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def pg_store(database_url: str, schema_name: str) -> AsyncIterator[PostgresEventStore]:
    async with fresh_store(database_url, schema_name) as store:
        yield store


@pytest.fixture
def subject_prefix() -> str:
    """A per-test Convoy instance name: NATS subjects and stream names derive from it."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server this test may stop, kill and restart (same port on restart)."""
    server = NatsServer(data_dir=tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL this test may stop, kill and restart (same port on restart)."""
    server = PostgresServer(data_dir=tmp_path / "postgres")
    server.start()
    yield server
    server.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 20.0,
    interval: float = 0.01,
    message: str = "condition",
) -> None:
    """Wait for a condition with a deadline (tests never sleep for a fixed time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The process's logging as `convoy` sets it up (JSON, stdlib routed through
    structlog), written to a buffer the test reads; restored afterwards."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    convoy_logging.configure("json", stream=out)
    try:
        yield out
    finally:
        structlog.configure(**saved)
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)
