"""Active readiness probes: ask the bus and the store whether they answer, on a schedule.

Why not `nc.is_connected`, or a query per /readyz request: nats-py keeps a connection to a
frozen server (SIGSTOP, a hung VM, a half-open TCP connection) "connected" until its own
pings time out (eventstore.bus.PING_INTERVAL), and a probe that queries on every request
piles requests up against a server that does not answer (every kubelet and load balancer
asks). So each `Probe` asks its question every `interval` seconds from one named task,
bounded by `timeout`; /readyz reads the last answer, which says since when it holds, and
an answer older than a few intervals counts as a failure (the task is stuck or gone).

The two questions:

- the bus: a JetStream API request (account info), which a live server answers in about a
  millisecond — the relay, ingest and every consumer need JetStream, not just a socket.
  Not `flush()`/`rtt()`: in nats-py 2.16 their timeout cancels the PONG's future, and when
  that PONG arrives after all (the server was slow, or stopped and continued) the client's
  read loop dies on `InvalidStateError` while the connection still says "connected" — and
  `flush()` then returns at once without asking the server anything. A late reply to a
  timed-out request is dropped harmlessly.
- the store: the head position of the instance's events, on a connection of its own (the
  pool's connections are for commands): after a timeout or an error that connection is
  terminated — no cancel request to a server that does not answer — and the next round
  opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog
from nats.aio.client import Client

from eventstore import bus, postgres
from eventstore.errors import ConvoyError, Unavailable
from eventstore.metrics import Check
from eventstore.tasks import describe, stop_task

log = structlog.get_logger("convoy.probes")

Question = Callable[[], Awaitable[str]]
"""Answers a detail ("head at position 12") when all is well; raises when not."""


def clock_text(at: float) -> str:
    """A wall-clock time for probe bodies and logs: 2026-01-02T03:04:05Z."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    detail: str
    since: float
    """Wall-clock time since which the answers have been `ok` (or not)."""
    at: float
    """Monotonic time of this answer."""
    duration: float
    """Seconds the question took."""


class Probe:
    """Asks `question` every `interval` seconds, each time for at most `timeout`
    seconds, from one task; `check()` is its readiness check. `await start()` returns
    after the first answer. `close` is awaited on stop (the question's connection)."""

    def __init__(
        self,
        name: str,
        question: Question,
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
        close: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._question = question
        self.interval = interval
        self.timeout = timeout
        self._close = close
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()
        self.answer = Answer(ok=False, detail="not asked yet", since=clock(), at=time.monotonic(), duration=0.0)
        self.answers = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.create_task(self._run(), name=f"probe:{self.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout + 1.0):
                await self._answered.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        if self._close is not None:
            await self._close()

    async def __aenter__(self) -> Probe:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ask(self) -> Answer:
        """Ask once now (the task does this every `interval`)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                ok, detail = True, await self._question()
        except TimeoutError:
            ok, detail = False, f"no answer within {self.timeout:g}s"
        except ConvoyError as error:
            ok, detail = False, str(error)
        except Exception as error:  # noqa: BLE001 - any failure of the question is the answer
            ok, detail = False, f"{type(error).__name__}: {error}"
        now = time.monotonic()
        previous = self.answer
        since = previous.since if previous.ok == ok and self.answers else self._clock()
        if self.answers and previous.ok != ok:
            (log.info if ok else log.warning)(
                f"{self.name} answers again" if ok else f"{self.name} does not answer", probe=self.name, detail=detail
            )
        self.answer = Answer(ok=ok, detail=detail, since=since, at=now, duration=now - started)
        self.answers += 1
        self._answered.set()
        return self.answer

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.ask()
            except Exception as error:  # noqa: BLE001 - supervised: the next round asks again
                log.error("probe failed", probe=self.name, error=describe(error))
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def stale(self) -> bool:
        """The last answer is too old to tell anything (the task is stuck or stopped)."""
        return time.monotonic() - self.answer.at > 2 * self.interval + self.timeout + 1.0

    def state(self) -> tuple[bool, str, float]:
        """(ok, detail, since) as /readyz reports it."""
        answer = self.answer
        if self.stale():
            age = time.monotonic() - answer.at
            return False, f"no probe answer for {age:.0f}s (last: {answer.detail})", answer.since
        if answer.ok:
            return True, answer.detail, answer.since
        return False, f"{answer.detail} (since {clock_text(answer.since)})", answer.since

    def check(self) -> Check:
        return Check(self.name, self.state)


# -- the questions ---------------------------------------------------------------------


def bus_question(nc: Client, *, timeout: float = 1.0) -> Question:
    """Does the NATS server (and its JetStream) answer this connection?"""
    js = nc.jetstream(timeout=timeout)

    async def ask() -> str:
        if nc.is_closed:
            raise Unavailable("the NATS connection is closed")
        if not nc.is_connected:
            raise Unavailable("not connected (reconnecting)" if nc.is_reconnecting else "not connected")
        started = time.monotonic()
        try:
            await bus.guarded("the readiness probe", js.account_info)
        except Unavailable as error:
            if isinstance(error.__cause__, asyncio.TimeoutError):
                raise Unavailable(f"connected, but the server did not answer within {timeout:g}s") from error
            raise
        url = nc.connected_url
        where = f" to {url.hostname}:{url.port}" if url is not None else ""
        return f"connected{where}; JetStream answered in {1000 * (time.monotonic() - started):.1f} ms"

    return ask


class StoreQuestion:
    """Does PostgreSQL answer, with the instance's events table? On a connection of its
    own, terminated after any failure."""

    def __init__(self, *, dsn: str, schema: str, timeout: float = 1.0) -> None:
        self._dsn = dsn
        self._sql = f"SELECT coalesce(max(position), 0) FROM {schema}.events"
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __call__(self) -> str:
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                self._conn = conn = await postgres.guarded(
                    "the readiness probe's connection",
                    lambda: asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=self._timeout),
                )
            assert conn is not None
            head = await postgres.guarded("the readiness probe", lambda: conn.fetchval(self._sql, timeout=self._timeout))
        except BaseException as error:
            self._drop()
            if isinstance(error, Unavailable) and isinstance(error.__cause__, asyncio.TimeoutError):
                raise Unavailable(f"PostgreSQL did not answer within {self._timeout:g}s") from error
            raise
        return f"head at position {head}"

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                async with asyncio.timeout(2):
                    await conn.close()
            except Exception:  # noqa: BLE001 - going away either way
                conn.terminate()


def bus_probe(nc: Client, *, interval: float = 1.0, timeout: float = 1.0) -> Probe:
    return Probe("nats", bus_question(nc, timeout=timeout), interval=interval, timeout=timeout + 0.5)


def store_probe(store: postgres.PostgresEventStore, *, interval: float = 1.0, timeout: float = 1.0) -> Probe:
    question = StoreQuestion(dsn=store.settings.dsn, schema=store.schema, timeout=timeout)
    return Probe("store", question, interval=interval, timeout=timeout * 2 + 0.5, close=question.close)
