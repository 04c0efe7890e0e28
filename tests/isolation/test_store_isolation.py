"""Isolation rows for PostgreSQL: two instances, `a` and `b`, provisioned by
`eventstore.instances.create` on one server (tests/isolation/store_env.py).

Each probe connects as a real role and runs a real statement (writes inside a
transaction that is rolled back). A probe reports "denied" only on the refusal the
protection produces — `InsufficientPrivilegeError`, the append-only trigger's exception,
Convoy's `StoreAccessDenied`, or, for notifications and locks, an observed non-event
confirmed by a sentinel — and lets anything else fail the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from eventstore import bus
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore, PostgresSettings, StoreAccessDenied, _lock_key
from eventstore.relay import Relay, RelaySettings
from eventstore.types import NewEvent
from tests.conftest import eventually
from tests.isolation.store_env import StoreInstances, store_instances  # noqa: F401
from tests.isolation.table import Row, check

ROWS = [
    Row("pg.a-reads-a-events", "a's service role", "schema a, events", "SELECT", True, probe="select"),
    Row("pg.b-reads-a-events", "b's service role", "schema a, events", "SELECT", False, "pg.a-reads-a-events", "select"),
    Row("pg.a-reads-b-events", "a's service role", "schema b, events", "SELECT", False, "pg.a-reads-a-events", "select"),
    Row("pg.a-search-path-a", "a's service role", "events via SET search_path TO a", "SELECT", True,
        probe="search_path"),
    Row("pg.b-search-path-a", "b's service role", "events via SET search_path TO a", "SELECT", False,
        "pg.a-search-path-a", "search_path"),
    Row("pg.a-inserts-a-events", "a's service role", "schema a, events", "INSERT", True, probe="service_write"),
    Row("pg.b-inserts-a-events", "b's service role", "schema a, events", "INSERT", False,
        "pg.a-inserts-a-events", "service_write"),
    Row("pg.a-updates-a-tracking", "a's service role", "schema a, tracking", "UPDATE", True, probe="service_write"),
    Row("pg.a-updates-a-events", "a's service role", "schema a, events", "UPDATE", False,
        "pg.a-updates-a-tracking", "service_write"),
    Row("pg.a-deletes-a-events", "a's service role", "schema a, events", "DELETE", False,
        "pg.a-updates-a-tracking", "service_write"),
    Row("pg.owner-deletes-a-tracking", "a's owner role", "schema a, tracking", "DELETE", True, probe="owner_write"),
    Row("pg.owner-deletes-a-events", "a's owner role", "schema a, events", "DELETE", False,
        "pg.owner-deletes-a-tracking", "owner_write"),
    Row("pg.owner-updates-a-events", "a's owner role", "schema a, events", "UPDATE", False,
        "pg.owner-deletes-a-tracking", "owner_write"),
    Row("pg.owner-truncates-a-tracking", "a's owner role", "schema a, tracking", "TRUNCATE", True,
        probe="owner_write"),
    Row("pg.owner-truncates-a-events", "a's owner role", "schema a, events", "TRUNCATE", False,
        "pg.owner-truncates-a-tracking", "owner_write"),
    Row("pg.a-reads-a-secret", "a's service role", "schema a, instance_secret", "SELECT", True, probe="select"),
    Row("pg.b-reads-a-secret", "b's service role", "schema a, instance_secret", "SELECT", False,
        "pg.a-reads-a-secret", "select"),
    Row("pg.admin-reads-registry", "the admin", "convoy_admin.instances", "SELECT", True, probe="select"),
    Row("pg.a-reads-registry", "a's service role", "convoy_admin.instances", "SELECT", False,
        "pg.admin-reads-registry", "select"),
    Row("pg.owner-creates-in-a", "a's owner role", "schema a", "CREATE TABLE", True, probe="create_table"),
    Row("pg.b-creates-in-a", "b's service role", "schema a", "CREATE TABLE", False, "pg.owner-creates-in-a",
        "create_table"),
    Row("pg.a-creates-in-a", "a's service role", "schema a", "CREATE TABLE", False, "pg.owner-creates-in-a",
        "create_table"),
    Row("pg.a-hears-a-commits", "a's service role", "a's NOTIFY channel", "LISTEN", True, probe="listen"),
    Row("pg.b-hears-a-commits", "b's service role", "a's channel as named before (convoy_<schema>_events)", "LISTEN",
        False, "pg.a-hears-a-commits", "listen"),
    Row("pg.a-stalls-a-appends", "a's service role", "a's append lock (table a.append_lock)", "hold the lock",
        True, probe="append_lock"),
    Row("pg.b-locks-a-appends", "b's service role", "a's append lock (table a.append_lock)", "hold the lock",
        False, "pg.a-stalls-a-appends", "append_lock"),
    Row("pg.b-stalls-a-appends", "b's service role", "a's append lock as keyed before (advisory, from the name)",
        "hold the lock", False, "pg.a-stalls-a-appends", "append_lock"),
    Row("pg.a-holds-a-relay-lock", "a's service role", "a's relay leader lock", "hold the lock", True,
        probe="relay_lock"),
    Row("pg.b-holds-a-relay-lock", "b's service role", "a's relay lock as keyed before (from the names)",
        "hold the lock", False, "pg.a-holds-a-relay-lock", "relay_lock"),
    Row("pg.a-sees-a-queries", "a's service role", "pg_stat_activity.query of a's listener", "SELECT", True,
        probe="activity"),
    Row("pg.b-sees-a-queries", "b's service role", "pg_stat_activity.query of a's listener", "SELECT", False,
        "pg.a-sees-a-queries", "activity"),
    Row("pg.a-store-on-a", "a's service role", "PostgresEventStore on schema a", "open, append, read", True,
        probe="store"),
    Row("pg.b-store-on-a", "b's service role", "PostgresEventStore on schema a", "open, append, read", False,
        "pg.a-store-on-a", "store"),
]
BY_ID = {row.id: row for row in ROWS}


def _event() -> NewEvent:
    return NewEvent(event_id=uuid.uuid4(), type="isolation.Probe", data=b"probe", actor="isolation-test")


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def store_a(store_instances: StoreInstances) -> AsyncIterator[PostgresEventStore]:
    """a's store, as a's services open it (with a's role); holds at least one event."""
    store = await PostgresEventStore.open(PostgresSettings(dsn=store_instances.a.dsn, schema=store_instances.a.name))
    await store.append("app/isolation", [_event()])
    try:
        yield store
    finally:
        await store.close()


def _principal(env: StoreInstances, row: Row) -> str:
    return {"a's": env.a.dsn, "b's": env.b.dsn, "the": env.admin_dsn}[row.principal.split()[0]]


async def _rolled_back(conn: asyncpg.Connection, sql: str) -> None:
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(sql)
    finally:
        await tx.rollback()


# -- probes --------------------------------------------------------------------------------


async def probe_select(dsn: str, table: str) -> bool:
    async with connected(dsn) as conn:
        try:
            await conn.fetchval(f"SELECT count(*) FROM {table}")
        except asyncpg.InsufficientPrivilegeError:
            return False
    return True


@pytest.mark.parametrize(
    ("row_id", "table"),
    [
        ("pg.a-reads-a-events", "{a}.events"),
        ("pg.b-reads-a-events", "{a}.events"),
        ("pg.a-reads-b-events", "{b}.events"),
        ("pg.a-reads-a-secret", "{a}.instance_secret"),
        ("pg.b-reads-a-secret", "{a}.instance_secret"),
        ("pg.admin-reads-registry", "convoy_admin.instances"),
        ("pg.a-reads-registry", "convoy_admin.instances"),
    ],
)
async def test_select(store_instances: StoreInstances, row_id: str, table: str) -> None:
    row = BY_ID[row_id]
    env = store_instances
    check(row, await probe_select(_principal(env, row), table.format(a=env.a.name, b=env.b.name)))


async def test_search_path(store_instances: StoreInstances) -> None:
    """Without USAGE on a schema, `SET search_path` to it silently skips it: the
    statement then finds no `events` at all (the deny), where a's role finds a's."""
    env = store_instances
    for row in (BY_ID["pg.a-search-path-a"], BY_ID["pg.b-search-path-a"]):
        async with connected(_principal(env, row)) as conn:
            await conn.execute(f"SET search_path TO {env.a.name}")
            effective = await conn.fetchval("SELECT current_schemas(false)")
            try:
                await conn.fetchval("SELECT count(*) FROM events")
                allowed = True
            except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError) as error:
                if isinstance(error, asyncpg.UndefinedTableError):
                    assert effective == [], f"events missing although {effective} is searched: {error}"
                allowed = False
        check(row, allowed)


