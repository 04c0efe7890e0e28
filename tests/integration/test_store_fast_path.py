"""The append fast path (one `append_batch` call planned against remembered state) when
what it remembers is wrong: another store wrote meanwhile. Each case must be decided on
the stored state exactly as the locked path would, and be counted as a miss."""

from __future__ import annotations

import pytest

from eventstore.errors import DuplicateEventId, WrongExpectedVersion
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import AlreadyProcessed, AppendRequest, Checkpoint, NewEvent, Receipt, ReceiptTaken


def ev(text: str) -> NewEvent:
    return NewEvent(type="convoy.v1.Test", data=text.encode())


async def _second(store: PostgresEventStore) -> PostgresEventStore:
    return await PostgresEventStore.open(PostgresSettings(dsn=store.settings.dsn, schema=store.schema))


async def test_a_stream_another_store_moved_is_decided_on_its_stored_version(pg_store: PostgresEventStore) -> None:
    other = await _second(pg_store)
    try:
        await pg_store.append("app/a", [ev("1")])  # pg_store remembers version 1
        await other.append("app/a", [ev("2")], expected_version=1)
        misses = pg_store.fast_path_misses
        with pytest.raises(WrongExpectedVersion):
            await pg_store.append("app/a", [ev("stale")], expected_version=1)
        assert pg_store.fast_path_misses == misses + 1
        result = await pg_store.append("app/a", [ev("3")], expected_version=2)  # learnt on the miss
        assert result.positions == (3,) and result.first_version == 3
        assert pg_store.fast_path_misses == misses + 1
        assert [e.version for e in await pg_store.read_stream("app/a")] == [1, 2, 3]
    finally:
        await other.close()


async def test_positions_stay_gapless_when_another_store_appended(pg_store: PostgresEventStore) -> None:
    other = await _second(pg_store)
    try:
        await pg_store.append("app/a", [ev("1")])
        await other.append("app/b", [ev("2"), ev("3")])
        result = await pg_store.append("app/c", [ev("4")])  # assumptions hold; the head moved
        assert result.positions == (4,)
        assert [e.position for e in await pg_store.read_all()] == [1, 2, 3, 4]
    finally:
        await other.close()


async def test_a_retry_of_a_write_another_store_made_returns_the_original(pg_store: PostgresEventStore) -> None:
    other = await _second(pg_store)
    try:
        events = [ev("once"), ev("twice")]
        original = await other.append("app/a", events)
        retry = await pg_store.append("app/a", events)
        assert retry.duplicate and retry.positions == original.positions
        with pytest.raises(DuplicateEventId):
            await pg_store.append("app/b", events)
        assert await pg_store.head() == 2
    finally:
        await other.close()


async def test_checkpoints_and_receipts_another_store_wrote_are_seen(pg_store: PostgresEventStore) -> None:
    other = await _second(pg_store)
    try:
        await pg_store.commit([AppendRequest("out/a", [ev("1")])], checkpoint=Checkpoint("proc", 5))
        await other.commit([AppendRequest("out/a", [ev("2")])], checkpoint=Checkpoint("proc", 9))
        with pytest.raises(AlreadyProcessed):
            await pg_store.commit([AppendRequest("out/a", [ev("3")])], checkpoint=Checkpoint("proc", 7))
        receipt = Receipt("token", "key-1", "Relabel", b"h" * 32, b"answer")
        first = await other.commit([AppendRequest("app/r", [ev("r")])], receipt=receipt)
        with pytest.raises(ReceiptTaken) as taken:
            await pg_store.commit([AppendRequest("app/r", [ev("r2")])], receipt=receipt)
        assert taken.value.stored.position == first[0].last_position
        assert await pg_store.checkpoint("proc") == 9
    finally:
        await other.close()


async def test_receipts_record_the_real_position(pg_store: PostgresEventStore) -> None:
    other = await _second(pg_store)
    try:
        await other.append("app/x", [ev("a"), ev("b")])
        receipt = Receipt("token", "key-2", "Relabel", b"h" * 32, b"answer")
        (result,) = await pg_store.commit([AppendRequest("app/r", [ev("r")])], receipt=receipt)
        assert result.positions == (3,)
        head, found = await pg_store.receipts([receipt.slot])
        assert head == 3 and found[receipt.slot].position == 3
    finally:
        await other.close()
