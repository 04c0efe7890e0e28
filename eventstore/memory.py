"""The event store in memory: same Protocol, same rules, no server.

Used by pure and fast tests and by dry-run plans that fold hypothetical events onto a
copy of the log. Writes go through the same `grouping.plan_batch` as PostgreSQL's, and
the same contract suite (tests/contract/) runs against both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

from eventstore import grouping
from eventstore.errors import Unavailable
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


class MemoryEventStore:
    """`EventStore` held in a list. `clock` stamps `recorded_at` (inject one in tests)."""

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._events: list[RecordedEvent] = []
        self._known: dict[uuid.UUID, grouping.Known] = {}
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._tracking: dict[str, int] = {}
        self._receipts: dict[tuple[str, str], Receipt] = {}
        self._changed = asyncio.Condition()
        self._closed = False

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
        streams, ids, names = grouping.referenced([write])
        known = {i: self._known[i] for i in ids if i in self._known}
        plan = grouping.plan_batch(
            [write],
            head=len(self._events),
            versions={s: len(self._streams.get(s, ())) for s in streams},
            known=known,
            checkpoints={n: self._tracking.get(n, 0) for n in names},
            receipts={s: self._receipts[s] for s in grouping.receipt_slots([write]) if s in self._receipts},
        )
        (outcome,) = plan.outcomes
        if outcome.error is not None:
            raise outcome.error
        now = self._clock()
        for row in plan.rows:
            recorded = RecordedEvent(
                position=row.position,
                stream_id=row.stream_id,
                version=row.version,
                event_id=row.event.event_id,
                type=row.event.type,
                schema_version=row.event.schema_version,
                data=bytes(row.event.data),
                actor=row.event.actor,
                causation_id=row.event.causation_id,
                correlation_id=row.event.correlation_id,
                recorded_at=now,
            )
            self._events.append(recorded)
            self._known[recorded.event_id] = grouping.Known.of(row.position, row.stream_id, row.version, row.event)
            self._streams.setdefault(recorded.stream_id, []).append(recorded)
        self._tracking.update(plan.checkpoints)
        self._receipts.update((r.slot, r) for r in plan.receipts)
        if plan.rows:
            async with self._changed:
                self._changed.notify_all()
        assert outcome.results is not None
        return outcome.results

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
        return [
            e
            for e in self._streams.get(stream_id, ())
            if e.version >= from_version
            and (to_version is None or e.version <= to_version)
            and (as_of_position is None or e.position <= as_of_position)
            and (as_of_time is None or e.recorded_at <= as_of_time)
        ]

    async def stream_version(self, stream_id: str) -> int:
        validate_stream_id(stream_id)
        return len(self._streams.get(stream_id, ()))

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        wanted = set(categories) if categories is not None else None
        out: list[RecordedEvent] = []
        end = len(self._events) if to_position is None else min(to_position, len(self._events))
        for event in self._events[max(after, 0) : end]:
            if wanted is None or event.category in wanted:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    async def head(self) -> int:
        return len(self._events)

    async def position_at(self, when: datetime) -> int:
        position = 0
        for event in self._events:
            if event.recorded_at > when:
                break
            position = event.position
        return position

    async def checkpoint(self, name: str) -> int:
        return self._tracking.get(name, 0)

    async def receipts(self, slots: Sequence[tuple[str, str]]) -> tuple[int, dict[tuple[str, str], Receipt]]:
        return len(self._events), {s: self._receipts[s] for s in slots if s in self._receipts}

    async def tail(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[RecordedEvent]:
        position = after
        while True:
            batch = await self.read_all(after=position, limit=batch_size, categories=categories)
            for event in batch:
                position = event.position
                yield event
            if len(batch) < batch_size:
                # The read scanned up to the head (it never yields), so wait past it.
                position = len(self._events)
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self._events) > position)

    async def close(self) -> None:
        self._closed = True
