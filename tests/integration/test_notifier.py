"""The notifier against real servers: status changes recorded in PostgreSQL reach a real
HTTP webhook through the relay and NATS — signed, at least once (a receiver that fails is
retried, one that stays down gets the message dead-lettered), and a bad event harms
nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from eventstore import bus
from eventstore.codec import convoy_registry
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from eventstore.relay import Relay, RelaySettings
from eventstore.subscriptions import SubscriptionSettings
from eventstore.types import NewEvent
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from services.notifier.rules import Rule
from services.notifier.signatures import verify
from services.notifier.webhook import H_EVENT_ID, H_SIGNATURE, H_WEBHOOK_SIGNATURE, Notifier, Webhook
from tests.conftest import eventually
from tests.webhooks import PATH, Receiver, receiving

REGISTRY = convoy_registry()
FAST = SubscriptionSettings(
    max_deliver=3, ack_wait=10.0, batch=20, fetch_timeout=1.0, heartbeat=0.25, retry_delay=0.05, max_retry_delay=0.1,
    start="new",
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as found:
        yield found


@pytest.fixture
async def bus_side(pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Client]:
    nc = await bus.connect(embedded_nats.url, name="test-notifier")
    try:
        await bus.ensure_streams(nc.jetstream(), subject_prefix)
        async with Relay(store=pg_store, nc=nc, settings=RelaySettings(instance=subject_prefix, idle_poll=0.2)):
            yield nc
    finally:
        await nc.close()


async def status(store: PostgresEventStore, new: int, *, channel: str = "prod", old: int = 0, runtime: str = "",
                 app: str = "shop", reason: str = "") -> None:
    changed = E.InstanceStatusChanged(
        application=app, service="web", channel=channel, release_id="rel-1", version="v2",
        old_status=old, new_status=new, reason=reason,  # type: ignore[arg-type]
        target=C.Target(runtime=runtime, namespace="ns" if runtime else ""),
    )
    await store.append(f"convergence/{app}/web/{channel}", [REGISTRY.encode(changed, actor="planner")])


async def test_status_changes_reach_the_webhook_signed_and_filtered(
    pg_store: PostgresEventStore, bus_side: Client, subject_prefix: str, receiver: Receiver
) -> None:
    webhook = Webhook(url=receiver.url, secret="s3cret")
    rule = Rule(applications=frozenset({"shop"}))
    async with Notifier(bus_side, instance=subject_prefix, webhook=webhook, rule=rule, name="ops", settings=FAST) as notifier:
        await status(pg_store, C.INSTANCE_STATUS_DEPLOYING, old=C.INSTANCE_STATUS_PENDING)  # not asked for
        await status(pg_store, C.INSTANCE_STATUS_CONVERGED, runtime="eu-1")  # per runtime: not repeated
        await status(pg_store, C.INSTANCE_STATUS_CONVERGED, app="other")  # another application
        await status(pg_store, C.INSTANCE_STATUS_WAITING_APPROVAL, old=C.INSTANCE_STATUS_WAITING_PRECONDITIONS,
                     reason="waiting for 1 approval of signoff (0 given)")
        await status(pg_store, C.INSTANCE_STATUS_ROLLED_BACK, channel="staging", reason="rolled back to v1: crash loop")
        await eventually(lambda: len(receiver.received) == 2, message="two notifications")
        await eventually(lambda: notifier.stats.seen == 5, message="every status change seen")

    first, second = receiver.bodies()
    assert first["text"] == "shop/web v2 in prod: WAITING_APPROVAL — waiting for 1 approval of signoff (0 given)"
    assert (first["status"], first["old_status"], first["channel"]) == ("WAITING_APPROVAL", "WAITING_PRECONDITIONS", "prod")
    assert second["status"] == "ROLLED_BACK" and second["channel"] == "staging"
    for headers, body in receiver.received:
        assert headers[H_SIGNATURE] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()  # deprecated
        verify(body, headers[H_WEBHOOK_SIGNATURE], "s3cret", now=time.time())  # timestamped: replays refusable
        assert headers[H_EVENT_ID] == json.loads(body)["event_id"]


async def test_a_failing_receiver_is_retried_and_gets_each_notification_once(
    pg_store: PostgresEventStore, bus_side: Client, subject_prefix: str, receiver: Receiver
) -> None:
    receiver.failures = 2
    webhook = Webhook(url=receiver.url, format="slack")
    async with Notifier(bus_side, instance=subject_prefix, webhook=webhook, name="chat", settings=FAST) as notifier:
        await status(pg_store, C.INSTANCE_STATUS_FAILED, reason="health check failed")
        await status(pg_store, C.INSTANCE_STATUS_CONVERGED)
        await eventually(lambda: len(receiver.received) == 2, message="both delivered after the failures")
        assert receiver.refused == 2 and notifier.stats.failed == 2
    # Retries may reorder notifications; each carries its position for receivers that care.
    assert sorted(b["text"] for b in receiver.bodies()) == [
        "shop/web v2 in prod: CONVERGED", "shop/web v2 in prod: FAILED — health check failed"
    ]
    assert all(set(b) == {"text"} for b in receiver.bodies())  # Slack's incoming-webhook shape


async def test_a_receiver_that_stays_down_gets_the_message_dead_lettered(
    pg_store: PostgresEventStore, bus_side: Client, subject_prefix: str, receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receiver.failures = 1000
    dead = await bus_side.subscribe(bus.dlq_subject(subject_prefix, "notify-pager"))
    async with Notifier(bus_side, instance=subject_prefix, webhook=Webhook(url=receiver.url), name="pager", settings=FAST) as notifier:
        await status(pg_store, C.INSTANCE_STATUS_FAILED)
        letter = await dead.next_msg(timeout=20)
        assert notifier.stats.failed == FAST.max_deliver and receiver.received == []
        assert letter.headers is not None
    await dead.unsubscribe()
    logged = capsys.readouterr().out
    assert "webhook did not take a notification" in logged and "127.0.0.1" in logged
    assert PATH not in logged  # the URL's secret path is never logged


async def test_undecodable_events_are_skipped_and_the_rest_flows(
    pg_store: PostgresEventStore, bus_side: Client, subject_prefix: str, receiver: Receiver
) -> None:
    async with Notifier(bus_side, instance=subject_prefix, webhook=Webhook(url=receiver.url), name="robust", settings=FAST) as notifier:
        garbage = NewEvent(type="convoy.v1.InstanceStatusChanged", data=b"\xff\xfe not protobuf")
        await pg_store.append("convergence/shop/web/prod", [garbage])
        await status(pg_store, C.INSTANCE_STATUS_CONVERGED)
        await eventually(lambda: len(receiver.received) == 1, message="the good event delivered")
        assert notifier.stats.skipped == 1


def test_webhook_settings_are_checked() -> None:
    from eventstore.errors import InvalidInput

    for bad in ({"url": "ftp://x/"}, {"url": "not a url"}, {"url": "https://h/", "format": "xml"},
                {"url": "https://h/", "timeout": 0}):
        with pytest.raises(InvalidInput):
            Webhook(**bad)  # type: ignore[arg-type]
    assert "secret" not in repr(Webhook(url="https://h/x", secret="secret"))
