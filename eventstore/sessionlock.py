"""Leadership by a PostgreSQL session-level advisory lock on a dedicated connection.

One process of a kind leads (the planner of a partition; the relay has its own copy of
the same idea); the others stand by. A lock held by a session is released by PostgreSQL
when the session ends — the process died, was killed with SIGKILL, or lost its
connection — so a standby polling `pg_try_advisory_lock` takes over without anyone
cleaning up, and no lease can be left behind by a dead holder.

The holder must also notice when *it* lost the lock: `hold()` yields an event that is set
when the lock's session ends (asyncpg's termination callback) or stops answering a
`SELECT 1` within `check_timeout` (a half-open connection), and the caller stops leading
then. Between the session's end and the old leader noticing, two processes may both
believe they lead for up to `check_every + check_timeout` seconds: whatever they protect
must tolerate that (the planner's outputs are idempotent: their ids derive from inputs).

The lock needs a session: point `dsn` at PostgreSQL itself or a session-pooling proxy,
never at a transaction-pooling PgBouncer (it would hand the lock to another client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog

from eventstore.errors import Unavailable
from eventstore.postgres import guarded
from eventstore.tasks import stop_task

log = structlog.get_logger("convoy.sessionlock")


@dataclass(frozen=True, slots=True)
class LockSettings:
    poll: float = 0.5
    """How often a standby tries to take the lock (the takeover delay after a holder's death)."""
    check_every: float = 1.0
    """How often the holder checks that its lock session still answers."""
    check_timeout: float = 5.0
    """A check slower than this counts as a lost session."""


class LockLost(Unavailable):
    """This process no longer holds the leader lock (its session ended): stop leading;
    retry by standing by for the lock again."""


class SessionLock:
    """`async with lock.hold(on_waiting=…) as lost:` — blocks until this process holds the
    lock named by `key`; `lost` is set when the lock's session is gone."""

    def __init__(self, *, dsn: str, key: int, name: str, settings: LockSettings | None = None) -> None:
        self._dsn = dsn
        self._key = key
        self.name = name
        self.settings = settings or LockSettings()
        self.session_pid: int | None = None
        """The PostgreSQL backend holding (or waiting for) the lock: for operators and tests."""

    @asynccontextmanager
    async def hold(self, *, on_waiting: Callable[[], None] | None = None) -> AsyncIterator[asyncio.Event]:
        conn: asyncpg.Connection = await guarded(
            f"{self.name} lock connect", lambda: asyncpg.connect(self._dsn, timeout=10)
        )
        try:
            self.session_pid = conn.get_server_pid()
            told = False
            while not await guarded(
                f"{self.name} lock", lambda: conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
            ):
                if not told:
                    told = True
                    log.info("another process holds the lock; standing by", lock=self.name, session=self.session_pid)
                if on_waiting is not None:
                    on_waiting()
                await asyncio.sleep(self.settings.poll)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            watch = asyncio.create_task(self._watch(conn, lost), name=f"lock-watch:{self.name}")
            try:
                yield lost
            finally:
                await stop_task(watch)
        finally:
            await _close(conn)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while not lost.is_set():
            await asyncio.sleep(self.settings.check_every)
            try:
                async with asyncio.timeout(self.settings.check_timeout):
                    await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure means the session is not to be trusted
                log.warning("the lock's session is gone", lock=self.name, error=f"{type(error).__name__}: {error}")
                lost.set()


async def _close(conn: asyncpg.Connection) -> None:
    """Close the lock session politely, or at least drop it: either way the server ends
    the session and releases the lock."""
    try:
        async with asyncio.timeout(2):
            await conn.close()
    except Exception:  # noqa: BLE001 - the session is going away either way
        pass
    finally:
        if not conn.is_closed():
            conn.terminate()
