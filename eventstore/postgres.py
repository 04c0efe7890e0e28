"""The event store on PostgreSQL: the system of record.

Ordering. A reader that tails "position > checkpoint" must never skip an event that a
slower transaction commits later with a smaller position (the bug Marten, Emmett and
eventsourcing each fixed). Convoy assigns positions under a transaction-scoped lock
taken just before the inserts (EXCLUSIVE on the schema's empty `append_lock` table: unlike
an advisory lock, whose key every role sees in pg_locks, only this instance's roles may
take it), and the lock is released only after the commit is visible. So positions are
gapless and in commit order: a snapshot that sees position p sees every position below
it, and an aborted transaction leaves no gap to wait for.

Throughput. Serialising commits would cap appends at one fsync per command (~3,000/s on
our machines). Instead one committer task per process takes every write queued while the
previous transaction ran and commits them together (group commit): one lock, one
round of checks, one multi-row INSERT, one fsync. `eventstore.grouping` decides each
write on its own, so concurrency checks and idempotency stay per command.

Errors from asyncpg never leave this module: connectivity problems become `Unavailable`
(retryable; the transaction either committed or did not, and a retry with the same event
ids is a no-op), everything else becomes a Convoy error or a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import structlog

from eventstore import grouping
from eventstore.committer import GroupCommitter, Turn
from eventstore.tasks import Backoff
from eventstore.errors import ConvoyError, InvalidInput, Unavailable
from eventstore.types import (
    AppendRequest,
    AppendResult,
    Checkpoint,
    ExpectedVersion,
    NewEvent,
    Receipt,
    RecordedEvent,
    validate_stream_id,
)

log = structlog.get_logger("convoy.eventstore")

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, data, actor, "
    "causation_id, correlation_id, recorded_at"
)
_T = TypeVar("_T")

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,  # a connection the server dropped mid-protocol
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
    # A server that is (or became) a standby: a single-endpoint URL can land on one during a
    # failover; the connection is dropped and the next attempt connects afresh.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
"""asyncpg failures that mean "the server cannot do it right now", not "the request is wrong".
(`TargetServerAttributeNotMatched`, no writable host in a multi-host URL yet, is an
`InternalClientError`.)"""


CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,  # a server that vanished without closing the socket answers nothing
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
"""The `UNAVAILABLE_ERRORS` that say "this connection's server is gone or no longer the
primary" (a crash, a failover): the store then drops its other connections too, so the next
attempt connects afresh — with a multi-host URL, to whichever host takes writes now."""


def _lock_key(schema: str, purpose: str) -> int:
    """A stable 63-bit advisory-lock key per schema and purpose, from the name alone: only
    for migrating, which runs before the schema's secret exists (and only as a role that
    may create in the schema). Everything else uses `PostgresEventStore.lock_key`."""
    return zlib.crc32(f"convoy:{schema}:{purpose}".encode()) | (zlib.crc32(purpose.encode()) << 31)


class MigrationsPending(ConvoyError):
    """The schema lacks migrations this build needs and the connecting role may not apply
    them (an instance's service role never may). Not retryable: an operator runs
    `convoy instances upgrade NAME` with the admin URL, then the service starts."""


class StoreAccessDenied(ConvoyError):
    """The database role may not use this schema: the URL and the instance name do not
    belong together (each instance's URL is in its env file). Not retryable."""


async def guarded(what: str, op: Callable[[], Awaitable[_T]]) -> _T:
    """Run a database operation, translating connectivity failures to `Unavailable`."""
    try:
        return await op()
    except UNAVAILABLE_ERRORS as error:
        raise Unavailable(f"PostgreSQL unavailable during {what}: {type(error).__name__}: {error}") from error


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    dsn: str
    schema: str = "convoy"
    pool_min: int = 2
    pool_max: int = 10
    max_batch_events: int = 5000
    commit_pipeline: int = 2
    """Batches in flight at once (each on its own connection); see eventstore.committer."""
    command_timeout: float = 30.0


class PostgresEventStore:
    """`EventStore` on PostgreSQL. Create with `await PostgresEventStore.open(settings)`."""

    def __init__(
        self,
        *,
        settings: PostgresSettings,
        pool: asyncpg.Pool,
        secret: bytes,
        fault_hook: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._fault_hook = fault_hook
        self.schema = settings.schema
        self._pool = pool
        self._secret = secret
        self.channel = "convoy_" + self.instance_key("notify").hex()[:40]
        """The NOTIFY channel of this schema's commits: derived from the secret, because
        channels are database-wide and any role may LISTEN on any name it can compute."""
        self._committer = GroupCommitter(
            name=settings.schema,
            run_batch=self._write_batch,
            depth=settings.commit_pipeline,
            max_batch_events=settings.max_batch_events,
        )
        self._writer_conns: list[asyncpg.Connection] = []
        self._closed = False

    @classmethod
    async def open(
        cls,
        settings: PostgresSettings,
        *,
        fault_hook: Callable[[str], Awaitable[None]] | None = None,
    ) -> PostgresEventStore:
        """Migrate the schema and connect. `fault_hook(phase)` is awaited inside every
        append transaction ("locking", "committing") — fault-injection tests use it to
        delay or abort commits; production passes nothing."""
        if not _SCHEMA_NAME.fullmatch(settings.schema):
            raise InvalidInput(f"invalid schema name {settings.schema!r}: use lower-case letters, digits and '_'")
        await migrate(settings.dsn, settings.schema)

        pool = await guarded(
            "connect",
            lambda: asyncpg.create_pool(
                settings.dsn,
                **_pool_size(settings.pool_min),
                max_size=settings.pool_max,
                command_timeout=settings.command_timeout,
                server_settings={"search_path": settings.schema, "idle_in_transaction_session_timeout": "60000"},
                reset=_keep_session,
            ),
        )
        assert pool is not None
        try:
            secret = await guarded("reading the instance secret", lambda: pool.fetchval(_SECRET))
        except BaseException:
            await pool.close()
            raise
        return cls(settings=settings, pool=pool, secret=bytes(secret), fault_hook=fault_hook)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    def instance_key(self, purpose: str) -> bytes:
        """HMAC-SHA256 of the schema's secret (table `instance_secret`, readable only by
        this instance's roles) with `purpose`: 32 bytes no other instance can compute.
        The store derives its NOTIFY channel ("notify") and advisory-lock keys
        ("lock:<name>") from it; the API uses `instance_key("tokens")` as its token key.
        Each purpose gets an unrelated key; the secret itself never leaves the store."""
        if not purpose:
            raise InvalidInput("instance_key needs a purpose")
        return hmac.new(self._secret, purpose.encode("utf-8"), hashlib.sha256).digest()

    def lock_key(self, name: str) -> int:
        """A 64-bit advisory-lock key for `name` (the relay's: "relay:<instance>") that only
        this instance's roles can compute (see `instance_key`). Other roles cannot derive
        it, but can see it in pg_locks while it is held (docs/instances.md, Known limits):
        a lock that must hold against them is a table lock instead (the append lock)."""
        return int.from_bytes(self.instance_key(f"lock:{name}")[:8], "big", signed=True)

    async def close(self) -> None:
        self._closed = True
        await self._committer.close()
        for conn in self._writer_conns:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await conn.close(timeout=5)
        self._writer_conns.clear()
        await self._pool.close()

    @property
    def batches_committed(self) -> int:
        return self._committer.batches

    @property
    def writes_committed(self) -> int:
        return self._committer.writes

    # -- writing ---------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> AppendResult:
        (result,) = await self.commit([AppendRequest(stream_id, tuple(events), expected_version)])
        return result

    async def commit(
        self,
        appends: Sequence[AppendRequest],
        *,
        checkpoint: Checkpoint | None = None,
        receipt: Receipt | None = None,
    ) -> list[AppendResult]:
        write = grouping.Write(tuple(appends), checkpoint, receipt)
        grouping.validate_write(write)
        if self._closed:
            raise Unavailable("the event store is closed")
        return await self._committer.submit(write)

    async def _writer_connection(self) -> asyncpg.Connection:
        """A dedicated connection per in-flight batch (the pool's reset-on-release would
        cost a round trip per batch)."""
        while self._writer_conns:
            conn = self._writer_conns.pop()
            if not conn.is_closed():
                return conn
        return await asyncpg.connect(
            self.settings.dsn,
            timeout=10,
            command_timeout=self.settings.command_timeout,
            server_settings={"search_path": self.schema, "idle_in_transaction_session_timeout": "60000"},
        )

    async def _write_batch(self, writes: Sequence[grouping.Write], turn: Turn) -> grouping.BatchPlan:
        try:
            return await guarded("append", lambda: self._write_batch_on_connection(writes, turn))
        except Unavailable as error:
            if isinstance(error.__cause__, CONNECTION_LOST):
                await self._forget_connections()
            raise

    async def _read(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        """A read on the pool; a lost connection makes the store reconnect everything."""
        try:
            return await guarded(what, op)
        except Unavailable as error:
            if isinstance(error.__cause__, CONNECTION_LOST):
                await self._forget_connections()
            raise

    async def _forget_connections(self) -> None:
        """After a lost connection the others are likely to the same dead (or demoted)
        server, and one that vanished without closing its socket would only fail after
        `command_timeout`: drop the idle writer connections and have the pool replace each
        of its connections at its next use, so the next attempt connects afresh."""
        idle, self._writer_conns = self._writer_conns, []
        for conn in idle:
            conn.terminate()
        await self._pool.expire_connections()

    async def _write_batch_on_connection(self, writes: Sequence[grouping.Write], turn: Turn) -> grouping.BatchPlan:
        """One transaction in four round trips: lock, read state, write, commit."""
        streams, ids, names = grouping.referenced(writes)
        slots = grouping.receipt_slots(writes)
        conn = await self._writer_connection()
        reusable = False
        try:
            await turn.wait_previous()
            # Statement order matters: READ COMMITTED takes a new snapshot per statement,
            # so the state read after the lock sees every commit made before it.
            await conn.execute("BEGIN; LOCK TABLE append_lock IN EXCLUSIVE MODE")
            turn.locked()
            if self._fault_hook is not None:
                await self._fault_hook("locking")
            rows = await conn.fetch(
                _READ_STATE, list(streams), list(ids), list(names), [s for s, _ in slots], [k for _, k in slots]
            )
            head, versions, known, tracking, taken = 0, {}, {}, {}, {}
            for r in rows:
                kind = r[0]
                if kind == "h":
                    head = r[2]
                elif kind == "v":
                    versions[r[1]] = r[2]
                elif kind == "t":
                    tracking[r[1]] = r[2]
                elif kind == "r":
                    taken[(r[1], r[5])] = Receipt(r[1], r[5], r[8], bytes(r[11]), bytes(r[7]), r[2])
                else:
                    known[r[3]] = grouping.Known(r[2], r[1], r[4], r[5], r[6], bytes(r[7]), r[8], r[9], r[10])
            plan = grouping.plan_batch(
                writes, head=head, versions=versions, known=known, checkpoints=tracking, receipts=taken
            )
            if plan.rows or plan.checkpoints or plan.receipts:
                new = plan.rows
                events = [r.event for r in new]
                causes = [e.causation_id for e in events]
                correlations = [e.correlation_id for e in events]
                await conn.execute(
                    _WRITE,
                    [r.position for r in new],
                    [r.stream_id for r in new],
                    [r.version for r in new],
                    [e.event_id for e in events],
                    [e.type for e in events],
                    [e.schema_version for e in events],
                    [e.data for e in events],
                    [e.actor for e in events],
                    causes if any(causes) else None,  # all-NULL columns are filled server-side
                    correlations if any(correlations) else None,
                    list(plan.checkpoints),
                    list(plan.checkpoints.values()),
                    self.channel,
                    str(plan.head) if new else "",
                    [r.scope for r in plan.receipts],
                    [r.key for r in plan.receipts],
                    [r.method for r in plan.receipts],
                    [r.request_sha256 for r in plan.receipts],
                    [r.response for r in plan.receipts],
                    [r.position for r in plan.receipts],
                )
            if self._fault_hook is not None:
                await self._fault_hook("committing")
            await conn.execute("COMMIT")
            reusable = True
        finally:
            if reusable and not conn.is_closed():
                self._writer_conns.append(conn)
            else:
                # The server rolls back what this connection had not committed.
                conn.terminate()
        return plan

    # -- reading ---------------------------------------------------------------

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        as_of_position: int | None = None,
        as_of_time: datetime | None = None,
    ) -> list[RecordedEvent]:
        validate_stream_id(stream_id)
        clauses = ["stream_id = $1", "version >= $2"]
        args: list[Any] = [stream_id, from_version]
        for clause, value in (
            ("version <= ${}", to_version),
            ("position <= ${}", as_of_position),
            ("recorded_at <= ${}", as_of_time),
        ):
            if value is not None:
                args.append(value)
                clauses.append(clause.format(len(args)))
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY version"
        rows = await self._read("read_stream", lambda: self._pool.fetch(sql, *args))
        return [_recorded(r) for r in rows]

    async def stream_version(self, stream_id: str) -> int:
        validate_stream_id(stream_id)
        value = await self._read(
            "stream_version",
            lambda: self._pool.fetchval("SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id),
        )
        return int(value)

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        clauses = ["position > $1"]
        args: list[Any] = [after]
        if categories is not None:
            args.append(list(categories))
            clauses.append(f"category = ANY(${len(args)}::text[])")
        if to_position is not None:
            args.append(to_position)
            clauses.append(f"position <= ${len(args)}")
        args.append(limit)
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY position LIMIT ${len(args)}"
        rows = await self._read("read_all", lambda: self._pool.fetch(sql, *args))
        return [_recorded(r) for r in rows]

    async def head(self) -> int:
        value = await self._read("head", lambda: self._pool.fetchval("SELECT coalesce(max(position), 0) FROM events"))
        return int(value)

    async def position_at(self, when: datetime) -> int:
        value = await self._read(
            "position_at",
            lambda: self._pool.fetchval("SELECT coalesce(max(position), 0) FROM events WHERE recorded_at <= $1", when),
        )
        return int(value)

    async def checkpoint(self, name: str) -> int:
        value = await self._read(
            "checkpoint", lambda: self._pool.fetchval("SELECT position FROM tracking WHERE name = $1", name)
        )
        return int(value or 0)

    async def receipts(self, slots: Sequence[tuple[str, str]]) -> tuple[int, dict[tuple[str, str], Receipt]]:
        rows = await self._read(
            "receipt lookup",
            lambda: self._pool.fetch(_RECEIPTS, [s for s, _ in slots], [k for _, k in slots]),
        )
        head, found = 0, {}
        for r in rows:
            if r[0] is None:
                head = r[5]
            else:
                found[(r[0], r[1])] = Receipt(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]), r[5])
        return head, found

    async def purge_receipts(self, *, before: datetime, limit: int) -> int:
        """Delete at most `limit` idempotency receipts recorded before `before`; how many
        went. Bounded, so a purge never holds many rows locked at once: call it again
        while it returns `limit` (services.api.idempotency.ReceiptPurge does)."""
        status = await guarded("receipt purge", lambda: self._pool.execute(_PURGE_RECEIPTS, before, limit))
        return int(status.split()[-1])

    async def tail(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        batch_size: int = 1000,
        idle_poll: float = 1.0,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up, then follow. Woken by NOTIFY; also polls every `idle_poll` seconds so
        a notification lost in a reconnect delays an event, never loses it. Rides out
        database outages (retrying with backoff) — a tail is a long-lived reader."""
        position = after
        notified = asyncio.Event()
        listener: asyncpg.Connection | None = None
        backoff = Backoff(base=0.05, cap=2.0)

        def on_notify(*_: object) -> None:
            notified.set()

        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await guarded("listen", lambda: self._connect_listener(on_notify))
                    notified.clear()
                    batch = await self.read_all(after=position, limit=batch_size, categories=categories)
                    backoff.reset()
                except Unavailable as error:
                    if self._closed:
                        return  # the store was closed under the tail: nothing more will come
                    delay = backoff.next()
                    log.warning("tail: store unavailable, retrying", error=str(error), retry_in=round(delay, 3))
                    if listener is not None:
                        listener.terminate()  # it may be alive still; a new one is made on retry
                    listener = None
                    await asyncio.sleep(delay)
                    continue
                for event in batch:
                    position = event.position
                    yield event
                if len(batch) < batch_size:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                    # that arrives with the notification, and the tail's task would not stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(idle_poll):
                            await notified.wait()
        finally:
            if listener is not None and not listener.is_closed():
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    await listener.close(timeout=2)

    async def _connect_listener(self, callback: Callable[..., None]) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.settings.dsn, timeout=10, server_settings={"search_path": self.schema})
        # A listener whose server died hears nothing more: wake the tail, which then reads
        # (through the pool, reconnecting) and listens again on a new connection.
        conn.add_termination_listener(lambda _conn: callback())
        try:
            await conn.add_listener(self.channel, callback)
        except BaseException:  # cancelled (the tail is stopping) or failed: the caller never gets it
            conn.terminate()
            raise
        return conn


_READ_STATE = """
SELECT 'h', NULL::text, coalesce(max(position), 0), NULL::uuid, NULL::bigint, NULL::text, NULL::int,
       NULL::bytea, NULL::text, NULL::uuid, NULL::uuid, NULL::bytea
  FROM events
UNION ALL
SELECT 'v', s.id, coalesce((SELECT max(version) FROM events e WHERE e.stream_id = s.id), 0),
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM unnest($1::text[]) AS s(id)
UNION ALL
SELECT 'k', stream_id, position, event_id, version, type, schema_version, data, actor, causation_id, correlation_id,
       NULL
  FROM events WHERE event_id = ANY($2::uuid[])
UNION ALL
SELECT 't', name, position, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM tracking WHERE name = ANY($3::text[])
UNION ALL
SELECT 'r', i.token_id, i.position, NULL, NULL, i.key, NULL, i.response, i.method, NULL, NULL, i.request_sha256
  FROM api_idempotency i JOIN unnest($4::text[], $5::text[]) AS k(scope, key) ON i.token_id = k.scope AND i.key = k.key
"""
"""Everything a batch decision needs, in one round trip: head, stream versions, events
already stored under the batch's ids (for idempotent retries), processor checkpoints,
receipts already recorded under the batch's keys."""

_WRITE = """
WITH inserted AS (
    INSERT INTO events (position, stream_id, category, version, event_id, type, schema_version,
                        data, actor, causation_id, correlation_id)
    SELECT p, s, split_part(s, '/', 1), v, i, t, sv, d, a, c, r
      FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::int[],
                  $7::bytea[], $8::text[],
                  coalesce($9::uuid[], array_fill(NULL::uuid, ARRAY[cardinality($1::bigint[])])),
                  coalesce($10::uuid[], array_fill(NULL::uuid, ARRAY[cardinality($1::bigint[])])))
           AS e(p, s, v, i, t, sv, d, a, c, r)
), tracked AS (
    INSERT INTO tracking (name, position) SELECT * FROM unnest($11::text[], $12::bigint[])
    ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = clock_timestamp()
), receipts AS (
    INSERT INTO api_idempotency (token_id, key, method, request_sha256, response, position)
    SELECT * FROM unnest($15::text[], $16::text[], $17::text[], $18::bytea[], $19::bytea[], $20::bigint[])
)
SELECT pg_notify($13, $14) WHERE $14 <> ''
"""
"""The batch's events, checkpoints, receipts and wake-up notification, in one statement.
Receipts need no ON CONFLICT: they are checked and written under the append lock."""


def _pool_size(initial: int) -> dict[str, int]:
    """Open `initial` connections at start, and keep no floor afterwards: a connection the
    server dropped (a restart, a failover) is replaced when it is next acquired, on a fresh
    connect that follows the URL to whichever host takes writes now. asyncpg 0.32 made
    `min_size` a floor kept by a background task that logs a traceback for every failed
    reconnect during an outage Convoy already reports; it has `init_size` for the start."""
    if "init_size" in inspect.signature(asyncpg.create_pool).parameters:
        return {"init_size": initial, "min_size": 0}
    return {"min_size": initial}  # before 0.32 min_size was the start size only


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset between uses: nothing more than asyncpg's own (it rolls back an
    open transaction). Pool users run single statements and leave no session state —
    no LISTEN, SET or session-level advisory lock (those use dedicated connections) —
    and the default RESET ALL would cost a round trip on every release."""


_RECEIPTS = """
SELECT NULL::text, NULL::text, NULL::text, NULL::bytea, NULL::bytea, coalesce(max(position), 0) FROM events
UNION ALL
SELECT i.token_id, i.key, i.method, i.request_sha256, i.response, i.position
  FROM api_idempotency i JOIN unnest($1::text[], $2::text[]) AS k(scope, key) ON i.token_id = k.scope AND i.key = k.key
"""
"""The head (the row without a key) and the receipts asked for, in one statement (one snapshot)."""


_PURGE_RECEIPTS = """
DELETE FROM api_idempotency WHERE (token_id, key) IN (
    SELECT token_id, key FROM api_idempotency WHERE created_at < $1 LIMIT $2
)"""
"""One batch of expired receipts (the BRIN index on created_at finds them)."""


def _recorded(row: asyncpg.Record) -> RecordedEvent:
    # _COLUMNS lists the columns in RecordedEvent's field order.
    return tuple.__new__(RecordedEvent, row)


_SECRET = "SELECT secret FROM instance_secret"


def migration_files() -> list[tuple[int, Any]]:
    """(version, file) of every migration this build carries, in order."""
    return sorted(
        (int(f.name.split("_", 1)[0]), f)
        for f in resources.files("eventstore.migrations").iterdir()
        if f.name.endswith(".sql")
    )


async def pending_migrations(conn: asyncpg.Connection, schema: str) -> list[int] | None:
    """The versions this schema lacks, read without writing or locking anything (so a role
    that may only read can ask); None when the schema has no migrations table yet."""
    table = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_migrations")
    if table is None:
        return None
    try:
        done = {r[0] for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")}
    except asyncpg.InsufficientPrivilegeError:
        return None
    return [version for version, _ in migration_files() if version not in done]


async def migrate(dsn: str, schema: str) -> list[int]:
    """Apply the versioned migrations in eventstore/migrations/ that this schema lacks,
    in one transaction, under a lock so concurrent starts do not race. Returns the
    versions applied.

    A schema already current is left alone without taking the lock or writing: an
    instance's service role (which may not create anything) starts like that. When
    migrations are pending and the role lacks the privilege to apply them, it says which
    command applies them (`MigrationsPending`)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidInput(f"invalid schema name {schema!r}")
    conn = await guarded("connect", lambda: asyncpg.connect(dsn, timeout=10))
    try:
        usable = await guarded(
            "migration check",
            lambda: conn.fetchval(
                "SELECT to_regnamespace($1) IS NULL OR has_schema_privilege(to_regnamespace($1), 'USAGE')", schema
            ),
        )
        if not usable:
            user = await conn.fetchval("SELECT current_user")
            raise StoreAccessDenied(
                f"database role {user!r} may not use schema {schema!r}: CONVOY_DATABASE_URL and CONVOY_INSTANCE "
                "must name the same instance (each instance's URL is in its env file, see `convoy instances list`)"
            )
        if await guarded("migration check", lambda: pending_migrations(conn, schema)) == []:
            return []
        owner = await conn.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", schema)
        if owner == f"convoy_{schema}_owner":
            # A provisioned instance (eventstore.instances): its objects must stay its owner's
            # and its service role needs grants on new tables; only `upgrade` does both.
            raise MigrationsPending(
                f"schema {schema!r} is a provisioned instance that needs migrations; an operator runs "
                f"`convoy instances upgrade {schema}` with the admin URL (--admin-url or "
                "CONVOY_ADMIN_DATABASE_URL), then start again"
            )
        try:
            async with conn.transaction():
                applied = await guarded("migrate", lambda: apply_migrations(conn, schema))
        except (asyncpg.InsufficientPrivilegeError, asyncpg.InvalidSchemaNameError) as error:
            raise MigrationsPending(
                f"schema {schema!r} needs migrations that this database role may not apply ({error}); "
                f"an operator runs `convoy instances upgrade {schema}` with the admin URL "
                "(--admin-url or CONVOY_ADMIN_DATABASE_URL), then start again"
            ) from None
    finally:
        await conn.close()
    if applied:
        log.info("migrated", schema=schema, versions=applied)
    return applied


async def apply_migrations(conn: asyncpg.Connection, schema: str, *, role: str | None = None) -> list[int]:
    """The pending migrations, on `conn`, inside the caller's transaction. With `role`
    (an instance's owner role, see eventstore.instances), they run under `SET LOCAL ROLE`
    so every object they create is owned by it; the schema must exist then."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema, "migrate"))
    if role is not None:
        await conn.execute(f"SET LOCAL ROLE {role}")
    if await conn.fetchval("SELECT to_regnamespace($1)", schema) is None:
        await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"SET LOCAL search_path TO {schema}")
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version integer PRIMARY KEY, name text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for version, file in migration_files():
        if version in done:
            continue
        await conn.execute(file.read_text())
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, file.name)
        applied.append(version)
    if role is not None:
        await conn.execute("RESET ROLE")
    return applied