@pytest.mark.parametrize(
    ("row_id", "sql"),
    [
        ("pg.a-inserts-a-events", "INSERT INTO {a}.events (position, stream_id, category, version, event_id, type, "
         "schema_version, data, actor) VALUES (-1, 'app/x', 'app', 1, gen_random_uuid(), 't', 1, '', 'x')"),
        ("pg.b-inserts-a-events", "INSERT INTO {a}.events (position, stream_id, category, version, event_id, type, "
         "schema_version, data, actor) VALUES (-1, 'app/x', 'app', 1, gen_random_uuid(), 't', 1, '', 'x')"),
        ("pg.a-updates-a-tracking", "UPDATE {a}.tracking SET position = position"),
        ("pg.a-updates-a-events", "UPDATE {a}.events SET actor = actor"),
        ("pg.a-deletes-a-events", "DELETE FROM {a}.events"),
    ],
)
async def test_service_role_writes(
    store_instances: StoreInstances, store_a: PostgresEventStore, row_id: str, sql: str
) -> None:
    row = BY_ID[row_id]
    env = store_instances
    async with connected(_principal(env, row)) as conn:
        try:
            await _rolled_back(conn, sql.format(a=env.a.name))
            allowed = True
        except asyncpg.InsufficientPrivilegeError:
            allowed = False
    check(row, allowed)


