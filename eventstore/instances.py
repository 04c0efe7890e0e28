"""Convoy instances on a shared PostgreSQL: provisioning by an operator.

An instance is a schema `<name>` owned by a NOLOGIN role `convoy_<name>_owner`, and a
LOGIN role `convoy_<name>` the services connect as, holding only what the code does:
USAGE on its schema, SELECT + INSERT on `events` (never UPDATE, DELETE or TRUNCATE, and
the migrations' triggers refuse those even to the owner), and on the other tables the
statements eventstore/postgres.py and eventstore/relay.py run. Nothing is granted to
PUBLIC. Migrations run as the admin under `SET ROLE convoy_<name>_owner`, so every object
is the owner's; services never migrate (eventstore.postgres.migrate only checks).

Operators find their instances in `convoy_admin.instances` (a schema only the admin
reads): the NATS half (eventstore.natsauth) renders each instance's account from it.

The SQL is rendered by pure functions (tested without a server); the async functions at
the bottom are a thin asyncpg shell around them, run with the admin URL.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from eventstore import postgres
from eventstore.errors import ConvoyError, InvalidInput, Unavailable

REGISTRY_SCHEMA = "convoy_admin"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_RESERVED = {"admin", "public", "information_schema", REGISTRY_SCHEMA}

TABLE_PRIVILEGES: Mapping[str, tuple[str, ...]] = {
    "events": ("SELECT", "INSERT"),  # append and read; the log is append-only
    "tracking": ("SELECT", "INSERT", "UPDATE"),  # processors' checkpoints (upsert)
    "relay_checkpoints": ("SELECT", "INSERT", "UPDATE"),  # the relay's checkpoint (upsert)
    "api_idempotency": ("SELECT", "INSERT", "DELETE"),  # written once, never changed; purged after the TTL
    "snapshots": ("SELECT", "INSERT", "UPDATE", "DELETE"),  # read-model snapshots: upsert, keep the newest two
    "schema_migrations": ("SELECT",),  # services check the schema is current
    "instance_secret": ("SELECT",),  # channel, lock and token keys derive from it
    "append_lock": ("UPDATE",),  # LOCK TABLE ... IN EXCLUSIVE MODE needs it; the table is empty
}
"""The service role's privileges, table by table: exactly the statements the services run."""

LIMITS = ("max_connections", "max_storage", "max_memory", "max_streams", "max_consumers")
"""NATS account limits an instance may carry (`limits` in the registry): integers;
storage and memory in bytes."""

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class InstanceExists(ConvoyError):
    """An instance (or a schema or role of its names) already exists. Not retryable:
    pick another name or delete the old instance."""


class UnknownInstance(ConvoyError):
    """No instance of that name is registered. Not retryable: see `convoy instances list`."""


class InstanceInUse(ConvoyError):
    """The instance's role has open sessions. Stop its services (or pass --force to end
    them) and retry."""


class ProvisioningFailed(ConvoyError):
    """PostgreSQL refused a provisioning statement for another reason; the message is the
    server's. Nothing was changed (each operation is one transaction)."""


class AdminPrivilegeMissing(ConvoyError):
    """The admin URL's role may not provision (it needs CREATEROLE and CREATE on the
    database, or superuser). Not retryable with this URL."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One row of `convoy_admin.instances`."""

    name: str
    created_at: datetime
    nats_system_bcrypt: str
    """bcrypt of the password the instance's control plane uses for its NATS account's
    system user (the password itself is only in the instance's env file)."""
    limits: dict[str, int] = field(default_factory=dict)
    """NATS account limits (keys from `LIMITS`); empty: none."""


@dataclass(frozen=True, slots=True)
class Created:
    record: InstanceRecord
    database_url: str = field(repr=False)
    """The service role's URL: it holds the role's password, show it to nobody."""


# -- names and input -------------------------------------------------------------------


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid instance name {name!r}: use 1-31 lower-case letters, digits or '_', starting with a letter"
        )
    if name in _RESERVED or name.startswith("pg_") or name.endswith("_owner"):
        raise InvalidInput(
            f"instance name {name!r} is reserved (not {', '.join(sorted(_RESERVED))}, "
            "nor starting with 'pg_' or ending with '_owner')"
        )
    return name


def owner_role(name: str) -> str:
    return f"convoy_{validate_name(name)}_owner"


def service_role(name: str) -> str:
    return f"convoy_{validate_name(name)}"


