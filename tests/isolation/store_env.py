"""Two Convoy instances on one PostgreSQL, provisioned the way an operator does it.

Fixture `store_instances` (module scope): the session's embedded PostgreSQL with two
instances made by `eventstore.instances.create`, dropped afterwards. It gives a
`StoreInstances`: `.admin_dsn` (the superuser URL), and `.a` / `.b`, each an
`Instance` with `.name` (the schema; unique per module, e.g. "iso_a_1f2e3d"),
`.dsn` (the service role's URL, as written to the instance's env file), `.role`,
`.owner` (the NOLOGIN owner role) and `.nats_password` (whose bcrypt is in the registry).

Import the fixture into a test module with `from tests.isolation.store_env import
store_instances  # noqa: F401`.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import bcrypt
import pytest

from eventstore import instances
from eventstore.embedded import PostgresServer


@dataclass(frozen=True, slots=True)
class Instance:
    name: str
    dsn: str = field(repr=False)
    nats_password: str = field(repr=False)

    @property
    def role(self) -> str:
        return instances.service_role(self.name)

    @property
    def owner(self) -> str:
        return instances.owner_role(self.name)


@dataclass(frozen=True, slots=True)
class StoreInstances:
    admin_dsn: str = field(repr=False)
    a: Instance
    b: Instance


async def provision(admin_dsn: str, name: str) -> Instance:
    password = secrets.token_urlsafe(24)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()  # low rounds: tests only
    created = await instances.create(admin_dsn, name, nats_system_bcrypt=hashed, limits={"max_streams": 10})
    return Instance(name, created.database_url, password)


@pytest.fixture(scope="module")
async def store_instances(embedded_postgres: PostgresServer) -> AsyncIterator[StoreInstances]:
    suffix = uuid.uuid4().hex[:6]
    admin = embedded_postgres.dsn
    a = await provision(admin, f"iso_a_{suffix}")
    b = await provision(admin, f"iso_b_{suffix}")
    try:
        yield StoreInstances(admin, a, b)
    finally:
        for instance in (a, b):
            await instances.delete(admin, instance.name, force=True)