@pytest.mark.parametrize(
    ("row_id", "sql"),
    [
        ("pg.owner-deletes-a-tracking", "DELETE FROM {a}.tracking"),
        ("pg.owner-deletes-a-events", "DELETE FROM {a}.events"),
        ("pg.owner-updates-a-events", "UPDATE {a}.events SET actor = actor"),
        ("pg.owner-truncates-a-tracking", "TRUNCATE {a}.tracking"),
        ("pg.owner-truncates-a-events", "TRUNCATE {a}.events"),
    ],
)
async def test_owner_writes(store_instances: StoreInstances, store_a: PostgresEventStore, row_id: str, sql: str) -> None:
    """The owner may do anything a table's privileges allow; the log refuses change even
    to it (migration 0001's row trigger, 0004's TRUNCATE trigger)."""
    row = BY_ID[row_id]
    env = store_instances
    async with connected(env.admin_dsn) as conn:
        await conn.execute(f"SET ROLE {env.a.owner}")
        assert await conn.fetchval(f"SELECT count(*) FROM {env.a.name}.events") > 0  # a row trigger has rows to see
        try:
            await _rolled_back(conn, sql.format(a=env.a.name))
            allowed = True
        except asyncpg.RaiseError as error:
            assert "the events table is append-only" in str(error), error
            allowed = False
    check(row, allowed)


