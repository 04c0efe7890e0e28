"""The agents' lease (eventstore.leases) on a real nats-server: one holder at a time; a
holder that stops writing loses it to a waiting one once the bucket forgot it; a clean
release hands it over at once; the same holder (a restarted replica) takes its own back and
renews; and a holder whose lease was taken notices, stops counting on it, and says so
(`lost`).
The bucket's TTL is 2 s here, so expiry is real and quick; no test sleeps for it — each
waits for the condition it is about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from eventstore import bus, leases
from eventstore.embedded import NatsServer
from tests.conftest import eventually

TTL = 2.0


@pytest.fixture
async def nc(embedded_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Client]:
    client = await bus.connect(embedded_nats.url, name="test-leases")
    try:
        assert await leases.ensure_bucket(client.jetstream(), subject_prefix, ttl=TTL) == leases.stream(subject_prefix)
        assert await leases.ensure_bucket(client.jetstream(), subject_prefix, ttl=TTL) == leases.stream(subject_prefix)
        yield client
    finally:
        await client.jetstream().delete_stream(leases.stream(subject_prefix))
        await client.close()


def lease(nc: Client, instance: str, holder: str, runtime: str = "rt-1") -> leases.Lease:
    return leases.Lease(nc, instance=instance, runtime=runtime, holder=holder, ttl=TTL, poll=0.05)


async def test_one_holder_at_a_time_and_expiry_hands_it_over(nc: Client, subject_prefix: str) -> None:
    a, b = lease(nc, subject_prefix, "replica-a"), lease(nc, subject_prefix, "replica-b")
    assert await a.read() is None
    assert await a.try_acquire() and a.held()
    assert not await b.try_acquire() and b.other == "replica-a" and not b.held()
    other_runtime = lease(nc, subject_prefix, "replica-b", runtime="rt-2")
    assert await other_runtime.try_acquire()  # keys are per runtime

    waited: list[str] = []
    started = time.monotonic()
    await asyncio.wait_for(b.acquire(waiting=waited.append), 30)  # A never renews: the bucket forgets it
    assert waited == ["replica-a"] and b.held()
    assert time.monotonic() - started >= TTL * leases.HELD_FRACTION  # not before A stopped counting on it
    assert not a.held()

    # A's renewal finds B's write: A knows it lost the lease.
    keep = asyncio.create_task(a.keep())
    await asyncio.wait_for(a.lost.wait(), 30)
    await keep
    assert not a.held()


async def test_release_hands_over_at_once_and_a_restarted_holder_takes_its_own(nc: Client, subject_prefix: str) -> None:
    a, b = lease(nc, subject_prefix, "replica-a"), lease(nc, subject_prefix, "replica-b")
    assert await a.try_acquire()
    renewing = asyncio.create_task(a.keep())
    assert not await b.try_acquire()
    renewing.cancel()
    await asyncio.gather(renewing, return_exceptions=True)
    await a.release()
    value = await b.read()
    assert value is not None and value.released and value.holder == "replica-a"
    assert await b.try_acquire() and b.held()

    # Replica B restarted after a crash (same id, kept in its state folder, which one
    # process at a time may use: services.agent.state.Replica): it takes its lease back at
    # once instead of waiting it out, and renews it.
    again = lease(nc, subject_prefix, "replica-b")
    assert await again.try_acquire() and again.held()
    taken = await again.read()
    assert taken is not None and taken.holder == "replica-b" and not taken.released
    first = taken.sequence
    keep = asyncio.create_task(again.keep())
    try:
        async def renewed() -> bool:
            value = await again.read()
            return value is not None and value.sequence != first

        await eventually(renewed, timeout=30, interval=0.05, message="the holder renewed its lease")
        assert again.held() and not again.lost.is_set()
    finally:
        keep.cancel()
        await asyncio.gather(keep, return_exceptions=True)