def parse_limits(values: Mapping[str, str | int | None]) -> dict[str, int]:
    """Validate NATS account limits given on the command line: counts are positive
    integers, storage and memory also take K/M/G/T suffixes (1024-based)."""
    limits: dict[str, int] = {}
    for key, value in values.items():
        if key not in LIMITS:
            raise InvalidInput(f"unknown limit {key!r}: use {', '.join(LIMITS)}")
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        text = str(value).strip()
        if key in ("max_storage", "max_memory"):
            match = _SIZE.fullmatch(text)
            if match is None:
                raise InvalidInput(f"{flag} must be a size in bytes such as 1073741824, 512M or 10G, not {text!r}")
            amount = int(match.group(1)) * _UNITS[match.group(2).upper()]
        else:
            if not text.isdigit():
                raise InvalidInput(f"{flag} must be a whole number, not {text!r}")
            amount = int(text)
        if amount < 1:
            raise InvalidInput(f"{flag} must be at least 1")
        limits[key] = amount
    return limits


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), so
    CREATE ROLE carries no plain password a statement log could keep."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def service_url(admin_dsn: str, name: str, password: str) -> str:
    """The admin URL with the service role and its password instead of the admin's."""
    parts = urlsplit(admin_dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise InvalidInput("the admin URL must be a postgresql:// URL")
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("user", "password")])
    netloc = f"{quote(service_role(name), safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# -- SQL rendering ------------------------------------------------------------------------


REGISTRY_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {REGISTRY_SCHEMA}",
    f"REVOKE ALL ON SCHEMA {REGISTRY_SCHEMA} FROM PUBLIC",
    f"CREATE TABLE IF NOT EXISTS {REGISTRY_SCHEMA}.instances ("
    "name text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
    "nats_system_bcrypt text NOT NULL, limits jsonb NOT NULL DEFAULT '{}'::jsonb)",
    f"REVOKE ALL ON {REGISTRY_SCHEMA}.instances FROM PUBLIC",
)
"""The operators' registry: created by (and readable by) the admin only."""


def render_roles(name: str, verifier: str) -> list[str]:
    if not verifier.startswith("SCRAM-SHA-256$") or "'" in verifier:
        raise InvalidInput("the role's password must be given as a SCRAM-SHA-256 verifier")
    owner, service = owner_role(name), service_role(name)
    return [
        f"CREATE ROLE {owner} NOLOGIN",
        # The admin applies migrations as the owner (SET ROLE needs membership unless superuser).
        f"GRANT {owner} TO CURRENT_USER",
        f"CREATE ROLE {service} LOGIN NOINHERIT PASSWORD '{verifier}'",
        f"ALTER ROLE {service} SET search_path TO {name}",
        f"CREATE SCHEMA {name} AUTHORIZATION {owner}",
        f"REVOKE ALL ON SCHEMA {name} FROM PUBLIC",
        # Functions get EXECUTE for PUBLIC by default; migrations' functions must not. (Not
        # "IN SCHEMA": per-schema defaults can only add to the global ones, never revoke.)
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
    ]


def render_grants(name: str) -> list[str]:
    """The service role's privileges, from scratch (idempotent: run after every upgrade)."""
    service = service_role(name)
    statements = [
        f"REVOKE ALL ON SCHEMA {name} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {name} TO {service}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {name} FROM PUBLIC, {service}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {name} FROM PUBLIC, {service}",
        f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {name} FROM PUBLIC, {service}",
    ]
    for table, privileges in TABLE_PRIVILEGES.items():
        statements.append(f"GRANT {', '.join(privileges)} ON {name}.{table} TO {service}")
    return statements


def render_drop(name: str) -> list[str]:
    owner, service = owner_role(name), service_role(name)
    return [
        f"DROP SCHEMA IF EXISTS {name} CASCADE",
        f"DROP OWNED BY {service}, {owner}",
        f"DROP ROLE IF EXISTS {service}",
        f"DROP ROLE IF EXISTS {owner}",
        f"DELETE FROM {REGISTRY_SCHEMA}.instances WHERE name = '{name}'",
    ]


# -- the asyncpg shell ----------------------------------------------------------------------


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """asyncpg's errors, as Convoy's (whether to retry, what to fix)."""
    try:
        yield
    except asyncpg.InsufficientPrivilegeError as error:
        raise AdminPrivilegeMissing(
            f"the admin URL's role may not do this ({error}): provisioning needs a superuser, or a role with "
            "CREATEROLE and CREATE on the database"
        ) from None
    except (asyncpg.DuplicateObjectError, asyncpg.DuplicateSchemaError, asyncpg.UniqueViolationError) as error:
        raise InstanceExists(f"{what}: {error} (created at the same time by someone else?)") from None
    except postgres.UNAVAILABLE_ERRORS as error:
        raise Unavailable(f"PostgreSQL unavailable while {what}: {type(error).__name__}: {error}") from error
    except asyncpg.PostgresError as error:
        raise ProvisioningFailed(f"PostgreSQL refused {what}: {error}") from None


