"""A tailing reader never skips a late commit and never stalls on an aborted one.

Several independent writers (separate store objects = separate committers and pools, as
separate processes would be) append concurrently while a fault hook delays commits at
random and aborts some of them. Writers retry failed appends with the same event ids.
A reader tails the log from 0 the whole time. At the end, the set of event ids the reader
saw must equal the set the writers stored — no event skipped, none seen twice — and the
positions it saw must be exactly 1..N.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from eventstore.errors import ConvoyError
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import NewEvent
from tests.conftest import fresh_store

pytestmark = pytest.mark.fault  # `make stress` runs these again and again

TOTAL_EVENTS = 20_000
WRITER_STORES = 4
TASKS_PER_STORE = 8


class InjectedAbort(Exception):
    pass


async def test_tailing_reader_sees_every_event_once_despite_late_and_aborted_commits(database_url: str) -> None:
    rng = random.Random(20261126)

    async def chaos(phase: str) -> None:
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0, 0.003))
        if phase == "committing" and rng.random() < 0.03:
            raise InjectedAbort("injected abort before commit")

    async with fresh_store(database_url) as reader_store:
        settings = PostgresSettings(dsn=database_url, schema=reader_store.schema, pool_max=4)
        writers = [await PostgresEventStore.open(settings, fault_hook=chaos) for _ in range(WRITER_STORES)]
        planned: list[list[NewEvent]] = []
        remaining = TOTAL_EVENTS
        while remaining:
            n = min(remaining, rng.randint(1, 3))
            planned.append([NewEvent(type="convoy.v1.Test", data=rng.randbytes(16)) for _ in range(n)])
            remaining -= n
        queue: asyncio.Queue[list[NewEvent]] = asyncio.Queue()
        for events in planned:
            queue.put_nowait(events)
        aborted = 0

        async def writer(store: PostgresEventStore, index: int) -> None:
            nonlocal aborted
            while not queue.empty():
                events = queue.get_nowait()
                stream = f"app/s{rng.randint(0, 200)}"
                while True:
                    try:
                        await store.append(stream, events)
                        break
                    except (InjectedAbort, ConvoyError):
                        aborted += 1  # retry with the same ids: idempotent

        seen: list[tuple[int, uuid.UUID]] = []

        async def tail() -> None:
            async for event in reader_store.tail(after=0, batch_size=500):
                seen.append((event.position, event.event_id))
                if len(seen) >= TOTAL_EVENTS:
                    return

        reader = asyncio.create_task(tail())
        try:
            await asyncio.gather(
                *(writer(store, i) for store in writers for i in range(TASKS_PER_STORE))
            )
            await asyncio.wait_for(reader, 60)
        finally:
            reader.cancel()
            for store in writers:
                await store.close()

        written = {e.event_id for events in planned for e in events}
        seen_ids = [event_id for _, event_id in seen]
        assert len(seen_ids) == len(set(seen_ids)), "an event was delivered twice"
        assert set(seen_ids) == written, "the reader skipped events"
        assert [p for p, _ in seen] == list(range(1, TOTAL_EVENTS + 1)), "positions are not gapless and ordered"
        assert aborted > 0, "the fault hook never aborted a commit; the test proved nothing"
        assert await reader_store.head() == TOTAL_EVENTS
