"""One contract suite, every EventStore implementation.

The same assertions run against the in-memory store and PostgreSQL (and an external
PostgreSQL when CONVOY_TEST_DATABASE_URL is set), so the in-memory store used by pure
tests and dry runs cannot drift from the system of record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from eventstore.errors import DuplicateEventId, InvalidInput, WrongExpectedVersion
from eventstore.memory import MemoryEventStore
from tests.conftest import DATABASES, fresh_store, resolve_database_url
from eventstore.types import (
    MAX_EVENT_BYTES,
    AlreadyProcessed,
    AppendRequest,
    Checkpoint,
    EventStore,
    ExpectedVersion,
    NewEvent,
    Receipt,
    ReceiptTaken,
)


@pytest.fixture(params=["memory", *DATABASES])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        memory = MemoryEventStore()
        yield memory
        await memory.close()
    else:
        async with fresh_store(resolve_database_url(request, request.param)) as pg:
            yield pg


def ev(text: str = "x", **kwargs: object) -> NewEvent:
    return NewEvent(type="convoy.v1.RuntimeLabelled", data=text.encode(), **kwargs)  # type: ignore[arg-type]


async def test_append_assigns_versions_and_global_positions(store: EventStore) -> None:
    a = await store.append("app/shop", [ev("1"), ev("2")], expected_version=ExpectedVersion.NO_STREAM)
    b = await store.append("runtime/eu-1", [ev("3")])
    c = await store.append("app/shop", [ev("4")], expected_version=2)
    assert (a.first_version, a.last_version) == (1, 2)
    assert c.first_version == c.last_version == 3
    assert list(a.positions) + list(b.positions) + list(c.positions) == [1, 2, 3, 4]
    assert await store.head() == 4
    assert await store.stream_version("app/shop") == 3
    assert await store.stream_version("app/none") == 0
    events = await store.read_stream("app/shop")
    assert [e.data for e in events] == [b"1", b"2", b"4"]
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.position for e in events] == [1, 2, 4]


async def test_envelope_is_recorded(store: EventStore) -> None:
    cause, corr = uuid.uuid4(), uuid.uuid4()
    event = NewEvent(
        type="convoy.v1.ApplicationCreated", data=b"\x01\x02", schema_version=2,
        actor="alice", causation_id=cause, correlation_id=corr,
    )
    before = datetime.now(UTC) - timedelta(seconds=5)
    await store.append("app/shop", [event])
    (recorded,) = await store.read_stream("app/shop")
    assert recorded.event_id == event.event_id
    assert recorded.type == "convoy.v1.ApplicationCreated"
    assert recorded.schema_version == 2
    assert recorded.data == b"\x01\x02"
    assert recorded.actor == "alice"
    assert recorded.causation_id == cause and recorded.correlation_id == corr
    assert recorded.recorded_at >= before
    assert recorded.category == "app"


async def test_wrong_expected_version_is_a_typed_conflict_and_writes_nothing(store: EventStore) -> None:
    await store.append("app/shop", [ev()])
    with pytest.raises(WrongExpectedVersion) as info:
        await store.append("app/shop", [ev(), ev()], expected_version=ExpectedVersion.NO_STREAM)
    assert info.value.actual == 1 and info.value.expected == 0
    with pytest.raises(WrongExpectedVersion):
        await store.append("app/shop", [ev()], expected_version=5)
    assert await store.head() == 1


async def test_racing_appends_at_one_version_exactly_one_wins(store: EventStore) -> None:
    await store.append("app/shop", [ev()])
    results = await asyncio.gather(
        *(store.append("app/shop", [ev(str(i))], expected_version=1) for i in range(20)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, WrongExpectedVersion)]
    assert len(wins) == 1 and len(conflicts) == 19
    assert await store.stream_version("app/shop") == 2


async def test_sequential_expected_versions_within_a_group_commit(store: EventStore) -> None:
    # Issued together, decided in order: each sees the writes queued before it.
    results = await asyncio.gather(*(store.append("app/shop", [ev(str(v))], expected_version=v) for v in range(10)))
    assert [r.last_version for r in results] == list(range(1, 11))


async def test_retry_with_same_ids_returns_original_positions_and_writes_nothing(store: EventStore) -> None:
    events = [ev("a"), ev("b")]
    first = await store.append("app/shop", events, expected_version=ExpectedVersion.NO_STREAM)
    await store.append("app/other", [ev("c")])
    again = await store.append("app/shop", events, expected_version=ExpectedVersion.NO_STREAM)
    assert again.positions == first.positions
    assert again.duplicate and not first.duplicate
    assert await store.head() == 3
    assert len(await store.read_stream("app/shop")) == 2


async def test_same_ids_with_different_content_are_rejected(store: EventStore) -> None:
    original = ev("a")
    await store.append("app/shop", [original])
    changed = NewEvent(type=original.type, data=b"different", event_id=original.event_id)
    with pytest.raises(DuplicateEventId):
        await store.append("app/shop", [changed])
    with pytest.raises(DuplicateEventId):
        await store.append("app/elsewhere", [original])
    with pytest.raises(DuplicateEventId):
        await store.append("app/shop", [original, ev("new")])
    assert await store.head() == 1


async def test_concurrent_retries_of_one_write_store_it_once(store: EventStore) -> None:
    events = [ev("a"), ev("b")]
    results = await asyncio.gather(*(store.append("app/shop", events) for _ in range(5)))
    assert len({r.positions for r in results}) == 1
    assert await store.head() == 2


async def test_multi_stream_commit_is_atomic(store: EventStore) -> None:
    await store.append("app/b", [ev()])
    with pytest.raises(WrongExpectedVersion):
        await store.commit([
            AppendRequest("app/a", [ev("a")], ExpectedVersion.NO_STREAM),
            AppendRequest("app/b", [ev("b")], ExpectedVersion.NO_STREAM),
        ])
    assert await store.head() == 1
    results = await store.commit([
        AppendRequest("app/a", [ev("a")], ExpectedVersion.NO_STREAM),
        AppendRequest("app/b", [ev("b")], 1),
    ])
    assert [r.positions for r in results] == [(2,), (3,)]


async def test_checkpoint_commits_with_output_and_duplicates_are_recognised(store: EventStore) -> None:
    assert await store.checkpoint("planner") == 0
    await store.commit([AppendRequest("intent/eu-1/shop", [ev("i1")])], checkpoint=Checkpoint("planner", 7))
    assert await store.checkpoint("planner") == 7
    with pytest.raises(AlreadyProcessed):
        await store.commit([AppendRequest("intent/eu-1/shop", [ev("i1-again")])], checkpoint=Checkpoint("planner", 7))
    with pytest.raises(AlreadyProcessed):
        await store.commit([], checkpoint=Checkpoint("planner", 3))
    assert await store.head() == 1
    await store.commit([], checkpoint=Checkpoint("planner", 9))
    assert await store.checkpoint("planner") == 9


def receipt(key: str, response: bytes = b"answer", scope: str = "tok-1") -> Receipt:
    return Receipt(scope, key, "/convoy.v1.S/M", b"\x01" * 32, response)


async def test_receipt_commits_with_the_events_and_a_second_one_is_refused(store: EventStore) -> None:
    assert await store.receipts([("tok-1", "k1")]) == (0, {})
    (result,) = await store.commit([AppendRequest("app/shop", [ev("1"), ev("2")])], receipt=receipt("k1"))
    head, stored = await store.receipts([("tok-1", "k1"), ("tok-1", "other"), ("tok-2", "k1")])
    assert head == 2 and await store.receipts([]) == (2, {})
    assert stored == {("tok-1", "k1"): Receipt("tok-1", "k1", "/convoy.v1.S/M", b"\x01" * 32, b"answer", 2)}
    assert result.last_position == 2
    # A second command under the same key writes nothing and learns the first answer.
    with pytest.raises(ReceiptTaken) as taken:
        await store.commit([AppendRequest("app/shop", [ev("3")])], receipt=receipt("k1", b"another"))
    assert taken.value.stored == stored[("tok-1", "k1")]
    assert await store.head() == 2
    # Keys are per scope; a receipt alone (a command that changed nothing) has position 0.
    assert await store.commit([], receipt=receipt("k1", b"unchanged", scope="tok-2")) == []
    assert (await store.receipts([("tok-2", "k1")]))[1][("tok-2", "k1")].position == 0
    assert await store.head() == 2


async def test_racing_receipts_for_one_key_exactly_one_commits(store: EventStore) -> None:
    results = await asyncio.gather(
        *(store.commit([AppendRequest(f"app/s{i}", [ev(str(i))])], receipt=receipt("race", str(i).encode()))
          for i in range(6)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 5 and all(isinstance(e, ReceiptTaken) for e in lost)
    (first,) = won
    stored = (await store.receipts([("tok-1", "race")]))[1][("tok-1", "race")]
    assert stored.position == first[0].last_position
    assert all(e.stored == stored for e in lost)  # type: ignore[union-attr]
    assert await store.head() == 1


async def test_a_write_refused_for_its_conflict_records_no_receipt(store: EventStore) -> None:
    await store.append("app/taken", [ev()])
    with pytest.raises(WrongExpectedVersion):
        await store.commit(
            [AppendRequest("app/taken", [ev()], ExpectedVersion.NO_STREAM)], receipt=receipt("k-conflict")
        )
    assert await store.receipts([("tok-1", "k-conflict")]) == (1, {})
    await store.commit([AppendRequest("app/taken", [ev()], 1)], receipt=receipt("k-conflict"))
    assert (await store.receipts([("tok-1", "k-conflict")]))[1][("tok-1", "k-conflict")].position == 2


async def test_malformed_receipts_are_rejected(store: EventStore) -> None:
    for bad in (Receipt("", "k", "m", b"", b""), Receipt("s", "k" * 201, "m", b"", b""),
                Receipt("s", "k", "m", b"", "text")):  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await store.commit([], receipt=bad)


async def test_a_failing_write_does_not_fail_the_writes_grouped_with_it(store: EventStore) -> None:
    await store.append("app/taken", [ev()])
    results = await asyncio.gather(
        store.append("app/ok-1", [ev()]),
        store.append("app/taken", [ev()], expected_version=ExpectedVersion.NO_STREAM),
        store.append("app/ok-2", [ev()]),
        return_exceptions=True,
    )
    assert isinstance(results[1], WrongExpectedVersion)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert await store.head() == 3


async def test_read_stream_ranges_and_time_travel(store: EventStore) -> None:
    await store.append("app/shop", [ev("1"), ev("2")])
    middle = await store.append("runtime/x", [ev("r")])
    await store.append("app/shop", [ev("3")])
    assert [e.data for e in await store.read_stream("app/shop", from_version=2)] == [b"2", b"3"]
    assert [e.data for e in await store.read_stream("app/shop", to_version=1)] == [b"1"]
    as_of = await store.read_stream("app/shop", as_of_position=middle.last_position)
    assert [e.data for e in as_of] == [b"1", b"2"]
    all_events = await store.read_all()
    cut = all_events[1].recorded_at
    at_time = await store.read_stream("app/shop", as_of_time=cut)
    assert [e.data for e in at_time][:2] == [b"1", b"2"]
    assert await store.position_at(cut) >= 2
    assert await store.position_at(datetime(2000, 1, 1, tzinfo=UTC)) == 0


async def test_read_all_in_order_with_filters(store: EventStore) -> None:
    for i in range(10):
        await store.append(f"{'app' if i % 2 else 'runtime'}/s{i}", [ev(str(i))])
    everything = await store.read_all()
    assert [e.position for e in everything] == list(range(1, 11))
    page = await store.read_all(after=3, limit=4)
    assert [e.position for e in page] == [4, 5, 6, 7]
    apps = await store.read_all(categories=["app"])
    assert [e.data for e in apps] == [b"1", b"3", b"5", b"7", b"9"]
    assert [e.position for e in await store.read_all(to_position=2)] == [1, 2]


async def test_tail_catches_up_then_follows(store: EventStore) -> None:
    await store.append("app/a", [ev("1"), ev("2")])
    seen: list[bytes] = []

    async def follow() -> None:
        async for event in store.tail(after=1):
            seen.append(event.data)
            if len(seen) == 3:
                return

    task = asyncio.create_task(follow())
    await store.append("runtime/b", [ev("3")])
    await store.append("app/a", [ev("4")])
    await asyncio.wait_for(task, 20)
    assert seen == [b"2", b"3", b"4"]


async def test_filtered_tail_skips_other_categories(store: EventStore) -> None:
    seen: list[bytes] = []

    async def follow() -> None:
        async for event in store.tail(categories=["intent"]):
            seen.append(event.data)
            if len(seen) == 2:
                return

    task = asyncio.create_task(follow())
    await store.append("app/a", [ev("no")])
    await store.append("intent/eu-1/a", [ev("yes-1")])
    await store.append("app/a", [ev("no")])
    await store.append("intent/eu-2/a", [ev("yes-2")])
    await asyncio.wait_for(task, 20)
    assert seen == [b"yes-1", b"yes-2"]


@pytest.mark.parametrize(
    "stream_id",
    ["", "App/x", "app x/y", "app.x/y", "app/", "/x", "app//x", "a*/b", "app/x y", "x" * 100, "app/" + "y" * 300],
)
async def test_malformed_stream_ids_are_rejected(store: EventStore, stream_id: str) -> None:
    with pytest.raises(InvalidInput, match="malformed stream id"):
        await store.append(stream_id, [ev()])
    assert await store.head() == 0


async def test_oversized_and_malformed_events_are_rejected_whole(store: EventStore) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        await store.append("app/a", [ev("ok"), NewEvent(type="convoy.v1.X", data=b"x" * (MAX_EVENT_BYTES + 1))])
    with pytest.raises(InvalidInput, match="event type"):
        await store.append("app/a", [NewEvent(type="not a type!", data=b"")])
    with pytest.raises(InvalidInput, match="bytes"):
        await store.append("app/a", [NewEvent(type="convoy.v1.X", data="text")])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="twice"):
        same = ev()
        await store.append("app/a", [same, same])
    with pytest.raises(InvalidInput, match="expected_version"):
        await store.append("app/a", [ev()], expected_version=-7)
    with pytest.raises(InvalidInput, match="actor"):
        await store.append("app/a", [NewEvent(type="convoy.v1.X", data=b"", actor="")])
    assert await store.head() == 0
    # An event of exactly the limit is fine.
    await store.append("app/a", [NewEvent(type="convoy.v1.X", data=b"x" * MAX_EVENT_BYTES)])
    assert await store.head() == 1
