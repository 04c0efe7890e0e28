"""The outbox relay against a real nats-server and PostgreSQL: every event reaches the
events stream exactly once per event id, in position order, through NATS outages and
relay takeovers; the publisher's order guarantee rests on a server behaviour we test here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from eventstore import bus
from eventstore.embedded import NatsServer, free_loopback_port
from eventstore.errors import BusRejected, Unavailable
from eventstore.postgres import PostgresEventStore
from eventstore.publisher import OrderedPublisher, Outgoing
from eventstore.relay import Relay, RelaySettings
from eventstore.types import NewEvent
from tests.conftest import eventually

pytestmark = pytest.mark.fault  # `make stress` runs these again and again


def ev(n: int) -> NewEvent:
    return NewEvent(type="convoy.v1.Test", data=f"event {n}".encode(), actor="user:ann@example.com")


async def append_many(store: PostgresEventStore, count: int, *, streams: int = 7, per_append: int = 50) -> None:
    done = 0
    while done < count:
        n = min(per_append, count - done)
        await store.append(f"app/a{done % streams}.x", [ev(done + i) for i in range(n)])
        done += n


@contextlib.asynccontextmanager
async def nats_client(url: str, name: str = "test") -> AsyncIterator[Client]:
    nc = await bus.connect(url, name=name)
    try:
        yield nc
    finally:
        await nc.close()


async def stream_messages(nc: Client, stream: str, *, filter_subjects: list[str] | None = None) -> list[Msg]:
    """Every message in `stream` (optionally filtered), in stream order."""
    js = nc.jetstream()
    name = f"read-{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(
        name=name,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        filter_subjects=filter_subjects,
        inactive_threshold=30,
    )
    consumer = await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    messages: list[Msg] = []
    try:
        while len(messages) < consumer.num_pending:
            messages.extend(await sub.fetch(min(1000, consumer.num_pending - len(messages)), timeout=5))
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(stream, name)
    return messages


async def assert_stream_is_the_log(nc: Client, store: PostgresEventStore, instance: str) -> None:
    log = await store.read_all(limit=1_000_000)
    messages = await stream_messages(nc, bus.events_stream(instance))
    ids = [m.headers[bus.H_MSG_ID] for m in messages if m.headers]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert ids == [str(e.event_id) for e in log], "the stream is not the log, in order"
    assert messages[-1].metadata.sequence.stream == len(messages), "the stream holds more than the log"
    first, last = log[0], messages[-1]
    assert bus.event_from_message(messages[0].headers, messages[0].data) == first
    assert last.subject == bus.event_subject(instance, log[-1].stream_id)


def settings(instance: str, **overrides: float) -> RelaySettings:
    values: dict = {"instance": instance, "lock_poll": 0.05, "idle_poll": 0.2, "ack_timeout": 1.0, "max_backoff": 0.5}
    values.update(overrides)
    return RelaySettings(**values)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_events_reach_the_bus_in_order_through_a_nats_outage(
    own_nats: NatsServer, pg_store: PostgresEventStore, subject_prefix: str, how: str
) -> None:
    async with nats_client(own_nats.url) as nc:
        await append_many(pg_store, 500)
        async with Relay(store=pg_store, nc=nc, settings=settings(subject_prefix)) as relay:
            await eventually(lambda: relay.checkpoint == 500, message="relay caught up")
            assert relay.published == 500 and relay.lag == 0

            own_nats.stop() if how == "stop" else own_nats.kill()
            await append_many(pg_store, 1500)  # commands commit while the bus is down
            assert await pg_store.head() == 2000
            await eventually(lambda: relay.failures > 0, message="relay noticed the outage")
            assert relay.checkpoint < 2000
            assert await relay.measure_lag() == 2000 - relay.checkpoint > 0

            own_nats.start()
            await eventually(lambda: relay.checkpoint == 2000, timeout=30, message="backlog drained")
            assert await relay.measure_lag() == 0
            await append_many(pg_store, 100)  # and it keeps going
            await eventually(lambda: relay.checkpoint == 2100, message="relay follows new events")
            assert relay.lag == 0
        await assert_stream_is_the_log(nc, pg_store, subject_prefix)


async def test_a_crash_of_nats_while_publishing_a_backlog_loses_and_repeats_nothing(
    own_nats: NatsServer, pg_store: PostgresEventStore, subject_prefix: str
) -> None:
    await append_many(pg_store, 20_000, per_append=1000)
    async with nats_client(own_nats.url) as nc:
        async with Relay(store=pg_store, nc=nc, settings=settings(subject_prefix)) as relay:
            await eventually(lambda: relay.checkpoint >= 3000, interval=0.001, message="publishing")
            own_nats.kill()  # windows in flight, acks lost
            own_nats.start()
            await eventually(lambda: relay.checkpoint == 20_000, timeout=60, message="backlog drained")
        await assert_stream_is_the_log(nc, pg_store, subject_prefix)


async def test_a_recreated_stream_gets_every_event_again(
    embedded_nats: NatsServer, pg_store: PostgresEventStore, subject_prefix: str
) -> None:
    await append_many(pg_store, 300)
    async with nats_client(embedded_nats.url) as nc:
        async with Relay(store=pg_store, nc=nc, settings=settings(subject_prefix)) as relay:
            await eventually(lambda: relay.checkpoint == 300, message="published")
        await nc.jetstream().delete_stream(bus.events_stream(subject_prefix))
        await append_many(pg_store, 50)
        async with Relay(store=pg_store, nc=nc, settings=settings(subject_prefix)) as relay:
            await eventually(lambda: relay.checkpoint == 350 and relay.published == 350, message="republished")
        await assert_stream_is_the_log(nc, pg_store, subject_prefix)


async def test_one_relay_publishes_and_a_standby_takes_over_without_gap_or_duplicate(
    embedded_nats: NatsServer, pg_store: PostgresEventStore, subject_prefix: str, database_url: str
) -> None:
    async with nats_client(embedded_nats.url, "a") as nc_a, nats_client(embedded_nats.url, "b") as nc_b:
        relay_a = Relay(store=pg_store, nc=nc_a, settings=settings(subject_prefix))
        relay_b = Relay(store=pg_store, nc=nc_b, settings=settings(subject_prefix))
        writer: asyncio.Task[None] | None = None
        try:
            await relay_a.start()
            await eventually(lambda: relay_a.leader, message="first relay leads")
            await relay_b.start()
            await append_many(pg_store, 300)
            await eventually(lambda: relay_a.checkpoint == 300, message="leader published")
            assert not relay_b.leader and relay_b.published == 0

            writer = asyncio.create_task(append_many(pg_store, 3000, per_append=20), name="test-writer")
            # Kill the leader's session: its lock goes with it; whoever takes the lock next continues.
            await eventually(lambda: relay_a.checkpoint > 600, message="leader busy")
            admin = await asyncpg.connect(database_url)
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", relay_a.session_pid)
            finally:
                await admin.close()
            await eventually(lambda: relay_a.failures > 0, message="old leader noticed")
            await eventually(lambda: relay_a.leader or relay_b.leader, message="a relay leads again")
            # Now cancel whichever leads: the other one must take over.
            leader, standby = (relay_a, relay_b) if relay_a.leader else (relay_b, relay_a)
            await leader.stop()
            await eventually(lambda: standby.leader, message="standby took over")
            await writer
            await eventually(lambda: standby.checkpoint == 3300, timeout=30, message="standby drained")
        finally:
            if writer is not None:
                await asyncio.wait({writer})
            await relay_a.stop()
            await relay_b.stop()
        # Each event was stored once, by one of them (an event stored while its ack was
        # lost is skipped by the next leader, so the counters may miss a few).
        assert 0 < relay_a.published + relay_b.published <= 3300
        await assert_stream_is_the_log(nc_a, pg_store, subject_prefix)


async def test_intents_are_routed_per_runtime(
    embedded_nats: NatsServer, pg_store: PostgresEventStore, subject_prefix: str
) -> None:
    await pg_store.append("intent/eu-west/web", [ev(1), ev(2)])
    await pg_store.append("intent/us.east/web", [ev(3)])
    await pg_store.append("intent/eu-west", [ev(4)])
    await pg_store.append("intent/eu-west2/api", [ev(5)])
    await pg_store.append("service/eu-west", [ev(6)])
    await pg_store.append("intent/eu-west/db.main/v1", [ev(7)])
    async with nats_client(embedded_nats.url) as nc:
        async with Relay(store=pg_store, nc=nc, settings=settings(subject_prefix)) as relay:
            await eventually(lambda: relay.checkpoint == 7, message="relay caught up")
        stream = bus.events_stream(subject_prefix)
        eu = await stream_messages(nc, stream, filter_subjects=bus.intent_filter(subject_prefix, "eu-west"))
        assert [m.data for m in eu] == [b"event 1", b"event 2", b"event 4", b"event 7"]
        us = await stream_messages(nc, stream, filter_subjects=bus.intent_filter(subject_prefix, "us.east"))
        assert [m.subject for m in us] == [f"convoy.{subject_prefix}.evt.intent.us~2Eeast.web"]
        assert bus.stream_id_from_subject(subject_prefix, us[0].subject) == "intent/us.east/web"
        assert bus.event_from_message(us[0].headers, us[0].data).actor == "user:ann@example.com"


@pytest.fixture
async def scratch_stream(embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[tuple[Client, str, str]]:
    """A stream of our own, limited to 256-byte messages, so the server rejects on demand."""
    async with nats_client(embedded_nats.url) as nc:
        js = nc.jetstream()
        name = f"SCRATCH_{subject_prefix.upper()}"
        await js.add_stream(
            StreamConfig(name=name, subjects=[f"scratch.{subject_prefix}.>"], storage=StorageType.FILE,
                         duplicate_window=120, max_msg_size=256)
        )
        try:
            yield nc, name, f"scratch.{subject_prefix}.x"
        finally:
            await js.delete_stream(name)


def outgoing(subject: str, n: int, *, size: int = 10) -> Outgoing:
    return Outgoing(subject=subject, msg_id=f"m{n}", payload=b"x" * size, headers={"Convoy-Position": str(n)})


@pytest.mark.parametrize("raw_frames", [True, False])
async def test_server_checks_duplicates_before_the_order_expectation(
    scratch_stream: tuple[Client, str, str], raw_frames: bool
) -> None:
    nc, stream, subject = scratch_stream
    publisher = OrderedPublisher(nc, stream=stream, ack_timeout=5, raw_frames=raw_frames)
    try:
        first = await publisher.publish_window([outgoing(subject, n) for n in range(3)])
        assert (first.acked, first.duplicates, first.error) == (3, 0, None)
        # A retried window whose head is already stored: duplicates, then the new tail.
        retry = await publisher.publish_window([outgoing(subject, n) for n in range(5)])
        assert (retry.acked, retry.duplicates, retry.error) == (5, 3, None)
        assert retry.last_sequence == 5
    finally:
        await publisher.close()


@pytest.mark.parametrize(("ack_every", "known_acked"), [(1, 2), (2, 2), (100, 0)])
async def test_a_rejected_message_rejects_the_rest_of_its_window(
    scratch_stream: tuple[Client, str, str], ack_every: int, known_acked: int
) -> None:
    nc, stream, subject = scratch_stream
    publisher = OrderedPublisher(nc, stream=stream, ack_timeout=5, ack_every=ack_every)
    try:
        window = [outgoing(subject, n, size=1000 if n == 2 else 10) for n in range(5)]
        result = await publisher.publish_window(window)
        # With sparse acks we know less, never something false: the stream holds a prefix.
        assert result.acked == known_acked and isinstance(result.error, BusRejected)
        info = await nc.jetstream().stream_info(stream)
        assert info.state.messages == 2  # 3 and 4 were refused: they expected 2 to be last
        # Fixed and retried from the first unacked message: order is kept.
        fixed = [outgoing(subject, n) for n in range(2, 5)]
        again = await publisher.publish_window(fixed)
        assert (again.acked, again.duplicates, again.error) == (3, 0, None)
        messages = await stream_messages(nc, stream)
        assert [m.headers["Convoy-Position"] for m in messages if m.headers] == ["0", "1", "2", "3", "4"]
    finally:
        await publisher.close()


async def test_publisher_without_a_stream_is_unavailable(embedded_nats: NatsServer, subject_prefix: str) -> None:
    async with nats_client(embedded_nats.url) as nc:
        publisher = OrderedPublisher(nc, stream="NOPE", ack_timeout=2)
        try:
            result = await publisher.publish_window([outgoing(f"nowhere.{subject_prefix}", n) for n in range(3)])
        finally:
            await publisher.close()
    assert result.acked == 0 and isinstance(result.error, Unavailable)


async def test_connecting_to_no_server_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="connecting to NATS"):
        await bus.connect(f"nats://127.0.0.1:{free_loopback_port()}", name="nowhere", connect_attempts=1)


async def test_ensure_streams_is_idempotent_and_updates(embedded_nats: NatsServer, subject_prefix: str) -> None:
    async with nats_client(embedded_nats.url) as nc:
        js = nc.jetstream()
        names = await bus.ensure_streams(js, subject_prefix)
        assert names == [bus.events_stream(subject_prefix), bus.observations_stream(subject_prefix),
                         bus.dlq_stream(subject_prefix)]
        assert await bus.ensure_streams(js, subject_prefix) == names
        await bus.ensure_streams(js, subject_prefix, duplicate_window=300)
        info = await js.stream_info(bus.events_stream(subject_prefix))
        assert info.config.duplicate_window == 300
        assert info.config.subjects == [f"convoy.{subject_prefix}.evt.>"]
        for name in names:
            await js.delete_stream(name)