@pytest.mark.parametrize("row_id", ["pg.owner-creates-in-a", "pg.b-creates-in-a", "pg.a-creates-in-a"])
async def test_create_table(store_instances: StoreInstances, row_id: str) -> None:
    row = BY_ID[row_id]
    env = store_instances
    dsn = env.admin_dsn if row.principal.endswith("owner role") else _principal(env, row)
    async with connected(dsn) as conn:
        if row.principal.endswith("owner role"):
            await conn.execute(f"SET ROLE {env.a.owner}")
        try:
            await _rolled_back(conn, f"CREATE TABLE {env.a.name}.x (i int)")
            allowed = True
        except asyncpg.InsufficientPrivilegeError:
            allowed = False
    check(row, allowed)


async def probe_listen(env: StoreInstances, store: PostgresEventStore, listener_dsn: str, channel: str) -> bool:
    """Does a session of `listener_dsn` listening on `channel` hear a's next commit? a's
    own listener on its real channel hears it first; then a sentinel NOTIFY on the probe
    session's own channel, delivered after anything committed before it, closes the window."""
    reference: asyncio.Queue[str] = asyncio.Queue()
    heard: asyncio.Queue[str] = asyncio.Queue()
    sentinel = f"sentinel_{uuid.uuid4().hex[:12]}"
    async with connected(env.a.dsn) as ref_conn, connected(listener_dsn) as conn:
        await ref_conn.add_listener(store.channel, lambda *args: reference.put_nowait(args[3]))
        await conn.add_listener(channel, lambda *args: heard.put_nowait(f"commit:{args[3]}"))
        await conn.add_listener(sentinel, lambda *args: heard.put_nowait("sentinel"))
        result = await store.append("app/isolation", [_event()])
        async with asyncio.timeout(20):
            while int(await reference.get()) < result.last_position:
                pass
            await conn.execute(f"NOTIFY {sentinel}")
            got = [await heard.get()]
            while got[-1] != "sentinel":
                got.append(await heard.get())
    return any(item.startswith("commit:") for item in got)


async def test_listen(store_instances: StoreInstances, store_a: PostgresEventStore) -> None:
    env = store_instances
    check(BY_ID["pg.a-hears-a-commits"], await probe_listen(env, store_a, env.a.dsn, store_a.channel))
    old_style = f"convoy_{env.a.name}_events"
    check(BY_ID["pg.b-hears-a-commits"], await probe_listen(env, store_a, env.b.dsn, old_style))


async def probe_append_lock(env: StoreInstances, store: PostgresEventStore, holder_dsn: str, take: str) -> bool:
    """Does a session of `holder_dsn` that ran `take` in its transaction stall a's
    appends? The append either completes while the holder's transaction is open (not
    stalled), or a's writer is seen waiting for a lock in pg_locks (stalled, and the lock
    it waits for is the append lock); then the holder rolls back. A holder refused the
    lock (InsufficientPrivilege) stalls nothing."""
    async with connected(holder_dsn) as holder, connected(env.admin_dsn) as admin:
        tx = holder.transaction()
        await tx.start()
        try:
            await holder.execute(take)
        except asyncpg.InsufficientPrivilegeError:
            await tx.rollback()
            return False
        append = asyncio.create_task(store.append("app/isolation", [_event()]))

        async def waiting() -> bool:
            return bool(
                await admin.fetchval(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND locktype = 'relation' "
                    "AND relation = to_regclass($1))",
                    f"{env.a.name}.append_lock",
                )
            )

        try:
            await eventually(lambda: append.done() or waiting(), timeout=20)
            stalled = not append.done()
        finally:
            await tx.rollback()
            await append
    return stalled


async def test_append_lock(store_instances: StoreInstances, store_a: PostgresEventStore) -> None:
    env = store_instances
    table_lock = f"LOCK TABLE {env.a.name}.append_lock IN EXCLUSIVE MODE"
    check(BY_ID["pg.a-stalls-a-appends"], await probe_append_lock(env, store_a, env.a.dsn, table_lock))
    check(BY_ID["pg.b-locks-a-appends"], await probe_append_lock(env, store_a, env.b.dsn, table_lock))
    guessed = _lock_key(env.a.name, "append")  # how the key was derived before: from the name alone
    advisory = f"SELECT pg_advisory_xact_lock({guessed})"
    check(BY_ID["pg.b-stalls-a-appends"], await probe_append_lock(env, store_a, env.b.dsn, advisory))


