"""The desired state of a runtime, asked of the control plane (no history, no database).

A fresh agent — empty state folder, or a cluster that lost its workloads — must converge
to what the planner wants now, not replay every intent ever issued, and it has no access
to PostgreSQL. So it sends a request on `convoy.<i>.req.<runtime>.desired` and the
control plane (services/api/desired.py) answers on the agent's own inbox with the latest
intent and checks request per target, then an end message carrying the runtime's
configuration and how many messages came before it (see `natsauth.H_DESIRED_COUNT`),
and which events-stream sequences the answer covers. A missing or short answer is
`Unavailable`: ask again later. `bounds` asks only for the events stream's first and last
sequence (services/agent/continuity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client

from eventstore import bus, natsauth
from eventstore.codec import EventRegistry
from eventstore.errors import ConvoyError, Unavailable
from schemas.convoy.v1 import resources_pb2
from services.agent import intents


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: resources_pb2.Runtime | None
    """The runtime's registered configuration (None: not registered)."""
    intents: list[intents.Intent] = field(default_factory=list)
    checks: list[intents.Checks] = field(default_factory=list)
    position: int = 0
    stream_last: int = 0
    """Every events-stream message up to this sequence is reflected in the answer (0: the
    control plane could not tell)."""


async def fetch(nc: Client, *, instance: str, runtime: str, registry: EventRegistry, timeout: float = 10.0) -> Snapshot:
    """Ask for `runtime`'s desired state; `Unavailable` if no complete answer in `timeout`."""
    inbox = nc.new_inbox()
    sub = await bus.guarded("subscribing for the desired state", lambda: nc.subscribe(inbox))
    try:
        subject = natsauth.desired_subject(instance, runtime)
        await bus.guarded("asking for the desired state", lambda: nc.publish(subject, b"", reply=inbox))
        found_intents: list[intents.Intent] = []
        found_checks: list[intents.Checks] = []
        received = 0
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                if headers.get("Status") == "503":
                    raise Unavailable(f"nobody answers desired-state requests on {subject}; is the control plane up?")
                if natsauth.H_DESIRED_COUNT in headers:
                    expected = int(headers[natsauth.H_DESIRED_COUNT])
                    if expected != received:
                        raise Unavailable(f"desired state: got {received} of {expected} messages; ask again")
                    config = resources_pb2.Runtime.FromString(msg.data) if msg.data else None
                    position = int(headers.get(natsauth.H_DESIRED_POSITION, "0"))
                    stream_last = int(headers.get(natsauth.H_DESIRED_STREAM_LAST, "0"))
                    return Snapshot(config, found_intents, found_checks, position, stream_last)
                received += 1
                try:
                    item = intents.decode(registry, headers, msg.data, runtime=runtime)
                except ConvoyError:
                    continue  # counted, skipped: one bad entry must not block convergence
                if isinstance(item, intents.Intent):
                    found_intents.append(item)
                else:
                    found_checks.append(item)
    except (TimeoutError, nats.errors.TimeoutError) as error:
        raise Unavailable(f"no complete desired-state answer for runtime {runtime!r} within {timeout}s") from error
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def bounds(nc: Client, *, instance: str, runtime: str, timeout: float = 5.0) -> tuple[int, int]:
    """The events stream's (first, last) sequence, as the control plane sees it;
    `Unavailable` if it does not answer (or is too old to tell)."""
    subject = natsauth.desired_subject(instance, runtime)
    try:
        msg = await bus.guarded(
            "asking for the events stream's bounds",
            lambda: nc.request(subject, b"", timeout=timeout, headers={natsauth.H_DESIRED_PROBE: "stream"}),
        )
    except Unavailable:
        raise
    except ConvoyError as error:
        raise Unavailable(f"no answer about the events stream's bounds on {subject}: {error}") from error
    headers = msg.headers or {}
    try:
        return int(headers[natsauth.H_DESIRED_STREAM_FIRST]), int(headers[natsauth.H_DESIRED_STREAM_LAST])
    except (KeyError, ValueError) as error:
        raise Unavailable(f"the control plane did not tell the events stream's bounds ({error!r}); is it up to date?") from error
