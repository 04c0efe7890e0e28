"""Keeps NATS in step with the runtimes in the log: agent users, permissions, consumers.

The log says which runtimes exist and which credential each agent holds now
(AgentCredentialIssued carries the bcrypt of the secret; issuing again rotates it). This
task tails the `runtime` streams and, whenever that changes:

- makes sure each registered runtime's durable consumer `agent-<runtime>` exists on the
  events stream with exactly that runtime's intent filter (agents may only bind to it),
  and removes the consumer of a deregistered runtime;
- when it manages the embedded nats-server, renders the `accounts` block (the control
  account with the system user (`natsauth.system_user`), plus one account with one least-privilege user
  per runtime with a credential, `eventstore.natsauth`) into its config and reloads it, so a rotated credential stops the
  old password at once and a deregistered runtime's agent is locked out. Connections
  already open keep their session; NATS applies new permissions to them on reload.

With an external NATS (`server=None`) only the consumers are managed; the operator
renders the same users into that server's configuration with `convoy nats-users`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import bus, natsauth
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.embedded import NatsServer
from eventstore.errors import ConvoyError, Unavailable
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import EventStore
from schemas.convoy.v1 import events_pb2

log = structlog.get_logger("convoy.api.natsauth")

_SPARE_DELIVERIES = 2  # as eventstore.subscriptions: the agent's handler runs at most AGENT_MAX_DELIVER times


class AgentCredentials:
    """Which runtimes exist and the NATS password hash each agent holds now, folded from
    the `runtime` streams (pure: also what `convoy nats-users` renders for an external
    NATS)."""

    def __init__(self) -> None:
        self.runtimes: set[str] = set()
        self.credentials: dict[str, str] = {}
        """runtime → bcrypt of its agent's current secret."""

    def fold(self, message: object) -> None:
        if isinstance(message, events_pb2.RuntimeRegistered):
            self.runtimes.add(message.runtime.name)
        elif isinstance(message, events_pb2.RuntimeDeregistered):
            self.runtimes.discard(message.name)
            self.credentials.pop(message.name, None)
        elif isinstance(message, events_pb2.AgentCredentialIssued):
            if message.nats_password_bcrypt:
                self.credentials[message.runtime] = message.nats_password_bcrypt
            else:
                self.credentials.pop(message.runtime, None)  # the older one is revoked all the same
                log.warning("agent credential has no NATS password hash; issue a new one", runtime=message.runtime)

    def users(self, instance: str, system: natsauth.User) -> list[natsauth.User]:
        """The system user and one least-privilege user per runtime with a credential."""
        agents = [natsauth.agent(instance, rt, pw) for rt, pw in sorted(self.credentials.items())]
        return [system, *agents]


@dataclass(frozen=True, slots=True)
class Synced:
    position: int
    runtimes: frozenset[str]
    users: frozenset[str]


class NatsAuthSync:
    """`await start()` … `await stop()`; `synced` says what NATS was last brought to."""

    def __init__(
        self,
        *,
        store: EventStore,
        nc: Client,
        instance: str,
        server: NatsServer | None = None,
        system_password: str | None = None,
        registry: EventRegistry | None = None,
    ) -> None:
        if server is not None and not system_password:
            raise ValueError("managing the embedded server's users needs the system password")
        self._store = store
        self._nc = nc
        self._js = nc.jetstream()
        self.instance = bus.validate_instance(instance)
        self._server = server
        self._system_password = system_password
        self._registry = registry or convoy_registry()
        self._known = AgentCredentials()
        self._consumers: set[str] = set()
        self.position = 0
        self.synced = Synced(0, frozenset(), frozenset())
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._applied = asyncio.Event()

    async def start(self) -> None:
        self._dirty.set()  # render once at start, even for an empty log
        self._tasks = [
            asyncio.create_task(self._tail(), name=f"convoy-natsauth:{self.instance}:tail"),
            asyncio.create_task(self._apply_loop(), name=f"convoy-natsauth:{self.instance}:apply"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await stop_task(task)

    async def __aenter__(self) -> NatsAuthSync:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_synced(self, *, timeout: float = 20.0) -> Synced:
        """Wait until NATS reflects every runtime event committed by now."""
        head = await self._store.head()
        deadline = time.monotonic() + timeout
        while True:
            ours = await self._store.read_all(after=self.synced.position, limit=1, categories=["runtime"], to_position=head)
            if not ours and not self._dirty.is_set():
                return self.synced
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"NATS users not synced to position {head} within {timeout}s")
            event = self._applied
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    # -- folding -------------------------------------------------------------------------

    async def _tail(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            tail = self._store.tail(after=self.position, categories=["runtime"])
            try:
                async for recorded in tail:
                    try:
                        self._known.fold(self._registry.decode(recorded).message)
                    except ConvoyError as error:
                        log.error("skipped an undecodable runtime event", position=recorded.position, error=str(error))
                    self.position = recorded.position
                    self._dirty.set()
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - supervised: restart the tail
                log.error("natsauth tail failed; restarting", error=describe(error))
                await asyncio.sleep(backoff.next())
            finally:
                await tail.aclose()  # type: ignore[attr-defined]

    # -- applying ------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.02)  # let a burst of runtime events fold into one reload
            self._dirty.clear()
            position = self.position
            try:
                await self._apply()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - supervised: retry with backoff
                log.warning("NATS users/consumers not synced; retrying", error=str(error))
                self._dirty.set()
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self.synced = Synced(position, frozenset(self._known.runtimes), frozenset(self._known.credentials))
            event, self._applied = self._applied, asyncio.Event()
            event.set()

    async def _apply(self) -> None:
        if self._server is not None:
            assert self._system_password is not None
            text = natsauth.render(self.instance, self._known.users(self.instance, natsauth.system(self.instance, self._system_password)))
            if text != self._server.config_extra:
                self._server.config_extra = text
                await asyncio.to_thread(self._server.reload)
                log.info("NATS users reloaded", agents=sorted(self._known.credentials))
        for runtime in sorted(self._known.runtimes - self._consumers):
            await self._ensure_consumer(runtime)
            self._consumers.add(runtime)
        for runtime in sorted(self._consumers - self._known.runtimes):
            await self._delete_consumer(runtime)
            self._consumers.discard(runtime)

    async def _ensure_consumer(self, runtime: str) -> None:
        durable = natsauth.agent_consumer(runtime)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=natsauth.AGENT_ACK_WAIT,
            max_deliver=natsauth.AGENT_MAX_DELIVER + _SPARE_DELIVERIES,
            max_ack_pending=1000,
            # New intents only: a fresh agent gets the current desired state by asking
            # (services/api/desired.py), never by replaying every intent ever issued.
            deliver_policy=DeliverPolicy.NEW,
            filter_subjects=bus.intent_filter(self.instance, runtime),
        )
        stream = bus.events_stream(self.instance)
        await bus.guarded(f"creating consumer {durable}", lambda: self._js.add_consumer(stream, config))
        log.info("agent consumer ready", runtime=runtime, consumer=durable)

    async def _delete_consumer(self, runtime: str) -> None:
        durable = natsauth.agent_consumer(runtime)
        try:
            await self._js.delete_consumer(bus.events_stream(self.instance), durable)
        except nats.js.errors.NotFoundError:
            pass
        except bus.NATS_ERRORS as error:
            raise bus.translate(error, f"deleting consumer {durable}") from error
        log.info("agent consumer removed", runtime=runtime, consumer=durable)
