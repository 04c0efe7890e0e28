"""Did the agent's consumer skip intents the events stream dropped? Then resync.

The events stream has limits (eventstore.bus.EventsRetention): PostgreSQL is the record,
the stream only the way there. When the stream drops messages an agent's durable consumer
has not delivered yet (the agent was stopped, cut off or slow for longer than the stream
keeps), JetStream moves the consumer past them without a word, and the agent would never
apply those intents. Sequences alone cannot tell: the consumer is filtered to one
runtime's intents, so its stream sequences jump over every other runtime's messages anyway.

So the agent keeps `covered`: a stream sequence through which every message for it has
reached it — delivered in order, or reflected in a desired-state snapshot (whose answer
says which sequences it covers). Limits drop only the oldest messages, so if the stream's
first sequence is still at most `covered + 1`, nothing after `covered` was dropped, and
everything up to the highest sequence delivered has reached the agent. If the first
sequence moved beyond, messages it never saw may be gone: it asks for the snapshot again
and converges to it (idempotent: what it already applied is a duplicate). An agent idle
for longer than the stream keeps resyncs once for nothing; that is the price of never
guessing. (A delivered message counts as received even when its handler failed: the
consumer redelivers it within seconds, and only a stream rolling over faster than that
could drop it first.) `Continuity` is the pure bookkeeping; `watch` the supervised loop that asks the
control plane for the stream's bounds (`snapshot.bounds`) every `interval`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from eventstore.errors import ConvoyError
from eventstore.tasks import describe

log = structlog.get_logger("convoy.agent.continuity")


@dataclass(slots=True)
class Continuity:
    """What the agent knows it has not missed, in events-stream sequences."""

    covered: int = 0
    """Every message for this agent with a stream sequence up to this one has reached it."""
    seen: int = 0
    """The highest stream sequence delivered (or covered by a snapshot)."""
    gaps: int = 0
    """How often the stream was found to have dropped what the agent may not have seen."""

    def delivered(self, sequence: int) -> None:
        """The consumer delivered the message at `sequence`."""
        if sequence == self.covered + 1:
            self.covered = sequence
        self.seen = max(self.seen, sequence)

    def snapshot(self, stream_last: int) -> None:
        """A desired-state snapshot reflecting every message up to `stream_last` was applied."""
        self.covered = max(self.covered, stream_last)
        self.seen = max(self.seen, stream_last)

    def check(self, first: int, last: int, *, seen: int) -> bool:
        """Given the stream's first and last sequence, read after `seen` was the highest
        delivered: True when messages the agent may not have seen were dropped (resync,
        then `snapshot`); otherwise what was delivered up to `seen` counts as covered. (Not
        the current `seen`: a message delivered after the reading may follow a drop the
        reading did not show.) A stream that ends before what was covered is a new one (a
        restore deletes the streams): everything starts again from its snapshot."""
        if last < min(self.covered, seen):  # `seen` existed when the reading was taken
            self.covered = self.seen = 0
            self.gaps += 1
            return True
        if first > self.covered + 1:
            self.gaps += 1
            return True
        self.covered = max(self.covered, min(seen, self.seen))
        return False


Bounds = Callable[[], Awaitable[tuple[int, int]]]
Resync = Callable[[], Awaitable[bool]]


async def watch(state: Continuity, *, bounds: Bounds, resync: Resync, interval: float, runtime: str) -> None:
    """Every `interval` seconds, ask the stream's bounds and resync on a gap. `resync`
    returns whether it converged to a snapshot (which then called `state.snapshot`);
    if not, the next round finds the gap again. Runs until cancelled."""
    while True:
        try:
            seen = state.seen
            first, last = await bounds()
            if state.check(first, last, seen=seen):
                log.warning(
                    "the events stream dropped intents this agent may not have received; resyncing from the desired state",
                    runtime=runtime, covered=state.covered, stream_first=first, stream_last=last,
                )
                await resync()
        except ConvoyError as error:
            log.info("cannot check the events stream's bounds now", runtime=runtime, error=str(error))
        except Exception as error:  # noqa: BLE001 - supervised: the next round tries again
            log.error("continuity check failed", runtime=runtime, error=describe(error))
        await asyncio.sleep(interval)
