"""The gatekeeper's shell: follows the gate streams of the log and polls every open gate.

Ticketing systems are reached from the control plane, not from the clusters, so this
worker runs next to the planner (`convoy up`, or `convoy gatekeeper`). It reads the log
itself (category `gate`): first everything up to the head, folded into a `GateBook`, so
a restarted gatekeeper resumes exactly the gates nobody decided or closed — no state of
its own — then it follows. One named task per open gate waits for its next poll on the
injected clock, asks the endpoint, lets `polls.judge` decide, and appends the poll as
ExternalApprovalPolled with an id derived from (check id, attempt): a crash after the
append and before the next poll re-reads it from the log instead of recording a second
outcome; a race with another gatekeeper surfaces as DuplicateEventId and is resolved by
reading the stream back.

Secret header values are resolved here (services.secrets.references) for each request
and live only in memory: they are removed from the recorded detail and never logged
(logs name the endpoint's host).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog

from eventstore.codec import EventRegistry
from eventstore.errors import ConvoyError, DuplicateEventId
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import EventStore, RecordedEvent, read_batches
from services.expressions import ExpressionError
from services.gatekeeper import polls
from services.gatekeeper.polls import Gate, GateBook, Verdict
from services.secrets.references import SecretUnavailable, resolve

log = structlog.get_logger("convoy.gatekeeper")

ACTOR = "gatekeeper"


class Clock(Protocol):
    """The planner's clock protocol (services.planner.clock): SystemClock, or FakeClock in tests."""

    def now(self) -> datetime: ...

    async def wait_until(self, when: datetime | None, wake: asyncio.Event) -> None: ...


CATEGORY = "gate"


@dataclass(frozen=True, slots=True)
class GatekeeperSettings:
    read_batch: int = 500
    max_body: int = polls.MAX_BODY


@dataclass(slots=True)
class GatekeeperStats:
    polls: int = 0
    recorded: int = 0
    duplicates: int = 0
    errors: int = 0


class Gatekeeper:
    """`await start()` … `await stop()`; `ready` is set once the log is caught up."""

    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        clock: Clock,
        settings: GatekeeperSettings | None = None,
        environ: Mapping[str, str] | None = None,
        convoy: Callable[[str], str] | None = None,
    ) -> None:
        """`convoy` resolves Convoy-kept secrets (`SecretRef.convoy`): the API's keyring,
        given by the composition; without it such a reference is refused."""
        self._convoy = convoy
        self.store = store
        self.registry = registry
        self.clock = clock
        self.settings = settings or GatekeeperSettings()
        self.stats = GatekeeperStats()
        self.book = GateBook()
        self.ready = asyncio.Event()
        self._environ = environ
        self._session: aiohttp.ClientSession | None = None
        self._follow: asyncio.Task[None] | None = None
        self._polling: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._follow = asyncio.create_task(self._supervise(), name="gatekeeper:follow")

    async def stop(self) -> None:
        await stop_task(self._follow)
        self._follow = None
        for task in list(self._polling.values()):
            await stop_task(task)
        self._polling.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Gatekeeper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def polling(self) -> list[str]:
        """Check ids of the gates being polled now."""
        return sorted(k for k, t in self._polling.items() if not t.done())

    # -- following the log -------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the log is the truth: fold it again
                self.ready.clear()
                self.stats.errors += 1
                delay = backoff.next()
                log.error("gatekeeper failed; re-reading the log", error=describe(error), retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        for task in list(self._polling.values()):
            await stop_task(task)
        self._polling.clear()
        self.book = GateBook()
        head = await self.store.head()
        last = 0
        async for batch in read_batches(self.store, upto=head, categories=[CATEGORY], batch=self.settings.read_batch):
            for recorded in batch:
                self._fold(recorded, start=False)
                last = recorded.position
        for gate in self.book.open_gates():
            self._start_polling(gate)
        self.ready.set()
        log.info("gatekeeper following the log", open_gates=len(self._polling))
        async for recorded in self.store.tail(after=max(last, head), categories=[CATEGORY]):
            self._fold(recorded, start=True)

    def _fold(self, recorded: RecordedEvent, *, start: bool) -> None:
        try:
            message = self.registry.decode(recorded).message
        except ConvoyError as error:
            log.error("gatekeeper skips an event it cannot decode", position=recorded.position, error=str(error))
            return
        gate = self.book.fold(message)
        if gate is None:
            return
        task = self._polling.get(gate.check_id)
        if gate.open and start and (task is None or task.done()):
            self._start_polling(gate)
        elif not gate.open and task is not None:
            self._wake[gate.check_id].set()  # it sees the gate closed and ends

    def _start_polling(self, gate: Gate) -> None:
        self._wake[gate.check_id] = asyncio.Event()
        self._polling[gate.check_id] = asyncio.create_task(self._poll_gate(gate), name=f"gatekeeper:gate:{gate.check_id}")

    # -- polling one gate --------------------------------------------------------

    async def _poll_gate(self, gate: Gate) -> None:
        wake = self._wake[gate.check_id]
        backoff = Backoff(base=0.2, cap=10.0)
        while gate.open:
            due = gate.next_poll_at(self.clock.now())
            await self.clock.wait_until(due, wake)
            wake.clear()
            if not gate.open or self.clock.now() < due:
                continue
            verdict = await self._ask(gate)
            event = polls.poll_event(gate, verdict, self.clock.now())
            new = self.registry.encode(event, actor=ACTOR, event_id=polls.poll_event_id(gate.check_id, event.attempt))
            stream = polls.gate_stream(gate.request.application, gate.request.service, gate.request.channel)
            try:
                await self.store.append(stream, [new])
            except DuplicateEventId:
                # Recorded before (another gatekeeper, or our previous life): the log wins.
                self.stats.duplicates += 1
                for recorded in await self.store.read_stream(stream):
                    self.book.fold(self.registry.decode(recorded).message)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the store is down: poll again later, nothing was recorded
                self.stats.errors += 1
                delay = backoff.next()
                log.warning("could not record a poll; retrying", check=gate.check_id, error=describe(error))
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.stats.recorded += 1
            self.book.fold(event)
            log.info(
                "gate polled",
                check=gate.check_id,
                attempt=event.attempt,
                outcome=polls.outcome_name(event.outcome),
                http_status=event.http_status,
                ticket=event.ticket,
            )

    async def _ask(self, gate: Gate) -> Verdict:
        self.stats.polls += 1
        approval = gate.request.approval
        secrets: dict[str, str] = {}
        try:
            for name, ref in approval.secret_headers.items():
                secrets[name] = resolve(ref, environ=self._environ, convoy=self._convoy)
            request = polls.build_request(gate.request, secrets)
        except SecretUnavailable as error:
            if error.retryable:
                return polls.unreachable(str(error))
            return polls.misconfigured(str(error))
        except polls.TemplateError as error:
            return polls.misconfigured(f"cannot build the request: {error}", secrets=secrets.values())
        host = urlsplit(request.url).hostname or "?"
        assert self._session is not None, "start() first"
        timeout = aiohttp.ClientTimeout(total=polls.request_timeout_of(approval).total_seconds())
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body.encode() if request.body else None,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.content.read(self.settings.max_body)
                answer = polls.Answer(response.status, dict(response.headers), raw.decode("utf-8", errors="replace"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # Not str(error): it may quote the URL, and a URL may carry a token.
            return polls.unreachable(f"no answer from {host}: {type(error).__name__}")
        try:
            return polls.judge(approval, answer, secrets=secrets.values())
        except ExpressionError as error:  # validated at declaration; an older declaration may not have been
            return polls.misconfigured(f"bad expression: {error}")
