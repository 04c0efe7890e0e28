"""The desired state of a runtime, asked of the control plane (no history, no database).

A fresh agent — empty state folder, or a cluster that lost its workloads — must converge
to what the planner wants now, not replay every intent ever issued, and it has no access
to PostgreSQL. So it sends a request on `convoy.<i>.req.<runtime>.desired` and the
control plane (services/api/desired.py) answers on the agent's own inbox with the latest
intent and checks request per target, then an end message carrying the runtime's
configuration and how many messages came before it (see `natsauth.H_DESIRED_COUNT`).
A missing or short answer is `Unavailable`: ask again later.
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
                    return Snapshot(config, found_intents, found_checks, position)
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
