"""The outbox relay: PostgreSQL's events table, published to JetStream in position order.

The events table is the outbox (DESIGN.md: a command commits even when NATS is down), so
the relay's job is to copy it to the bus exactly once per event id, in order, and to catch
up after any outage. How:

- One relay per Convoy instance publishes at a time: it holds a session-level
  `pg_try_advisory_lock` on a dedicated connection. Others poll for the lock; when the
  holder dies, its session ends, the lock is released and a standby takes over.
- The checkpoint (last position known to be in the stream) lives in PostgreSQL and is
  written on that same session, so a relay that lost its lock cannot move it.
- Events go out in windows through `OrderedPublisher` (awaited acks, chained
  `Nats-Expected-Last-Msg-Id`, so the stream only ever holds a gapless prefix of the log);
  the checkpoint advances over the contiguous acked prefix, and after a failure the relay
  backs off, waits for NATS, and resumes from the checkpoint. The next window is read
  and rendered while the current one is on the wire.
- Before publishing (at takeover and after every failure) the relay reads the stream's
  last message and sets its checkpoint to that message's position: a window that was
  stored but never checkpointed (a crash, a lost ack) is not published twice, however long
  ago, without relying on JetStream's duplicate window; and a stream that lost its tail
  (recreated, or an unreplicated server that crashed before writing) gets it again. This
  assumes the relay is the only publisher on `convoy.<instance>.evt.>` — grant no one
  else that permission.
- It sleeps on the store's NOTIFY (LISTEN on the lock session), polling every `idle_poll`
  seconds in case a notification is lost.
- It says how it is doing (`health()`, for /readyz and /metrics): leader or standby, how
  many events it knows are not on the bus yet, when it last stored a window, and since
  when its attempts fail and with what error. A leader whose publishing fails is not
  ready, though it is still "leading".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from nats.aio.client import Client

from eventstore import bus
from eventstore.errors import BusRejected, ConvoyError, Unavailable
from eventstore.postgres import PostgresEventStore, guarded
from eventstore.publisher import OrderedPublisher, Outgoing
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import RecordedEvent

log = structlog.get_logger("convoy.relay")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    instance: str
    """The Convoy instance on the bus: subjects, stream names, lock and checkpoint name."""
    window: int = 1000
    """Events per publish window (and per read from PostgreSQL)."""
    ack_every: int = 100
    """Ask JetStream to acknowledge every n-th message (and each window's last): an ack
    for message i proves 0..i are stored (see eventstore.publisher)."""
    ack_timeout: float = 5.0
    lock_poll: float = 1.0
    """How often a standby relay tries to take the lock."""
    idle_poll: float = 1.0
    """Longest sleep without a NOTIFY before looking for new events anyway."""
    max_backoff: float = 2.0
    replicas: int = 1
    duplicate_window: float = bus.DEFAULT_DUPLICATE_WINDOW
    retention: bus.EventsRetention = field(default_factory=bus.EventsRetention)
    """The events stream's limits, applied each time the relay makes sure the streams exist
    (so give every process the same: CONVOY_EVENTS_MAX_*)."""


@dataclass(frozen=True, slots=True)
class RelayStats:
    leader: bool
    published: int
    duplicates: int
    checkpoint: int
    head: int
    failures: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.checkpoint)


@dataclass(frozen=True, slots=True)
class RelayHealth:
    """How the relay is doing (wall-clock times, for people and probes)."""

    running: bool
    leader: bool
    backlog: int
    """Events committed and not yet known to be on the bus, as the leader knows them
    (head − checkpoint; 0 on a standby, which does not follow the log)."""
    last_published_at: float | None
    """When it last stored a window on the bus (None: not since it started)."""
    failing_since: float | None
    """Since when its attempts (to reach the store, to lead, to publish) fail; None while
    they work."""
    last_error: str | None
    progress_at: float
    """When it last had nothing left to publish, or stored a window."""


class Relay:
    """Publishes the store's events to the instance's events stream. `await start()`,
    `await stop()`; counters: `published`, `duplicates`, `checkpoint`, `head`, `lag`."""

    def __init__(self, *, store: PostgresEventStore, nc: Client, settings: RelaySettings) -> None:
        bus.validate_instance(settings.instance)
        self._store = store
        self._nc = nc
        self.settings = settings
        self.name = f"convoy-relay:{settings.instance}"
        self._lock_key = store.lock_key(f"relay:{settings.instance}")  # from the schema's secret
        self._table = f"{store.schema}.relay_checkpoints"
        self._stream = bus.events_stream(settings.instance)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.leader = False
        self.published = 0
        self.duplicates = 0
        self.checkpoint = 0
        self.head = 0
        self.failures = 0
        self.session_pid: int | None = None
        """The PostgreSQL backend holding (or waiting for) the lock: for operators and tests."""
        self.last_published_at: float | None = None
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.progress_at = time.time()

    @property
    def lag(self) -> int:
        return max(0, self.head - self.checkpoint)

    async def measure_lag(self) -> int:
        """Events committed but not yet known to be on the bus, from PostgreSQL itself
        (works on a standby too, unlike the `lag` counter of the leader)."""
        head = await self._store.head()
        checkpoint = await guarded(
            "relay checkpoint",
            lambda: self._store.pool.fetchval(
                f"SELECT coalesce(max(position), 0) FROM {self._table} WHERE name = $1", self.settings.instance
            ),
        )
        return max(0, head - int(checkpoint))

    def stats(self) -> RelayStats:
        return RelayStats(self.leader, self.published, self.duplicates, self.checkpoint, self.head, self.failures)

    def health(self) -> RelayHealth:
        return RelayHealth(
            running=self.running,
            leader=self.leader,
            backlog=self.lag if self.leader else 0,
            last_published_at=self.last_published_at,
            failing_since=self.failing_since,
            last_error=self.last_error,
            progress_at=self.progress_at,
        )

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = time.time()

    def _worked(self, *, published: bool) -> None:
        now = time.time()
        self.failing_since = None
        self.progress_at = now
        if published:
            self.last_published_at = now

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- supervision: connect, wait for the lock, lead; on any failure start over ------

    async def _supervise(self) -> None:
        backoff = Backoff(base=0.05, cap=self.settings.max_backoff)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await guarded("relay connect", lambda: asyncpg.connect(self._store.settings.dsn, timeout=10))
                assert conn is not None
                self.session_pid = conn.get_server_pid()
                await self._acquire(conn)
                backoff.reset()
                await self._lead(conn)
            except ConvoyError as error:
                self._failed(str(error))
                log.warning("relay lost its session or the store; starting over", relay=self.name, error=str(error))
            except Exception as error:  # noqa: BLE001 - supervised: log, back off, start over
                self._failed(f"{type(error).__name__}: {error}")
                log.error("relay failed; starting over", relay=self.name, error=describe(error))
            finally:
                if self.leader:
                    log.info("relay stands down", relay=self.name, checkpoint=self.checkpoint)
                self.leader = False
                if conn is not None:
                    await _close(conn)
            await asyncio.sleep(backoff.next())

    async def _acquire(self, conn: asyncpg.Connection) -> None:
        while not await guarded("relay lock", lambda: conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key)):
            self._worked(published=False)  # a standby that reaches the store has nothing else to do
            await asyncio.sleep(self.settings.lock_poll)
        self.leader = True
        log.info("relay leads", relay=self.name, session=self.session_pid)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        conn.add_termination_listener(lambda _conn: self._wake.set())
        await guarded("relay listen", lambda: conn.add_listener(self._store.channel, self._on_notify))
        self.checkpoint = await guarded(
            "relay checkpoint",
            lambda: conn.fetchval(
                f"SELECT coalesce(max(position), 0) FROM {self._table} WHERE name = $1", self.settings.instance
            ),
        )
        publisher = OrderedPublisher(
            self._nc, stream=self._stream, ack_timeout=self.settings.ack_timeout, ack_every=self.settings.ack_every
        )
        backoff = Backoff(base=0.05, cap=self.settings.max_backoff)
        bus_ready = False
        prefetch: asyncio.Task[tuple[list[RecordedEvent], list[Outgoing]]] | None = None
        try:
            while True:
                if conn.is_closed():
                    raise Unavailable("the relay's PostgreSQL session ended, and with it the lock")
                if not bus_ready:
                    try:
                        publisher.last_sequence = await self._reconcile(conn)
                        bus_ready = True
                    except ConvoyError as error:
                        self._failed(str(error))
                        log.warning("relay waits for the bus", relay=self.name, error=str(error))
                        await self._pause(backoff.next())
                        continue
                self._wake.clear()
                if prefetch is None:
                    prefetch = asyncio.create_task(self._next_window(self.checkpoint), name=f"{self.name}:read")
                events, outgoing = await prefetch
                prefetch = None
                if not events:
                    self._worked(published=False)
                    await self._idle(conn)
                    continue
                self.head = max(self.head, events[-1].position)
                if len(events) == self.settings.window:
                    # Read and render the next window while this one is on the wire.
                    prefetch = asyncio.create_task(self._next_window(events[-1].position), name=f"{self.name}:read")
                result = await publisher.publish_window(outgoing)
                if result.acked < len(events) and prefetch is not None:
                    await stop_task(prefetch)
                    prefetch = None
                if result.acked:
                    self.published += result.stored
                    self.duplicates += result.duplicates
                    await self._advance(conn, events[result.acked - 1].position)
                if result.error is not None:
                    self._failed(str(result.error))
                    bus_ready = False
                    log.warning(
                        "relay publish failed; retrying from the checkpoint",
                        relay=self.name,
                        checkpoint=self.checkpoint,
                        error=str(result.error),
                    )
                    await self._pause(backoff.next())
                else:
                    self._worked(published=True)
                    backoff.reset()
        finally:
            await stop_task(prefetch)
            await publisher.close()

    # -- steps -----------------------------------------------------------------------

    async def _next_window(self, after: int) -> tuple[list[RecordedEvent], list[Outgoing]]:
        events = await self._store.read_all(after=after, limit=self.settings.window)
        instance = self.settings.instance
        return events, [
            Outgoing(
                subject=bus.event_subject(instance, e.stream_id),
                msg_id=str(e.event_id),
                payload=e.data,
                header_block=bus.event_header_block(e),
            )
            for e in events
        ]

    async def _advance(self, conn: asyncpg.Connection, position: int, *, rewind: bool = False) -> None:
        """Move the checkpoint forward (or, with `rewind`, to exactly `position`)."""
        update = "excluded.position" if rewind else f"greatest({self._table}.position, excluded.position)"
        await guarded(
            "relay checkpoint",
            lambda: conn.execute(
                f"INSERT INTO {self._table} (name, position) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE "
                f"SET position = {update}, updated_at = clock_timestamp()",
                self.settings.instance,
                position,
            ),
        )
        self.checkpoint = position if rewind else max(self.checkpoint, position)

    async def _reconcile(self, conn: asyncpg.Connection) -> int:
        """Make sure the streams exist, and make the checkpoint match what the events
        stream holds: skip what is already there (stored, never checkpointed), publish
        again what it lost (a recreated stream, or a tail lost in a crash of an
        unreplicated server). A purged stream, whose last message is gone, tells nothing:
        the checkpoint stays. Returns the stream's last sequence."""
        if not self._nc.is_connected:
            raise Unavailable("NATS is not connected")
        js = self._nc.jetstream()
        await bus.ensure_streams(
            js, self.settings.instance, replicas=self.settings.replicas, duplicate_window=self.settings.duplicate_window,
            retention=self.settings.retention,
        )
        info = await bus.guarded("reading the events stream", lambda: js.stream_info(self._stream))
        last = info.state.last_seq
        position: int | None = 0
        if last:
            try:
                message = await bus.guarded("reading the stream's last event", lambda: js.get_msg(self._stream, seq=last))
                position = int((message.headers or {})[bus.H_POSITION])
            except (BusRejected, KeyError, ValueError) as error:
                log.warning("cannot tell where the events stream ends; keeping the checkpoint", relay=self.name,
                            error=f"{type(error).__name__}: {error}")
                position = None
        if position is None or position == self.checkpoint:
            return last
        if position > self.checkpoint:
            log.info("relay skips events already on the bus", relay=self.name, checkpoint=self.checkpoint, to=position)
        else:
            log.warning("events stream ends before the relay checkpoint; publishing the rest again",
                        relay=self.name, stream_position=position, checkpoint=self.checkpoint)
        await self._advance(conn, position, rewind=position < self.checkpoint)
        return last

    async def _idle(self, conn: asyncpg.Connection) -> None:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that races with the event, and then stop() would hang.
            async with asyncio.timeout(self.settings.idle_poll):
                await self._wake.wait()
        except TimeoutError:
            head = await guarded(
                "relay poll", lambda: conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {self._store.schema}.events")
            )
            self.head = max(self.head, int(head))

    async def _pause(self, delay: float) -> None:
        """Back off; while NATS is disconnected, wait for it to come back first."""
        while not self._nc.is_connected and not self._nc.is_closed:
            await asyncio.sleep(0.05)
        await asyncio.sleep(delay)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.head = max(self.head, int(payload))
        self._wake.set()


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