async def probe_relay_lock(store: PostgresEventStore, nats_url: str, holder_dsn: str, key: int) -> bool:
    """Does a session of `holder_dsn` holding advisory lock `key` keep a's relay from
    leading? The relay either leads, or is seen failing to take its lock (a standby's
    poll records progress without leading)."""
    async with connected(holder_dsn) as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", key)
        nc = await bus.connect(nats_url, name="isolation-relay")
        try:
            relay = Relay(store=store, nc=nc, settings=RelaySettings(instance=RELAY_INSTANCE, lock_poll=0.05))
            relay.progress_at = 0.0  # set by each failed try of a standby
            async with relay:
                await eventually(lambda: relay.leader or relay.progress_at > 0, timeout=20)
                kept_out = not relay.leader
        finally:
            await nc.close()
    return kept_out


RELAY_INSTANCE = f"iso{uuid.uuid4().hex[:8]}"


async def test_relay_lock(store_instances: StoreInstances, store_a: PostgresEventStore, embedded_nats: NatsServer) -> None:
    env = store_instances
    key = store_a.lock_key(f"relay:{RELAY_INSTANCE}")
    check(BY_ID["pg.a-holds-a-relay-lock"], await probe_relay_lock(store_a, embedded_nats.url, env.a.dsn, key))
    digest = hashlib.blake2b(f"convoy:{env.a.name}:relay:{RELAY_INSTANCE}".encode(), digest_size=8).digest()
    guessed = int.from_bytes(digest, "big", signed=True)  # how the key was derived before: from the names
    check(BY_ID["pg.b-holds-a-relay-lock"], await probe_relay_lock(store_a, embedded_nats.url, env.b.dsn, guessed))


async def test_activity(store_instances: StoreInstances, store_a: PostgresEventStore) -> None:
    """The LISTEN statement names a's channel: its text must be hidden from b."""
    env = store_instances
    async with connected(env.a.dsn) as listener:
        await listener.add_listener(store_a.channel, lambda *args: None)
        pid = listener.get_server_pid()
        for row in (BY_ID["pg.a-sees-a-queries"], BY_ID["pg.b-sees-a-queries"]):
            async with connected(_principal(env, row)) as conn:
                query = await conn.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
            if query == "<insufficient privilege>":
                allowed = False
            else:
                assert store_a.channel in query, query
                allowed = True
            check(row, allowed)


async def probe_store(dsn: str, schema: str) -> bool:
    try:
        store = await PostgresEventStore.open(PostgresSettings(dsn=dsn, schema=schema, pool_min=1, pool_max=2))
    except StoreAccessDenied as error:
        assert schema in str(error) and "CONVOY_INSTANCE" in str(error), error
        return False
    try:
        result = await store.append("app/probe", [_event()])
        assert [e.position for e in await store.read_all(after=result.last_position - 1)] == [result.last_position]
    finally:
        await store.close()
    return True


async def test_store(store_instances: StoreInstances) -> None:
    env = store_instances
    for row in (BY_ID["pg.a-store-on-a"], BY_ID["pg.b-store-on-a"]):
        check(row, await probe_store(_principal(env, row), env.a.name))


def test_every_row_has_a_test() -> None:
    probes: dict[str, Callable[..., object]] = {
        "select": test_select, "search_path": test_search_path, "service_write": test_service_role_writes, "owner_write": test_owner_writes, "create_table": test_create_table,
        "listen": test_listen, "append_lock": test_append_lock, "relay_lock": test_relay_lock, "activity": test_activity, "store": test_store,
    }
    assert {row.probe for row in ROWS} == set(probes)
