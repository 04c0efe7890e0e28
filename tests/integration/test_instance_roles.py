"""A provisioned instance's service role runs everything the services run against the
store — appends with checkpoints and receipts, tails woken by NOTIFY, the relay with its
lock and checkpoint — and never migrates: a current schema is left alone, a stale one is
refused with the command that upgrades it, and `upgrade` brings it current."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from eventstore import bus, instances
from eventstore.errors import InvalidInput
from eventstore.embedded import NatsServer, PostgresServer
from eventstore.postgres import MigrationsPending, PostgresEventStore, PostgresSettings
from eventstore.relay import Relay, RelaySettings
from eventstore.types import Checkpoint, NewEvent, Receipt
from tests.conftest import eventually, fresh_store
from tests.isolation.store_env import Instance, provision


def ev(n: int) -> NewEvent:
    return NewEvent(event_id=uuid.uuid4(), type="convoy.v1.Test", data=f"event {n}".encode(), actor="user:ann")


@pytest.fixture
async def instance(embedded_postgres: PostgresServer) -> AsyncIterator[Instance]:
    created = await provision(embedded_postgres.dsn, f"roles_{uuid.uuid4().hex[:8]}")
    try:
        yield created
    finally:
        await instances.delete(embedded_postgres.dsn, created.name, force=True)


async def test_the_service_role_runs_the_store_and_the_relay(instance: Instance, embedded_nats: NatsServer) -> None:
    store = await PostgresEventStore.open(PostgresSettings(dsn=instance.dsn, schema=instance.name))
    try:
        tail = store.tail(idle_poll=30)  # woken by NOTIFY, not by polling
        await store.append("app/x", [ev(0)])
        assert (await anext(tail)).position == 1
        await store.commit(
            [],
            checkpoint=Checkpoint("processor", 1),
            receipt=Receipt("token-1", "key-1", "Method", b"\0" * 32, b"answer", 0),
        )
        second = await store.append("app/x", [ev(1)])
        await store.commit([], checkpoint=Checkpoint("processor", 2))  # the upsert's UPDATE path
        assert await store.checkpoint("processor") == 2
        assert (await anext(tail)).position == second.last_position
        await tail.aclose()

        nc = await bus.connect(embedded_nats.url, name="relay-test")
        prefix = f"t{uuid.uuid4().hex[:10]}"
        try:
            async with Relay(store=store, nc=nc, settings=RelaySettings(instance=prefix, lock_poll=0.05)) as relay:
                await eventually(lambda: relay.checkpoint == second.last_position, message="the relay published")
                third = await store.append("app/x", [ev(2)])  # moves the stored checkpoint: an UPDATE
                await eventually(lambda: relay.checkpoint == third.last_position, message="the relay published more")
                await eventually(lambda: relay.failures == 0 and relay.leader)
                assert await relay.measure_lag() == 0
        finally:
            await nc.close()
    finally:
        await store.close()


async def test_a_stale_schema_is_refused_until_an_operator_upgrades_it(
    instance: Instance, embedded_postgres: PostgresServer
) -> None:
    admin = await asyncpg.connect(embedded_postgres.dsn)
    try:  # turn the schema back into what migrations 0001-0003 made
        async with admin.transaction():
            await admin.execute(f"SET LOCAL ROLE {instance.owner}")
            await admin.execute(f"DROP TRIGGER events_no_truncate ON {instance.name}.events")
            await admin.execute(f"DROP TABLE {instance.name}.instance_secret, {instance.name}.append_lock")
            await admin.execute(f"DELETE FROM {instance.name}.schema_migrations WHERE version = 4")
    finally:
        await admin.close()

    with pytest.raises(MigrationsPending) as refused:
        await PostgresEventStore.open(PostgresSettings(dsn=instance.dsn, schema=instance.name))
    assert f"convoy instances upgrade {instance.name}" in str(refused.value)
    assert "CONVOY_ADMIN_DATABASE_URL" in str(refused.value)
    with pytest.raises(MigrationsPending) as refused:  # even a superuser: only upgrade keeps owner and grants right
        await PostgresEventStore.open(PostgresSettings(dsn=embedded_postgres.dsn, schema=instance.name))
    assert f"convoy instances upgrade {instance.name}" in str(refused.value)

    assert await instances.upgrade(embedded_postgres.dsn, instance.name) == [4]
    assert await instances.upgrade(embedded_postgres.dsn, instance.name) == []
    store = await PostgresEventStore.open(PostgresSettings(dsn=instance.dsn, schema=instance.name))
    try:  # the new table was granted, too: the store read its secret
        await store.append("app/x", [ev(0)])
        assert len(store.instance_key("tokens")) == 32
    finally:
        await store.close()


async def test_instance_keys_survive_a_restart_and_differ_per_schema_and_purpose(database_url: str) -> None:
    """The API's token key is `instance_key("tokens")`: a restart must keep it (tokens stay
    valid), another instance must not share it."""
    async with fresh_store(database_url) as a, fresh_store(database_url) as b:
        reopened = await PostgresEventStore.open(PostgresSettings(dsn=database_url, schema=a.schema))
        try:
            assert reopened.instance_key("tokens") == a.instance_key("tokens")
            assert (reopened.channel, reopened.lock_key("relay:x")) == (a.channel, a.lock_key("relay:x"))
        finally:
            await reopened.close()
        assert len(a.instance_key("tokens")) == 32
        assert a.instance_key("tokens") != b.instance_key("tokens")
        assert a.instance_key("tokens") != a.instance_key("notify")
        assert a.channel != b.channel and a.schema not in a.channel
        with pytest.raises(InvalidInput):
            a.instance_key("")


async def test_nothing_in_the_schema_is_granted_to_public_or_other_roles(
    instance: Instance, embedded_postgres: PostgresServer
) -> None:
    """Every ACL entry on the schema and its objects names the owner or the service role
    (aclexplode's grantee 0 is PUBLIC); functions too, which PostgreSQL grants PUBLIC by default."""
    conn = await asyncpg.connect(embedded_postgres.dsn)
    try:
        grantees = await conn.fetch(
            """
            SELECT kind, object, CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END AS grantee, g.privilege_type
              FROM (SELECT 'schema' AS kind, nspname::text AS object, nspacl AS acl FROM pg_namespace WHERE nspname = $1
                    UNION ALL
                    SELECT 'relation', relname::text, relacl FROM pg_class WHERE relnamespace = to_regnamespace($1)
                    UNION ALL
                    SELECT 'function', proname::text, coalesce(proacl, acldefault('f', proowner))
                      FROM pg_proc WHERE pronamespace = to_regnamespace($1)) AS o,
                   aclexplode(o.acl) AS g
             WHERE g.grantee = 0 OR g.grantee::regrole::text NOT IN ($2, $3)
            """,
            instance.name,
            instance.owner,
            instance.role,
        )
        functions = await conn.fetchval("SELECT count(*) FROM pg_proc WHERE pronamespace = to_regnamespace($1)", instance.name)
    finally:
        await conn.close()
    assert functions > 0  # the append-only trigger's function, at least
    assert [dict(r) for r in grantees] == []