@contextlib.asynccontextmanager
async def _admin(admin_dsn: str, what: str) -> AsyncIterator[asyncpg.Connection]:
    with _translated(what):
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            yield conn
        finally:
            await conn.close()


def _record(row: asyncpg.Record) -> InstanceRecord:
    return InstanceRecord(row["name"], row["created_at"], row["nats_system_bcrypt"], dict(json.loads(row["limits"])))


async def _run(conn: asyncpg.Connection, statements: Sequence[str]) -> None:
    for statement in statements:
        await conn.execute(statement)


async def create(
    admin_dsn: str, name: str, *, nats_system_bcrypt: str, limits: Mapping[str, int] | None = None
) -> Created:
    """Provision instance `name` in one transaction: roles, schema, migrations (as the
    owner), grants, registry row. Returns its record and the service role's URL."""
    validate_name(name)
    limits = parse_limits(dict(limits or {}))
    password = secrets.token_urlsafe(32)
    async with _admin(admin_dsn, f"creating instance {name!r}") as conn, conn.transaction():
        await _run(conn, REGISTRY_DDL)
        taken = await conn.fetchval(
            f"SELECT EXISTS (SELECT FROM {REGISTRY_SCHEMA}.instances WHERE name = $1) "
            "OR to_regnamespace($1) IS NOT NULL "
            "OR EXISTS (SELECT FROM pg_roles WHERE rolname = ANY($2::text[]))",
            name,
            [owner_role(name), service_role(name)],
        )
        if taken:
            raise InstanceExists(
                f"instance {name!r} (or its schema {name!r} or roles {service_role(name)}, {owner_role(name)}) "
                "already exists; pick another name or `convoy instances delete` it first"
            )
        await _run(conn, render_roles(name, scram_verifier(password)))
        await postgres.apply_migrations(conn, name, role=owner_role(name))
        await _run(conn, render_grants(name))
        row = await conn.fetchrow(
            f"INSERT INTO {REGISTRY_SCHEMA}.instances (name, nats_system_bcrypt, limits) VALUES ($1, $2, $3::jsonb) "
            "RETURNING name, created_at, nats_system_bcrypt, limits::text",
            name,
            nats_system_bcrypt,
            json.dumps(limits),
        )
    return Created(_record(row), service_url(admin_dsn, name, password))


async def list_instances(admin_dsn: str) -> list[InstanceRecord]:
    """Every registered instance, by name (none when nothing was ever provisioned)."""
    async with _admin(admin_dsn, "listing instances") as conn:
        if await conn.fetchval(f"SELECT to_regclass('{REGISTRY_SCHEMA}.instances')") is None:
            return []
        rows = await conn.fetch(
            f"SELECT name, created_at, nats_system_bcrypt, limits::text FROM {REGISTRY_SCHEMA}.instances ORDER BY name"
        )
    return [_record(r) for r in rows]


async def upgrade(admin_dsn: str, name: str) -> list[int]:
    """Apply the migrations the instance lacks (as its owner) and renew its grants.
    Returns the versions applied."""
    validate_name(name)
    async with _admin(admin_dsn, f"upgrading instance {name!r}") as conn, conn.transaction():
        await _known(conn, name)
        applied = await postgres.apply_migrations(conn, name, role=owner_role(name))
        await _run(conn, render_grants(name))
    return applied


async def delete(admin_dsn: str, name: str, *, force: bool = False) -> None:
    """Drop the instance's schema (its whole log) and both roles, and unregister it.
    Refuses while the service role has sessions, unless `force` ends them."""
    validate_name(name)
    service = service_role(name)
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1"
    async with _admin(admin_dsn, f"deleting instance {name!r}") as conn:
        await _known(conn, name)
        await conn.execute(f"ALTER ROLE {service} NOLOGIN")  # no new sessions from here on
        open_sessions = await conn.fetchval(sessions, service)
        if open_sessions and not force:
            await conn.execute(f"ALTER ROLE {service} LOGIN")
            raise InstanceInUse(
                f"instance {name!r} has {open_sessions} open database session(s): stop its services first, "
                "or pass --force to end them"
            )
        try:
            if open_sessions:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1", service
                )
            async with conn.transaction():
                await _run(conn, render_drop(name))
        except BaseException:
            with contextlib.suppress(Exception):  # not dropped: the instance's services may log in again
                await conn.execute(f"ALTER ROLE {service} LOGIN")
            raise


async def _known(conn: asyncpg.Connection, name: str) -> None:
    registry = await conn.fetchval(f"SELECT to_regclass('{REGISTRY_SCHEMA}.instances')")
    if registry is None or not await conn.fetchval(
        f"SELECT EXISTS (SELECT FROM {REGISTRY_SCHEMA}.instances WHERE name = $1)", name
    ):
        raise UnknownInstance(f"no instance {name!r} is registered; see `convoy instances list`")
