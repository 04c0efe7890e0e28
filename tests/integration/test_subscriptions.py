"""Durable subscriptions against a real nats-server: acks are confirmed, poison messages
go to the dead-letter stream without wedging the consumer, consumption resumes after a
server restart, and stopping leaves no task behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import bus
from eventstore.embedded import NatsServer
from eventstore.errors import InvalidInput
from eventstore.postgres import PostgresEventStore
from eventstore.relay import Relay, RelaySettings
from eventstore.subscriptions import (
    H_DLQ_CONSUMER,
    H_DLQ_DELIVERIES,
    H_DLQ_ERROR,
    H_DLQ_SEQUENCE,
    H_DLQ_STREAM,
    H_DLQ_SUBJECT,
    BatchHandler,
    Delivery,
    DurableSubscription,
    SubscriptionSettings,
)
from eventstore.types import NewEvent
from tests.conftest import eventually

pytestmark = pytest.mark.fault  # `make stress` runs these again and again

FAST = SubscriptionSettings(
    max_deliver=3, ack_wait=2.0, fetch_timeout=1.0, heartbeat=0.25, retry_delay=0.05, max_retry_delay=0.2
)


@contextlib.asynccontextmanager
async def bus_for(url: str, instance: str) -> AsyncIterator[Client]:
    nc = await bus.connect(url, name="test")
    try:
        await bus.ensure_streams(nc.jetstream(), instance)
        yield nc
    finally:
        js = nc.jetstream()
        if nc.is_connected:
            for name in (bus.events_stream(instance), bus.observations_stream(instance), bus.dlq_stream(instance)):
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        await nc.close()


async def observe(nc: Client, instance: str, runtime: str, texts: list[str]) -> None:
    """Publish like an agent does: retried with the same id until stored (right after a
    server restart the first requests may go unanswered, nats.py #529)."""
    js = nc.jetstream()
    subject = bus.observation_subject(instance, runtime, "web")
    for text in texts:

        async def stored(text: str = text) -> bool:
            try:
                await js.publish(subject, text.encode(), headers={"Nats-Msg-Id": text}, timeout=2)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                return False
            return True

        await eventually(stored, message=f"observation {text} stored")


async def consumer_drained(nc: Client, stream: str, durable: str) -> bool:
    info = await nc.jetstream().consumer_info(stream, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def dead_letters(nc: Client, instance: str) -> list[Msg]:
    js = nc.jetstream()
    stream = bus.dlq_stream(instance)
    info = await js.stream_info(stream)
    return [await js.get_msg(stream, seq) for seq in range(1, info.state.last_seq + 1)]  # type: ignore[misc]


async def test_handled_events_are_acked_and_decoded(
    embedded_nats: NatsServer, pg_store: PostgresEventStore, subject_prefix: str
) -> None:
    await pg_store.append("intent/eu-west/web", [NewEvent(type="convoy.v1.Intent", data=f"i{n}".encode()) for n in range(5)])
    await pg_store.append("intent/us-east/web", [NewEvent(type="convoy.v1.Intent", data=b"other")])
    seen: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        async with Relay(store=pg_store, nc=nc, settings=RelaySettings(instance=subject_prefix)) as relay:
            await eventually(lambda: relay.checkpoint == 6, message="relayed")
        stream = bus.events_stream(subject_prefix)
        subscription = DurableSubscription(
            nc,
            instance=subject_prefix,
            stream=stream,
            durable="agent-eu-west",
            filter_subjects=bus.intent_filter(subject_prefix, "eu-west"),
            handler=handle,
            settings=FAST,
        )
        async with subscription:
            await eventually(lambda: len(seen) == 5, message="intents handled")
            await eventually(lambda: consumer_drained(nc, stream, "agent-eu-west"), message="all acked")
        assert [d.event().data for d in seen] == [f"i{n}".encode() for n in range(5)]
        assert [d.event().version for d in seen] == [1, 2, 3, 4, 5]
        assert all(d.attempt == 1 for d in seen) and subscription.stats.handled == 5
        assert not subscription.running


async def test_a_poison_message_goes_to_the_dead_letter_stream_and_the_rest_flows(
    embedded_nats: NatsServer, subject_prefix: str
) -> None:
    attempts: Counter[str] = Counter()
    handled: list[str] = []

    async def handle(delivery: Delivery) -> None:
        text = delivery.data.decode()
        attempts[text] += 1
        if text == "poison":
            raise ValueError("cannot parse poison\nat all")
        handled.append(text)

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        stream = bus.observations_stream(subject_prefix)
        texts = ["ok-0", "ok-1", "poison", *[f"ok-{n}" for n in range(2, 12)]]
        await observe(nc, subject_prefix, "eu-west", texts)
        async with DurableSubscription(
            nc,
            instance=subject_prefix,
            stream=stream,
            durable="ingest",
            filter_subjects=[bus.observation_filter(subject_prefix, "eu-west")],
            handler=handle,
            settings=FAST,
        ) as subscription:
            await eventually(lambda: subscription.stats.dead_lettered == 1, message="poison dead-lettered")
            await eventually(lambda: len(handled) == 12, message="good messages handled")
            await eventually(lambda: consumer_drained(nc, stream, "ingest"), message="consumer not wedged")
            await observe(nc, subject_prefix, "eu-west", ["ok-late"])  # and it keeps consuming
            await eventually(lambda: "ok-late" in handled, message="later message handled")
        assert attempts["poison"] == FAST.max_deliver
        assert all(attempts[t] == 1 for t in handled)
        (letter,) = await dead_letters(nc, subject_prefix)
        headers = letter.headers or {}
        assert letter.subject == bus.dlq_subject(subject_prefix, "ingest")
        assert letter.data == b"poison"
        assert headers[H_DLQ_SUBJECT] == bus.observation_subject(subject_prefix, "eu-west", "web")
        assert headers[H_DLQ_STREAM] == stream and headers[H_DLQ_SEQUENCE] == "3"
        assert headers[H_DLQ_CONSUMER] == "ingest" and headers[H_DLQ_DELIVERIES] == "3"
        assert headers[H_DLQ_ERROR] == "ValueError: cannot parse poison at all"


async def test_a_message_whose_last_attempt_was_lost_is_still_dead_lettered(
    embedded_nats: NatsServer, subject_prefix: str
) -> None:
    calls: list[str] = []

    async def handle(delivery: Delivery) -> None:
        calls.append(delivery.data.decode())

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        stream = bus.observations_stream(subject_prefix)
        settings = SubscriptionSettings(max_deliver=2, ack_wait=0.5, fetch_timeout=1.0, heartbeat=0.25)
        subscription = DurableSubscription(
            nc, instance=subject_prefix, stream=stream, durable="crashy",
            filter_subjects=[bus.observations_subjects(subject_prefix)], handler=handle, settings=settings,
        )
        await subscription.ensure_consumer()
        await observe(nc, subject_prefix, "eu-west", ["lost"])
        # A consumer process that takes the message and dies, twice: no ack, no nak.
        raw = await nc.jetstream().pull_subscribe_bind(durable="crashy", stream=stream)
        for attempt in (1, 2):
            (msg,) = await raw.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == attempt
        await raw.unsubscribe()
        async with subscription:
            await eventually(lambda: subscription.stats.dead_lettered == 1, message="dead-lettered")
        assert calls == []  # the handler's attempts were used up; it is not run again
        (letter,) = await dead_letters(nc, subject_prefix)
        assert (letter.headers or {})[H_DLQ_DELIVERIES] == "3"
        assert "never reported an outcome" in (letter.headers or {})[H_DLQ_ERROR]


@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("when", ["busy", "idle"])
async def test_consumption_resumes_after_a_server_restart(
    own_nats: NatsServer, subject_prefix: str, how: str, when: str
) -> None:
    """Busy: acks fail mid-stream. Idle: a graceful stop tells the waiting pull request
    "409 Server Shutdown", a crash tells nothing and only the missing heartbeats reveal
    that the request is gone (nats.py #504)."""
    handled: Counter[str] = Counter()

    async def handle(delivery: Delivery) -> None:
        handled[delivery.data.decode()] += 1

    async with bus_for(own_nats.url, subject_prefix) as nc:
        stream = bus.observations_stream(subject_prefix)
        before = [f"before-{n}" for n in range(50)]
        after = [f"after-{n}" for n in range(50)]
        await observe(nc, subject_prefix, "eu-west", before)
        async with DurableSubscription(
            nc,
            instance=subject_prefix,
            stream=stream,
            durable="ingest",
            filter_subjects=[bus.observations_subjects(subject_prefix)],
            handler=handle,
            settings=FAST,
        ) as subscription:
            if when == "busy":
                await eventually(lambda: len(handled) >= 10, message="consuming")
            else:
                await eventually(lambda: consumer_drained(nc, stream, "ingest"), message="idle")
            own_nats.stop() if how == "stop" else own_nats.kill()
            own_nats.start()
            await eventually(lambda: nc.is_connected, message="reconnected")
            await observe(nc, subject_prefix, "eu-west", after)
            await eventually(lambda: set(handled) == set(before + after), timeout=30, message="everything handled")
            await eventually(lambda: consumer_drained(nc, stream, "ingest"), message="all acked")
        assert subscription.stats.dead_lettered == 0


async def test_stop_is_clean_when_idle_and_lets_a_running_handler_finish(
    embedded_nats: NatsServer, subject_prefix: str
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handle(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        finished.append(delivery.data.decode())

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        stream = bus.observations_stream(subject_prefix)
        settings = SubscriptionSettings(fetch_timeout=30.0, heartbeat=5.0)
        subscription = DurableSubscription(
            nc, instance=subject_prefix, stream=stream, durable="ingest",
            filter_subjects=[bus.observations_subjects(subject_prefix)], handler=handle, settings=settings,
        )
        await subscription.start()
        await subscription.stop()  # idle in a 30 s fetch: stops at once
        assert not subscription.running

        await subscription.start()
        await observe(nc, subject_prefix, "eu-west", ["slow", "next"])
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.create_task(subscription.stop(grace=10), name="test-stop")
        release.set()
        await stopping
        assert finished == ["slow"] and subscription.stats.handled == 1
        # "next" was fetched with it but handed back: a new consumer gets it without waiting out ack_wait.
        info = await nc.jetstream().consumer_info(stream, "ingest")
        assert info.num_ack_pending + info.num_pending == 1
        async with subscription:
            await eventually(lambda: finished == ["slow", "next"], message="next handled after restart")


async def test_consumer_config_follows_the_settings(embedded_nats: NatsServer, subject_prefix: str) -> None:
    async def handle(delivery: Delivery) -> None:
        return None

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        stream = bus.events_stream(subject_prefix)
        subscription = DurableSubscription(
            nc, instance=subject_prefix, stream=stream, durable="agent",
            filter_subjects=bus.intent_filter(subject_prefix, "eu-west"), handler=handle, settings=FAST,
        )
        await subscription.ensure_consumer()
        info = await nc.jetstream().consumer_info(stream, "agent")
        assert info.config.ack_policy == AckPolicy.EXPLICIT
        assert info.config.max_deliver == FAST.max_deliver + 2
        assert info.config.ack_wait == FAST.ack_wait
        assert info.config.deliver_policy == DeliverPolicy.ALL
        assert info.config.filter_subjects == bus.intent_filter(subject_prefix, "eu-west")
        assert isinstance(info.config, ConsumerConfig)


def batch_subscription(nc: Client, instance: str, handler: BatchHandler, **settings: object) -> DurableSubscription:
    values: dict[str, object] = {
        "max_deliver": 3, "ack_wait": 2.0, "fetch_timeout": 1.0, "heartbeat": 0.25, "retry_delay": 0.05,
        "max_retry_delay": 0.2,
    }
    values.update(settings)
    return DurableSubscription(
        nc, instance=instance, stream=bus.observations_stream(instance), durable="batched",
        filter_subjects=[bus.observations_subjects(instance)], batch_handler=handler,
        settings=SubscriptionSettings(**values),  # type: ignore[arg-type]
    )


async def test_a_batch_handler_gets_what_a_pull_brings_in_order_and_settles_each_message(
    embedded_nats: NatsServer, subject_prefix: str
) -> None:
    """Outcomes are per message: the good ones are acked once, the poison one is retried
    and dead-lettered alone, and it does not hold back the messages behind it."""
    calls: list[list[str]] = []
    attempts: Counter[str] = Counter()

    async def handle(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        texts = [d.data.decode() for d in deliveries]
        calls.append(texts)
        attempts.update(texts)
        return [ValueError("cannot parse poison") if t == "poison" else None for t in texts]

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        stream = bus.observations_stream(subject_prefix)
        texts = [f"ok-{n:02d}" for n in range(30)]
        texts.insert(10, "poison")
        await observe(nc, subject_prefix, "eu-west", texts)  # a backlog: the first pull brings many
        subscription = batch_subscription(nc, subject_prefix, handle, batch=50)
        async with subscription:
            await eventually(lambda: subscription.stats.dead_lettered == 1, message="poison dead-lettered")
            await eventually(lambda: consumer_drained(nc, stream, "batched"), message="all settled")
            await observe(nc, subject_prefix, "eu-west", ["ok-late"])
            await eventually(lambda: attempts["ok-late"] == 1, message="it keeps consuming")
        good = [t for t in texts if t != "poison"]
        firsts = [t for call in calls for t in call if t != "poison"]
        assert firsts == [*good, "ok-late"]  # each good message handled once, in stream order
        assert max(len(call) for call in calls) > 1 and all(len(call) <= 50 for call in calls)
        assert attempts["poison"] == 3 and subscription.stats.handled == len(good) + 1
        (letter,) = await dead_letters(nc, subject_prefix)
        headers = letter.headers or {}
        assert letter.data == b"poison" and headers[H_DLQ_SEQUENCE] == "11"
        assert headers[H_DLQ_ERROR] == "ValueError: cannot parse poison" and headers[H_DLQ_DELIVERIES] == "3"


async def test_a_batch_handler_that_fails_retries_every_message_of_the_batch(
    embedded_nats: NatsServer, subject_prefix: str
) -> None:
    """Raising, or answering the wrong number of outcomes, fails the whole batch: nothing
    is acked, every message comes back, and once the handler works each is acked."""
    calls = 0
    handled: Counter[str] = Counter()

    async def handle(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store unavailable")
        if calls == 2:
            return []  # a buggy handler: no outcomes
        handled.update(d.data.decode() for d in deliveries)
        return [None] * len(deliveries)

    async with bus_for(embedded_nats.url, subject_prefix) as nc:
        stream = bus.observations_stream(subject_prefix)
        texts = [f"m-{n}" for n in range(10)]
        await observe(nc, subject_prefix, "eu-west", texts)
        subscription = batch_subscription(nc, subject_prefix, handle, max_deliver=5)
        async with subscription:
            await eventually(lambda: set(handled) == set(texts), message="all handled after the failures")
            await eventually(lambda: consumer_drained(nc, stream, "batched"), message="all acked")
        assert all(n == 1 for n in handled.values())
        assert subscription.stats.retried >= 2 and subscription.stats.dead_lettered == 0
        assert subscription.stats.handled == len(texts)


def test_a_subscription_takes_one_kind_of_handler(subject_prefix: str) -> None:
    async def one(delivery: Delivery) -> None:
        return None

    async def many(deliveries: Sequence[Delivery]) -> list[Exception | None]:
        return [None] * len(deliveries)

    nc = Client()
    common: dict[str, object] = {
        "instance": subject_prefix, "stream": "S", "durable": "d", "filter_subjects": ["convoy.x.obs.>"],
    }
    with pytest.raises(InvalidInput, match="either a handler or a batch handler"):
        DurableSubscription(nc, **common)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="either a handler or a batch handler"):
        DurableSubscription(nc, handler=one, batch_handler=many, **common)  # type: ignore[arg-type]
    assert DurableSubscription(nc, batch_handler=many, **common).durable == "d"  # type: ignore[arg-type]
