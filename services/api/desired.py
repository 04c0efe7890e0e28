"""The desired state of each runtime, answered to its agent over NATS request/reply.

DESIGN.md #4: a fresh agent (empty cluster, lost state) converges to the current desired
state without replaying history, and never touches PostgreSQL. So the control plane folds
the `intent` streams (the latest IntentIssued and ChecksRequested per target — for a target
whose latest intent deletes it, that DELETE, so an agent that died before carrying it out
still removes the workload, and no older generation still on its way brings it back) and
the `runtime` streams (each runtime's configuration, which tells the agent which Runtime implementation to run), and answers
requests on `convoy.<i>.req.<runtime>.desired`: one message per intent / checks request,
in the relay's envelope, then an end message with the count and the runtime's config
(`natsauth.H_DESIRED_COUNT`). The runtime comes from the subject, which NATS only lets
that runtime's agent publish on, so an agent learns only its own desired state.

The reply subject, though, is the requester's choice, and this responder publishes with
the control plane's credential, which may publish anywhere. So it answers only on a reply
that belongs to the asking runtime (`natsauth.reply_belongs_to`): inside that runtime's
own inbox prefix, which only its agent may subscribe to, or — with the accounts
eventstore.natsauth renders, where the request crosses the runtime's own account's
import — the `_R_.…` reply NATS made for it, which carries the answer back into that
account only. Any other request is logged and dropped, unanswered: otherwise runtime A's
agent could ask with the reply set to runtime B's intent subject and have the control
plane put A's intents there, or on the events stream, or on the JetStream API. The
subject maps to a runtime strictly (one canonical token, nothing after `.desired`).

Requests share the queue group `convoy-desired`, so several API processes can answer.
Each answer waits (briefly) until the fold has reached the store's head, so an intent
committed before the request is in the answer.

The events stream has limits (bus.EventsRetention), so an agent's consumer may skip
messages the stream dropped before it got them. The end message says which stream
sequences the answer covers (read before folding: everything up to the last one), and a
request with `natsauth.H_DESIRED_PROBE: stream` gets only those bounds: how an agent finds
out, cheaply, that it may have missed intents and must ask for the whole answer again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventstore import bus, natsauth
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.errors import ConvoyError, InvalidInput, Unavailable
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import EventStore, RecordedEvent
from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2

log = structlog.get_logger("convoy.api.desired")

QUEUE = "convoy-desired"
CATEGORIES = ("intent", "runtime")


@dataclass(slots=True)
class _Runtime:
    config: resources_pb2.Runtime | None = None
    intents: dict[str, RecordedEvent] = field(default_factory=dict)
    """stream id -> the latest IntentIssued (a DELETE for a deleted target)."""
    checks: dict[str, RecordedEvent] = field(default_factory=dict)


class DesiredState:
    """The fold, plus the responder. `await start()` … `await stop()`."""

    def __init__(
        self,
        *,
        nc: Client,
        store: EventStore,
        instance: str,
        registry: EventRegistry | None = None,
        answer_wait: float = 2.0,
    ) -> None:
        self._nc = nc
        self._store = store
        self.instance = bus.validate_instance(instance)
        self._registry = registry or convoy_registry()
        self._answer_wait = answer_wait
        self._runtimes: dict[str, _Runtime] = {}
        self.position = 0
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None
        self.answered = 0
        self.probes = 0
        self.refused = 0
        """Requests dropped because their reply subject was not the asking runtime's."""

    # -- reading -------------------------------------------------------------------------

    def intents(self, runtime: str) -> list[events_pb2.IntentIssued]:
        """The latest intent of each of the runtime's targets (DELETEs included)."""
        held = self._runtimes.get(runtime)
        if held is None:
            return []
        return [self._decode(r) for r in held.intents.values()]  # type: ignore[misc]

    def config(self, runtime: str) -> resources_pb2.Runtime | None:
        held = self._runtimes.get(runtime)
        return held.config if held is not None else None

    # -- running -------------------------------------------------------------------------

    async def start(self) -> None:
        # Catch up by reading (not by waiting for the tail to reach the head: the tail
        # yields only intent/runtime events, and the log's last event may be another kind).
        head = await self._store.head()
        while True:
            batch = await self._store.read_all(after=self.position, limit=10_000, categories=CATEGORIES, to_position=head)
            if not batch:
                break
            for recorded in batch:
                self._fold(recorded)
        self._task = asyncio.create_task(self._run(), name=f"convoy-desired:{self.instance}")
        self._sub = await bus.guarded(
            "subscribing to desired-state requests",
            lambda: self._nc.subscribe(natsauth.desired_subjects(self.instance), queue=QUEUE, cb=self._on_request),
        )

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as error:  # noqa: BLE001 - a closed connection has no subscriptions left
                log.debug("unsubscribe failed", error=str(error))
        task, self._task = self._task, None
        await stop_task(task)

    async def __aenter__(self) -> DesiredState:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, position: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.position < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"desired state is at position {self.position}, not {position}; retry shortly")
            event = self._advanced
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    async def _run(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            tail = self._store.tail(after=self.position, categories=CATEGORIES)
            try:
                async for recorded in tail:
                    self._fold(recorded)
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep answering; the tail restarts
                log.error("desired-state tail failed; restarting", error=describe(error))
                await asyncio.sleep(backoff.next())
            finally:
                await tail.aclose()  # type: ignore[attr-defined]

    async def caught_up(self) -> None:
        """Wait (briefly) until every intent/runtime event committed by now is folded: what
        other answers derived from this state (the secret responder) wait for too."""
        await self._head_seen()

    async def _head_seen(self) -> None:
        """Wait until every intent/runtime event committed by now is folded (the fold's
        position only moves on those categories, so ask the store which is the last)."""
        head = await self._store.head()
        if head <= self.position:
            return
        ours = await self._store.read_all(after=self.position, limit=10_000, categories=CATEGORIES, to_position=head)
        if ours:
            await self.wait_for(ours[-1].position, timeout=self._answer_wait)

    # -- folding -------------------------------------------------------------------------

    def _decode(self, recorded: RecordedEvent) -> object:
        return self._registry.decode(recorded).message

    def _fold(self, recorded: RecordedEvent) -> None:
        if recorded.position <= self.position:
            return
        try:
            message = self._decode(recorded)
            self._evolve(recorded, message)
        except ConvoyError as error:
            log.error("desired state skipped an event", position=recorded.position, error=str(error))
        self.position = recorded.position
        event, self._advanced = self._advanced, asyncio.Event()
        event.set()

    def _evolve(self, recorded: RecordedEvent, message: object) -> None:
        if isinstance(message, events_pb2.IntentIssued):
            held = self._runtimes.setdefault(message.target.runtime, _Runtime())
            current = held.intents.get(recorded.stream_id)
            if current is not None and self._decode(current).generation >= message.generation:  # type: ignore[attr-defined]
                return
            held.intents[recorded.stream_id] = recorded
            if message.action == convergence_pb2.INTENT_ACTION_DELETE:
                held.checks.pop(recorded.stream_id, None)
        elif isinstance(message, events_pb2.ChecksRequested):
            held = self._runtimes.setdefault(message.target.runtime, _Runtime())
            if message.checks:
                held.checks[recorded.stream_id] = recorded
            else:
                held.checks.pop(recorded.stream_id, None)
        elif isinstance(message, events_pb2.RuntimeRegistered | events_pb2.RuntimeUpdated):
            self._runtimes.setdefault(message.runtime.name, _Runtime()).config = message.runtime
        elif isinstance(message, events_pb2.RuntimeDeregistered):
            held = self._runtimes.get(message.name)
            if held is not None:
                held.config = None

    # -- answering -----------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            runtime = self._runtime_of(msg.subject)
            if not natsauth.reply_belongs_to(self.instance, runtime, msg.reply):
                self.refused += 1
                log.warning(
                    "desired-state request dropped: its reply subject does not belong to the asking runtime",
                    subject=msg.subject, runtime=runtime, reply=msg.reply[:200],
                )
                return
            if _is_probe(msg):
                await self._answer_probe(msg.reply, *await self._stream_bounds())
                return
            try:
                first, last = await self._stream_bounds()
            except ConvoyError as error:  # the desired state does not need the stream; 0 claims nothing
                log.warning("desired-state answer without the events stream's bounds", error=str(error))
                first, last = 0, 0
            await self._head_seen()
            await self._answer(msg.reply, runtime, first, last)
        except ConvoyError as error:
            log.warning("desired-state request not answered", subject=msg.subject, error=str(error))
        except Exception as error:  # noqa: BLE001 - a callback must never kill the subscription
            log.error("desired-state answer failed", subject=msg.subject, error=describe(error))

    def _runtime_of(self, subject: str) -> str:
        runtime = natsauth.runtime_of_desired(self.instance, subject)
        if runtime is None:
            raise InvalidInput(f"{subject!r} is not a desired-state request subject of instance {self.instance}")
        return runtime

    async def _stream_bounds(self) -> tuple[int, int]:
        """The events stream's first and last sequence, read now: never a cached reading,
        since the agent trusts it to be younger than its request (continuity.Continuity)."""
        js = self._nc.jetstream()
        stream = bus.events_stream(self.instance)
        info = await bus.guarded("reading the events stream's bounds", lambda: js.stream_info(stream))
        return info.state.first_seq, info.state.last_seq

    async def _answer_probe(self, reply: str, first: int, last: int) -> None:
        end = {
            natsauth.H_DESIRED_COUNT: "0",
            natsauth.H_DESIRED_POSITION: str(self.position),
            natsauth.H_DESIRED_STREAM_FIRST: str(first),
            natsauth.H_DESIRED_STREAM_LAST: str(last),
        }
        await self._nc.publish(reply, b"", headers=end)
        self.probes += 1

    async def _answer(self, reply: str, runtime: str, first: int = 0, last: int = 0) -> None:
        held = self._runtimes.get(runtime, _Runtime())
        items = [*held.intents.values(), *held.checks.values()]
        items.sort(key=lambda r: r.position)
        for recorded in items:
            await self._nc.publish(reply, recorded.data, headers=bus.event_headers(recorded))
        end = {
            natsauth.H_DESIRED_COUNT: str(len(items)),
            natsauth.H_DESIRED_POSITION: str(self.position),
            natsauth.H_DESIRED_STREAM_FIRST: str(first),
            natsauth.H_DESIRED_STREAM_LAST: str(last),
        }
        config = held.config.SerializeToString(deterministic=True) if held.config is not None else b""
        await self._nc.publish(reply, config, headers=end)
        self.answered += 1


def _is_probe(msg: Msg) -> bool:
    return (msg.headers or {}).get(natsauth.H_DESIRED_PROBE) == "stream"
