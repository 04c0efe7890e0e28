"""The store when PostgreSQL goes away: a typed, retryable error and nothing half-written."""

from __future__ import annotations

import pytest

from eventstore.embedded import PostgresServer
from eventstore.errors import Unavailable
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import AppendRequest, NewEvent

pytestmark = pytest.mark.fault  # `make stress` runs these again and again


def ev(text: str) -> NewEvent:
    return NewEvent(type="convoy.v1.Test", data=text.encode())


async def test_database_down_is_unavailable_and_a_retry_after_recovery_succeeds(own_postgres: PostgresServer) -> None:
    store = await PostgresEventStore.open(PostgresSettings(dsn=own_postgres.dsn, schema="faults"))
    try:
        await store.append("app/a", [ev("before")])
        own_postgres.stop()
        pending = [ev("during-1"), ev("during-2")]
        with pytest.raises(Unavailable) as info:
            await store.append("app/a", pending)
        assert info.value.retryable
        with pytest.raises(Unavailable):
            await store.read_all()
        own_postgres.start()
        result = await store.append("app/a", pending)  # same ids: safe to retry
        assert result.positions == (2, 3)
        assert [e.data for e in await store.read_stream("app/a")] == [b"before", b"during-1", b"during-2"]
    finally:
        await store.close()


async def test_crash_in_the_middle_of_a_commit_writes_nothing(own_postgres: PostgresServer) -> None:
    crash = {"armed": False}

    async def hook(phase: str) -> None:
        if phase == "committing" and crash["armed"]:
            crash["armed"] = False
            own_postgres.kill()

    store = await PostgresEventStore.open(PostgresSettings(dsn=own_postgres.dsn, schema="faults"), fault_hook=hook)
    try:
        await store.append("app/a", [ev("kept")])
        crash["armed"] = True
        with pytest.raises(Unavailable):
            await store.commit([
                AppendRequest("app/a", [ev("lost-1"), ev("lost-2")]),
                AppendRequest("app/b", [ev("lost-3")]),
            ])
        own_postgres.start()
        assert await store.head() == 1
        assert [e.data for e in await store.read_all()] == [b"kept"]
        assert await store.stream_version("app/b") == 0
    finally:
        await store.close()


async def test_opening_against_a_dead_server_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        await PostgresEventStore.open(PostgresSettings(dsn="postgresql://convoy:x@127.0.0.1:9/postgres"))


async def test_migrations_are_versioned_and_applied_once(database_url: str, schema_name: str) -> None:
    from eventstore.postgres import migrate

    assert await migrate(database_url, schema_name) == _migration_versions()
    assert await migrate(database_url, schema_name) == []
    store = await PostgresEventStore.open(PostgresSettings(dsn=database_url, schema=schema_name))
    await store.append("app/a", [ev("x")])
    await store.close()


def _migration_versions() -> list[int]:
    from importlib import resources

    files = resources.files("eventstore.migrations").iterdir()
    versions = sorted(int(f.name.split("_", 1)[0]) for f in files if f.name.endswith(".sql"))
    assert versions[:2] == [1, 2] and versions == list(range(1, len(versions) + 1)), versions
    return versions
