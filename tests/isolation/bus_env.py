"""One nats-server shared by two Convoy instances, `a` and `b`, for the bus rows.

Its `accounts {}` block is `natsauth.render_many` of both instances, exactly what
`convoy nats-users --all-instances` renders for an operator: each instance with its
system user, one runtime (`rt`) whose agent has a least-privilege user, and small
account limits so the limit rows can reach them. Both instances' Convoy streams and
their agents' durable consumers exist before a test runs, so a deny is never "there was
nothing to see".

Every connection records the errors the server sends it (`Principal.errors`); probes
decide "denied" only from the server's specific refusal found there or raised (a
permissions violation, JetStream's not-found or limit error, "maximum account active
connections exceeded"), never from a silence.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import bus, natsauth
from eventstore.embedded import NatsServer
from eventstore.natslimits import AccountLimits

INSTANCES = ("a", "b")
RUNTIME = "rt"
LIMITS = AccountLimits(
    max_connections=4,
    max_storage=64 * 1024,
    max_memory=64 * 1024,
    max_streams=4,  # Convoy's three and one more
    max_consumers=8,
    agent_max_connections=1,
)


@dataclass
class Principal:
    """Who connects: an instance's system user or its runtime's agent."""

    instance: str
    agent: bool
    password: str
    errors: list[str] = field(default_factory=list)

    @property
    def user(self) -> str:
        return natsauth.agent_user(self.instance, RUNTIME) if self.agent else natsauth.system_user(self.instance)

    def __str__(self) -> str:
        return f"{self.instance}'s {'agent' if self.agent else 'system user'}"

    def violated(self, kind: str, subject: str) -> bool:
        """Did the server refuse this principal `kind` ("publish"/"subscription") on `subject`?"""
        wanted = f'permissions violation for {kind} to "{subject}"'
        return any(wanted.lower() in error.lower() for error in self.errors)

    def refused(self, text: str) -> bool:
        return any(text in error.lower() for error in self.errors)


@dataclass
class BusEnv:
    server: NatsServer
    principals: dict[tuple[str, bool], Principal]

    def system(self, instance: str) -> Principal:
        return self.principals[(instance, False)]

    def agent(self, instance: str) -> Principal:
        return self.principals[(instance, True)]

    async def open(self, who: Principal, *, attempts: int = 3) -> Client:
        """A connection of `who` (the caller closes it)."""

        async def on_error(error: Exception) -> None:
            who.errors.append(str(error))

        options: dict[str, object] = {}
        if who.agent:
            options["inbox_prefix"] = natsauth.agent_inbox_prefix(who.instance, RUNTIME)
        return await bus.connect(
            self.server.url, name=f"isolation:{who.user}", connect_attempts=attempts, user=who.user,
            password=who.password, error_cb=on_error, **options,
        )

    @contextlib.asynccontextmanager
    async def connect(self, who: Principal, *, attempts: int = 3) -> AsyncIterator[Client]:
        nc = await self.open(who, attempts=attempts)
        try:
            yield nc
        finally:
            await nc.close()


async def settle(nc: Client) -> None:
    """Return once the server has processed everything `nc` sent so far and `nc` has read
    every answer to it (a permissions violation included). nats-py writes a flush's PING
    ahead of what is still pending, so one flush can come back before the server saw the
    publish; the second PING goes out after it, and the server answers in order."""
    await nc.flush()
    await nc.flush()


def accounts(passwords: dict[tuple[str, bool], str]) -> str:
    shares = []
    for instance in INSTANCES:
        hashed = bcrypt.hashpw(passwords[(instance, True)].encode(), bcrypt.gensalt(4)).decode()
        users = (natsauth.system(instance, passwords[(instance, False)]), natsauth.agent(instance, RUNTIME, hashed))
        shares.append(natsauth.InstanceAccounts(instance, users, LIMITS))
    return natsauth.render_many(shares)


@pytest.fixture
def bus_server(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[tuple[str, bool], str]]]:
    passwords = {(i, agent): secrets.token_urlsafe(16) for i in INSTANCES for agent in (False, True)}
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=accounts(passwords))
    server.start()
    yield server, passwords
    server.stop()


@pytest.fixture
async def bus_env(bus_server: tuple[NatsServer, dict[tuple[str, bool], str]]) -> BusEnv:
    server, passwords = bus_server
    env = BusEnv(server, {key: Principal(key[0], key[1], pw) for key, pw in passwords.items()})
    for instance in INSTANCES:  # what each control plane creates: streams, its agent's consumer
        async with env.connect(env.system(instance)) as nc:
            js = nc.jetstream()
            await bus.ensure_streams(js, instance)
            await js.add_consumer(
                bus.events_stream(instance),
                ConsumerConfig(
                    durable_name=natsauth.agent_consumer(RUNTIME),
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    filter_subjects=bus.intent_filter(instance, RUNTIME),
                ),
            )
    return env
