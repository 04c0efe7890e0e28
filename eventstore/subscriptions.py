"""Durable pull consumers that keep going: through poison messages and server restarts.

A consumer of the bus (the agent on its intents, the API on observations) must never be
wedged by one bad message and must never silently stop. So:

- Explicit acks, confirmed: a handled message is acked with `ack_sync` (nats-py's `ack()`
  is fire-and-forget, and a lost ack means a redelivery the handler did not expect).
- A handler exception naks the message with exponential backoff; on the last allowed
  attempt the message is published to the dead-letter subject
  `convoy.<instance>.dlq.<consumer>` (headers name the original subject, stream, sequence,
  delivery count and error) and terminated, so it is never delivered again.
- The consumer's server-side MaxDeliver is `max_deliver + 2`: the handler runs at most
  `max_deliver` times, and the spare deliveries only carry a message to the dead-letter
  subject when its last attempt's outcome was lost (the process died, the ack wait expired,
  NATS was down while dead-lettering).
- nats.py #504: a pull subscription may stop receiving after the server restarts. We
  keep our own pull request outstanding (one inbox, one request at a time, handled as
  messages arrive) and every request asks for idle heartbeats: silence means the request
  is gone, and we make sure the consumer exists and ask again.

Delivery is at least once; handlers must be idempotent (for example, by committing their
effects with a tracking checkpoint, see `EventStore.commit`) and finish within `ack_wait`.

Two handler shapes: a `Handler` takes one message at a time. A `BatchHandler` takes every
message already received (up to `batch`, in delivery order) and answers one outcome per
message — `None` handled, an exception failed — so it can record a whole batch in one
store commit; each message is then acked, retried or dead-lettered by its own outcome
(a batch handler that raises fails every message of the batch). In batch mode the next
pull request goes out before the batch is handled, so the following messages arrive
while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import bus
from eventstore.errors import ConvoyError, InvalidInput, Unavailable
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import RecordedEvent

log = structlog.get_logger("convoy.subscriptions")

H_DLQ_SUBJECT = "Convoy-Dlq-Subject"
H_DLQ_STREAM = "Convoy-Dlq-Stream"
H_DLQ_SEQUENCE = "Convoy-Dlq-Stream-Sequence"
H_DLQ_CONSUMER = "Convoy-Dlq-Consumer"
H_DLQ_DELIVERIES = "Convoy-Dlq-Deliveries"
H_DLQ_ERROR = "Convoy-Dlq-Error"
H_DLQ_MSG_ID = "Convoy-Dlq-Msg-Id"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SPARE_DELIVERIES = 2


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a handler (no nats-py types: handlers stay library-free)."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    stream_sequence: int
    attempt: int
    """1 on first delivery; at most `max_deliver`."""

    def event(self) -> RecordedEvent:
        """The stored event, if this message was published by the relay."""
        return bus.event_from_message(self.headers, self.data)


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[Sequence[Exception | None]]]
"""Handles several messages; answers, in their order, None (handled: ack) or the
exception that failed that message (retried with backoff, dead-lettered on its last
attempt)."""


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    max_deliver: int = 5
    """Handler attempts per message before it goes to the dead-letter subject."""
    ack_wait: float = 30.0
    """Seconds a handler may take before the server redelivers the message."""
    batch: int = 100
    """Messages asked for at a time. They wait in our inbox while earlier ones are
    handled, and their ack wait runs meanwhile: keep batch x handler time under ack_wait."""
    fetch_timeout: float = 5.0
    heartbeat: float = 1.0
    """Idle heartbeat asked for with each pull request (at most half of `fetch_timeout`)."""
    missed_heartbeats: int = 3
    """Heartbeats missed in a row before the pull request is taken for lost."""
    retry_delay: float = 0.5
    """First nak delay; doubles per attempt up to `max_retry_delay`."""
    max_retry_delay: float = 30.0
    max_ack_pending: int = 1000
    ack_timeout: float = 5.0
    """How long to wait for the server to confirm an ack, a term or a dead-letter publish."""
    start: Literal["all", "new"] = "all"
    """Where a newly created consumer starts."""
    max_backoff: float = 2.0


@dataclass(slots=True)
class SubscriptionStats:
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    rebinds: int = 0
    errors: int = 0


class DurableSubscription:
    """A named, durable pull consumer on one stream, run as a supervised task."""

    def __init__(
        self,
        nc: Client,
        *,
        instance: str,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        settings: SubscriptionSettings = SubscriptionSettings(),  # frozen, so sharing is safe
    ) -> None:
        """Give exactly one of `handler` (one message per call) and `batch_handler`."""
        if not _NAME.fullmatch(stream):
            raise InvalidInput(f"invalid stream name {stream!r}")
        if not _NAME.fullmatch(durable):
            raise InvalidInput(f"invalid consumer name {durable!r}: use 1-64 letters, digits, '_' or '-'")
        if not filter_subjects:
            raise InvalidInput("a subscription needs at least one filter subject")
        if settings.max_deliver < 1 or settings.heartbeat * 2 > settings.fetch_timeout:
            raise InvalidInput("max_deliver must be >= 1 and heartbeat at most half of fetch_timeout")
        if (handler is None) == (batch_handler is None):
            raise InvalidInput("a subscription needs either a handler or a batch handler")
        if settings.batch < 1:
            raise InvalidInput("batch must be >= 1")
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.instance = bus.validate_instance(instance)
        self.stream = stream
        self.durable = durable
        self.filter_subjects = list(filter_subjects)
        self.dlq_subject = bus.dlq_subject(instance, durable)
        self._handler = handler
        self._batch_handler = batch_handler
        self.settings = settings
        self.stats = SubscriptionStats()
        self.name = f"convoy-subscription:{stream}:{durable}"
        self._task: asyncio.Task[None] | None = None
        self._inbox: Subscription | None = None
        self._inbox_prefix = ""
        self._requests = 0
        self._current = ""
        """Reply subject of the pull request outstanding."""
        self._outstanding = 0
        """Messages the outstanding pull request may still bring."""
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._stopping = False
        self._busy = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def ensure_consumer(self) -> None:
        """Create the durable consumer, or update it to these settings."""
        s = self.settings
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            max_deliver=s.max_deliver + _SPARE_DELIVERIES,
            max_ack_pending=s.max_ack_pending,
            deliver_policy=DeliverPolicy.ALL if s.start == "all" else DeliverPolicy.NEW,
        )
        if len(self.filter_subjects) == 1:
            config.filter_subject = self.filter_subjects[0]
        else:
            config.filter_subjects = self.filter_subjects
        await bus.guarded(f"creating consumer {self.durable}", lambda: self._js.add_consumer(self.stream, config))

    async def start(self) -> None:
        """Create the consumer (errors surface here), then consume in the background."""
        if self.running:
            return
        self._stopping = False
        await self._bind()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop consuming; let a running handler finish for up to `grace` seconds.
        Messages received but not handled are handed back at once."""
        self._stopping = True
        task, self._task = self._task, None
        await stop_task(task, grace=grace if self._busy else 0.0)
        await self._unbind(release=True)

    async def __aenter__(self) -> DurableSubscription:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(base=0.05, cap=self.settings.max_backoff)
        failures = 0
        while not self._stopping:
            try:
                if self._inbox is None:
                    await self._bind()
                await self._consume(backoff)
            except Exception as error:  # noqa: BLE001 - supervised: only stop() ends consumption
                failures += 1
                self.stats.errors += 1
                if isinstance(error, ConvoyError):
                    log.warning("subscription recovering", subscription=self.name, error=str(error))
                else:
                    log.error("subscription failed; recovering", subscription=self.name, error=describe(error))
                if failures % 3 == 0:
                    await self._unbind(release=True)  # last resort: a fresh inbox
                while not self._nc.is_connected and not self._nc.is_closed:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(backoff.next())
            else:
                failures = 0

    async def _consume(self, backoff: Backoff) -> None:
        """Keep one pull request outstanding and handle messages as they arrive.

        nats-py's `fetch` is not used: it re-computes `expires` for its second request
        but keeps the heartbeat, which the server then refuses ("heartbeat value too
        large"), and it cannot tell a silent server from an idle one without that
        heartbeat. Here every request asks for idle heartbeats and has its own reply
        subject, so silence from the current request means it is gone (server restart,
        nats.py #504): we make sure the consumer exists and ask again, on the same inbox,
        so messages still on their way from an earlier request are not lost."""
        s = self.settings
        inbox = self._inbox
        assert inbox is not None
        await self.ensure_consumer()
        request = json.dumps(
            {"batch": s.batch, "expires": int(s.fetch_timeout * 1e9), "idle_heartbeat": int(s.heartbeat * 1e9)}
        ).encode()
        silence = s.missed_heartbeats * s.heartbeat
        self._outstanding = 0
        self._current = ""
        while not self._stopping:
            if self._outstanding <= 0:
                await self._request(request)
            msg = await self._receive(inbox, silence)
            if not self._is_message(msg):
                continue
            self._outstanding -= 1
            if self._batch_handler is None:
                self._busy = True
                try:
                    await self._process(msg)
                finally:
                    self._busy = False
                backoff.reset()
                continue
            batch, failure = await self._collect(inbox, msg, silence)
            if self._outstanding <= 0 and failure is None and not self._stopping:
                try:  # the next messages arrive while this batch is handled
                    await self._request(request)
                except Exception as error:  # noqa: BLE001 - raised once the batch is handled
                    failure = error
            self._busy = True
            try:
                await self._process_batch(batch)
            finally:
                self._busy = False
            backoff.reset()
            if failure is not None:
                raise failure

    async def _request(self, request: bytes) -> None:
        self._requests += 1
        self._current = f"{self._inbox_prefix}.{self._requests}"
        publish = functools.partial(self._nc.publish, self._next, request, reply=self._current)
        await bus.guarded("requesting messages", publish)
        self._outstanding = self.settings.batch

    async def _receive(self, inbox: Subscription, silence: float) -> Msg:
        try:
            return await inbox.next_msg(timeout=silence)
        except nats.errors.TimeoutError as error:
            raise Unavailable(f"no message or heartbeat from consumer {self.durable} in {silence}s") from error
        except bus.NATS_ERRORS as error:
            raise bus.translate(error, f"receiving from consumer {self.durable}") from error

    def _is_message(self, msg: Msg) -> bool:
        """True for a stream message; False for a status the loop has dealt with (the
        pull request is alive, or done and to be renewed); raises for a broken consumer."""
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            return True
        if msg.subject != self._current:
            return False  # a late word about an earlier request
        if status == "100":
            return False  # idle heartbeat: the request is alive
        if status in ("404", "408"):
            self._outstanding = 0  # no messages / request expired: ask again
            return False
        if status == "409" and "deleted" not in (msg.headers or {}).get("Description", "").lower():
            self._outstanding = 0  # batch completed, max waiting exceeded, …: ask again
            return False
        description = (msg.headers or {}).get("Description", "")
        raise Unavailable(f"consumer {self.durable} answered {status} {description}")

    async def _collect(self, inbox: Subscription, first: Msg, silence: float) -> tuple[list[Msg], Exception | None]:
        """`first` and the messages already waiting in the inbox, up to `batch`, without
        waiting for more. A failure met on the way is returned, to raise once the
        messages collected before it are handled."""
        batch = [first]
        while len(batch) < self.settings.batch and inbox.pending_msgs > 0:
            try:
                msg = await self._receive(inbox, silence)
                if self._is_message(msg):
                    self._outstanding -= 1
                    batch.append(msg)
            except Exception as error:  # noqa: BLE001 - handled after the batch
                return batch, error
        return batch, None

    async def _bind(self) -> None:
        """Make sure the consumer exists and open a fresh inbox for its messages."""
        if self._inbox is not None:
            self.stats.rebinds += 1
            await self._unbind(release=True)
        await self.ensure_consumer()
        prefix = self._nc.new_inbox()
        self._inbox = await bus.guarded(
            f"subscribing for consumer {self.durable}", lambda: self._nc.subscribe(f"{prefix}.*")
        )
        self._inbox_prefix = prefix

    async def _unbind(self, *, release: bool) -> None:
        """Drop the inbox; with `release`, first hand back what it holds unhandled."""
        inbox, self._inbox = self._inbox, None
        if inbox is None or not self._nc.is_connected:
            return
        held: list[Msg] = []
        if release:
            for _ in range(inbox.pending_msgs):
                with contextlib.suppress(Exception):
                    msg = await inbox.next_msg(timeout=0.01)
                    if not (msg.headers and "Status" in msg.headers):
                        held.append(msg)
        with contextlib.suppress(Exception):
            await inbox.unsubscribe()
        for msg in held:  # after unsubscribing, so they are not redelivered to this inbox
            with contextlib.suppress(Exception):
                await msg.nak()

    @staticmethod
    def _delivery(msg: Msg) -> Delivery:
        meta = msg.metadata
        return Delivery(
            subject=msg.subject,
            data=msg.data,
            headers=msg.headers or {},
            stream_sequence=meta.sequence.stream,
            attempt=meta.num_delivered,
        )

    async def _process(self, msg: Msg) -> None:
        delivery = self._delivery(msg)
        limit = self.settings.max_deliver
        if delivery.attempt > limit:
            await self._dead_letter(msg, delivery, "the last attempt never reported an outcome (crash or ack wait expired)")
            return
        assert self._handler is not None
        try:
            await self._handler(delivery)
        except Exception as error:  # noqa: BLE001 - any handler failure is a retry or a dead letter
            await self._failed(msg, delivery, error)
            return
        await bus.guarded("ack", lambda: msg.ack_sync(timeout=self.settings.ack_timeout))
        self.stats.handled += 1

    async def _process_batch(self, msgs: list[Msg]) -> None:
        """Hand the batch to the batch handler, then settle every message by its outcome:
        acks confirmed together, failures retried or dead-lettered one by one."""
        limit = self.settings.max_deliver
        live: list[tuple[Msg, Delivery]] = []
        for msg in msgs:
            delivery = self._delivery(msg)
            if delivery.attempt > limit:
                await self._dead_letter(msg, delivery, "the last attempt never reported an outcome (crash or ack wait expired)")
            else:
                live.append((msg, delivery))
        if not live:
            return
        assert self._batch_handler is not None
        outcomes: Sequence[Exception | None]
        try:
            outcomes = await self._batch_handler([d for _, d in live])
            if len(outcomes) != len(live):
                raise InvalidInput(f"the batch handler answered {len(outcomes)} outcomes for {len(live)} messages")
        except Exception as error:  # noqa: BLE001 - the whole batch failed: each message retries
            outcomes = [error] * len(live)
        for (msg, delivery), outcome in zip(live, outcomes, strict=True):
            if outcome is not None:
                await self._failed(msg, delivery, outcome)
        handled = [msg for (msg, _), outcome in zip(live, outcomes, strict=True) if outcome is None]
        timeout = self.settings.ack_timeout
        acks = await asyncio.gather(
            *(bus.guarded("ack", functools.partial(msg.ack_sync, timeout=timeout)) for msg in handled),
            return_exceptions=True,
        )
        errors = [a for a in acks if isinstance(a, BaseException)]
        self.stats.handled += len(acks) - len(errors)
        if errors:  # unconfirmed acks: those messages come back after ack_wait (handlers are idempotent)
            raise errors[0]

    async def _failed(self, msg: Msg, delivery: Delivery, error: Exception) -> None:
        """A handler failure: nak with backoff, or dead-letter on the last attempt."""
        reason = f"{type(error).__name__}: {error}"
        if delivery.attempt >= self.settings.max_deliver:
            await self._dead_letter(msg, delivery, reason)
            return
        delay = min(self.settings.max_retry_delay, self.settings.retry_delay * 2 ** (delivery.attempt - 1))
        log.info("handler failed; will retry", subscription=self.name, attempt=delivery.attempt, retry_in=delay, error=reason)
        self.stats.retried += 1
        await bus.guarded("nak", lambda: msg.nak(delay=delay))

    async def _dead_letter(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("Nats-")}
        original_id = delivery.headers.get(bus.H_MSG_ID)
        if original_id:
            headers[H_DLQ_MSG_ID] = original_id
        headers.update(
            {
                bus.H_MSG_ID: f"{self.stream}:{self.durable}:{delivery.stream_sequence}",  # idempotent retries
                H_DLQ_SUBJECT: delivery.subject,
                H_DLQ_STREAM: self.stream,
                H_DLQ_SEQUENCE: str(delivery.stream_sequence),
                H_DLQ_CONSUMER: self.durable,
                H_DLQ_DELIVERIES: str(delivery.attempt),
                H_DLQ_ERROR: " ".join(reason.split())[:1000] or "unknown",
            }
        )
        timeout = self.settings.ack_timeout
        await bus.guarded(
            "dead-lettering", lambda: self._js.publish(self.dlq_subject, delivery.data, headers=headers, timeout=timeout)
        )
        # A confirmed term (msg.term() is fire-and-forget): the message is never delivered again.
        await bus.guarded("terminating", lambda: self._nc.request(msg.reply, b"+TERM", timeout=timeout))
        self.stats.dead_lettered += 1
        log.warning(
            "message dead-lettered",
            subscription=self.name,
            subject=delivery.subject,
            stream_sequence=delivery.stream_sequence,
            attempts=delivery.attempt,
            error=headers[H_DLQ_ERROR],
        )
