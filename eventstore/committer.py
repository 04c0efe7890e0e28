"""Group commit with a short pipeline.

Every write queued while a transaction is in flight joins the next batch, so many
commands share one lock acquisition and one fsync. With one batch at a time, the client
and the database take turns idling (the client resolves results while the server waits,
then the reverse); so up to `depth` batches are in flight, and each takes the store's
append lock only after the batch before it holds it. The database grants the lock in
that order, so batches commit in the order they were formed, and writes issued in order
by one process are decided in that order.

A batch that fails for an unexpected reason is retried write by write, so one poison
write fails alone. The retries keep the batch's place: the next batch asks for the lock
only once they are done, so order holds — except when the batch failed after it held the
lock (the next one was already let go then); writers that need their writes in order
await each before issuing the next (the planner and the observation ingest do), and an
unavailable store fails the whole batch, which its writers retry. Storage specifics live
in the `run_batch` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from eventstore import grouping
from eventstore.errors import Unavailable
from eventstore.types import AppendResult

log = structlog.get_logger("convoy.eventstore")


class Turn:
    """A batch's place in the lock queue: wait for the previous batch to hold the lock
    before asking for it, and announce once this batch holds it."""

    def __init__(self, previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._previous = previous
        self._mine = mine

    async def wait_previous(self) -> None:
        if self._previous is not None:
            await asyncio.shield(self._previous)

    def locked(self) -> None:
        if not self._mine.done():
            self._mine.set_result(None)


RunBatch = Callable[[Sequence[grouping.Write], Turn], Awaitable[grouping.BatchPlan]]
_Item = tuple[grouping.Write, "asyncio.Future[list[AppendResult]]"]


class GroupCommitter:
    def __init__(self, *, name: str, run_batch: RunBatch, depth: int = 2, max_batch_events: int = 5000) -> None:
        self._name = name
        self._run_batch = run_batch
        self._max_batch_events = max_batch_events
        self._slots = asyncio.Semaphore(depth)
        self._queue: list[_Item] = []
        self._scheduler: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._last_locked: asyncio.Future[None] | None = None
        self.batches = 0
        self.writes = 0

    async def submit(self, write: grouping.Write) -> list[AppendResult]:
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._queue.append((write, future))
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.create_task(self._schedule(), name=f"group-commit:{self._name}")
        return await future

    async def _schedule(self) -> None:
        while self._queue:
            await self._slots.acquire()
            if not self._queue:
                self._slots.release()
                break
            batch: list[_Item] = []
            events = 0
            while self._queue and (not batch or events < self._max_batch_events):
                item = self._queue.pop(0)
                batch.append(item)
                events += sum(len(a.events) for a in item[0].appends)
            mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            turn = Turn(self._last_locked, mine)
            self._last_locked = mine
            task = asyncio.create_task(self._commit(batch, turn, mine), name=f"group-commit-batch:{self._name}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _commit(self, batch: list[_Item], turn: Turn, mine: asyncio.Future[None]) -> None:
        try:
            await self._commit_items(batch, turn)
        finally:
            turn.locked()  # never leave the next batch waiting
            self._slots.release()

    async def _commit_items(self, batch: list[_Item], turn: Turn) -> None:
        writes = [w for w, _ in batch]
        try:
            plan = await self._run_batch(writes, turn)
        except Exception as error:  # noqa: BLE001 - decided below: retry alone or fail
            if len(batch) > 1 and not isinstance(error, Unavailable):
                # Still this batch's turn (unless it already held the lock when it
                # failed): the next batch waits until these retries are done.
                for item in batch:
                    await self._commit_items([item], Turn(None, asyncio.get_running_loop().create_future()))
                return
            turn.locked()
            if not isinstance(error, Unavailable):
                log.error("append failed", error=repr(error))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches += 1
        self.writes += len(batch)
        for (_, future), outcome in zip(batch, plan.outcomes, strict=True):
            if future.done():
                continue
            if outcome.error is not None:
                future.set_exception(outcome.error)
            else:
                assert outcome.results is not None
                future.set_result(outcome.results)

    async def close(self) -> None:
        """Finish what is queued and in flight."""
        if self._scheduler is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
