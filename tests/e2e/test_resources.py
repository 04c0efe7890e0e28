"""A linked resource reaches the running service, and its secrets stay references.

`convoy up`'s composition (cli.controlplane) on real PostgreSQL and NATS with the local
process runtime: link a resource with a plain attribute and two secret ones (an env
reference on the agent's machine, and a Convoy-kept secret, SetSecret), apply a service
that names the resource, deploy it, and the running process sees all three values in its
environment — the Convoy-kept one asked for by the agent and delivered sealed to its key
(services/api/secretdelivery.py). Then the grep: neither secret value appears in clear
anywhere Convoy keeps or carries things — every column of every table of the instance's
schema, every message of every JetStream stream of the bus, every core NATS message while
it ran (a wiretap: the secret request and its answer among them), every file under the
state directory (the agent's state and the processes' logs included), the captured logs,
and the API's answers. The grep can fail: the same search finds both values in the
process's environment, and the Convoy-kept one through the control plane's own resolver.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from cli import controlplane, localstate
from eventstore import bus, natsauth
from eventstore.embedded import EmbeddedServers, NatsServer
from eventstore.settings import Settings
from tests.conftest import eventually

SERVICE = r"""
import json, os, sys, time
path = sys.argv[1]
with open(path + ".tmp", "w") as f:
    json.dump(dict(os.environ), f)
os.replace(path + ".tmp", path)
while True:
    time.sleep(3600)
"""


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base, self.headers = session, base, {"Authorization": f"Bearer {token}"}
        self.answers: list[str] = []

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.session.request(method, self.base + path, json=body, headers=self.headers) as response:
            text = await response.text()
            self.answers.append(text)
            assert response.status == 200, (method, path, response.status, text)
            return json.loads(text)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def found_in(value: str, data: bytes | str) -> bool:
    return value.encode() in data if isinstance(data, bytes) else value in data


async def database_rows(database_url: str, schema: str) -> list[bytes | str]:
    """Every value of every row of every table of the instance's schema."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
        assert {t["table_name"] for t in tables} >= {"events"}
        values: list[bytes | str] = []
        for table in tables:
            for row in await conn.fetch(f'SELECT * FROM "{schema}"."{table["table_name"]}"'):
                values += [v if isinstance(v, bytes) else str(v) for v in row.values()]
        return values
    finally:
        await conn.close()


async def bus_messages(nats_url: str, instance: str) -> list[bytes]:
    """Every message (headers and payload) of every stream of the instance."""
    nc = await bus.connect(nats_url, name="grep")
    try:
        js = nc.jetstream(timeout=5)
        out: list[bytes] = []
        names = [s.config.name for s in await js.streams_info() if s.config.name and s.config.name.endswith(instance.upper())]
        assert bus.events_stream(instance) in names and bus.observations_stream(instance) in names
        for name in names:
            state = (await js.stream_info(name)).state
            for seq in range(state.first_seq, state.last_seq + 1):
                try:
                    message = await js.get_msg(name, seq=seq)
                except Exception:  # noqa: BLE001 - a deleted sequence
                    continue
                out.append((message.data or b"") + json.dumps(message.headers or {}).encode())
        assert out
        return out
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def wiretap(nats_url: str) -> AsyncIterator[list[bytes]]:
    """Every core NATS message of the server's account while it runs (subject, reply,
    headers and payload): requests and replies never land in a stream."""
    heard: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        heard.append(f"{msg.subject} {msg.reply} ".encode() + json.dumps(msg.headers or {}).encode() + msg.data)

    nc = await bus.connect(nats_url, name="wiretap")
    try:
        await nc.subscribe(">", cb=on_msg)
        await nc.flush()
        yield heard
    finally:
        await nc.close()


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


async def test_a_resource_reaches_the_running_service_and_its_secret_is_nowhere_in_clear(
    database_url: str, embedded_nats: NatsServer, schema_name: str, tmp_path: Path,
    session: aiohttp.ClientSession, json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    kept = f"kept-{uuid.uuid4().hex}"
    variable = f"E2E_DB_PASSWORD_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(variable, secret)  # on the agent's machine (this process runs the agent)
    seen = tmp_path / "seen-env.json"

    env = {"CONVOY_DATABASE_URL": database_url, "CONVOY_NATS_URL": embedded_nats.url, "CONVOY_INSTANCE": schema_name}
    settings = Settings.from_env(env, state_dir=tmp_path / "state")
    listen = controlplane.Listen(grpc_port=0, http_port=0)
    with EmbeddedServers(state_dir=settings.state_dir, database_url=database_url, nats_url=embedded_nats.url) as servers:
        async with wiretap(embedded_nats.url) as tapped, \
                controlplane.control_plane(settings, servers, listen, local_runtime="local") as running:
            api = Client(session, f"http://127.0.0.1:{running.api.ports.http}", localstate.read_admin_token(servers.state_dir))
            await api.call("PUT", "/v1/runtimes", {"runtime": {
                "name": "local", "kind": "RUNTIME_KIND_EXEC", "exec": {"apply": ["convoy-local", "apply"]}}})
            await api.call("PUT", "/v1/applications", {"application": {"name": "shop", "releaseChannels": [
                {"name": "staging", "runtimes": [{"runtime": "local"}]}]}})
            await api.call("PUT", "/v1/resources", {"resource": {
                "name": "orders-db", "scope": "RESOURCE_SCOPE_APPLICATION", "application": "shop", "kind": "database",
                "attributes": {"host": "db.internal"},
                "secretAttributes": {"password": {"env": variable}, "token": {"convoy": "orders-token"}},
            }})
            # A Convoy-kept secret: the agent asks for it, and gets it sealed to a key of its own.
            await api.call("PUT", "/v1/secrets/orders-token", {"value": kept})
            await api.call("PUT", "/v1/services", {"service": {
                "application": "shop", "name": "web", "resources": ["orders-db"],
                "resourceEnv": [{"env": "DATABASE_HOST", "resource": "orders-db", "attribute": "host"}],
                "programs": [{"name": "web", "command": [sys.executable, "-c", SERVICE, str(seen)]}],
            }})
            await api.call("POST", "/v1/applications/shop/services/web:deploy", {"version": "v1"})

            await eventually(seen.exists, timeout=60, interval=0.05, message="the service wrote its environment")
            environment = json.loads(seen.read_text())
            assert environment["CONVOY_RESOURCE_ORDERS_DB_HOST"] == "db.internal"
            assert environment["DATABASE_HOST"] == "db.internal"
            assert environment["CONVOY_RESOURCE_ORDERS_DB_PASSWORD"] == secret
            assert environment["CONVOY_RESOURCE_ORDERS_DB_TOKEN"] == kept

            async def converged() -> bool:
                answer = await api.call("GET", "/v1/applications/shop/convergence")
                return any(c.get("status") == "INSTANCE_STATUS_CONVERGED" for c in answer.get("channels", []))

            await eventually(converged, timeout=60, interval=0.1, message="staging converged")
            # Everything a reader can ask for, as the admin (who sees the most).
            await api.call("GET", "/v1/resources?application=shop")
            await api.call("GET", "/v1/applications/shop/services/web")
            await api.call("GET", "/v1/applications/shop/services/web/releases")
            await api.call("GET", "/v1/applications/shop/services/web/why?channel=staging")
            await api.call("GET", "/v1/secrets")
            await api.call("GET", "/v1/events?limit=1000")
            await api.call("POST", "/v1/secrets:rotate-key", {"retireOldKeys": False})
            listed = await api.call("GET", "/v1/secrets")
            assert [(s["name"], s["cause"]) for s in listed["secrets"]] == [("orders-token", "rotated")]
            assert listed["currentKeyId"] == listed["secrets"][0]["keyId"]
            # The control plane's own use of a Convoy-kept secret (registry/ticketing credentials).
            resolve = running.api.secrets.resolver(lambda: running.api.projection.state)
            assert resolve("orders-token") == kept

            rows = await database_rows(database_url, schema_name)
            tapped_messages = list(tapped)
            messages = await bus_messages(embedded_nats.url, schema_name)
            files = files_under(settings.state_dir)

    places: dict[str, list[bytes | str]] = {
        "the database": rows,
        "the bus": list(messages),
        "the bus's core messages (requests and replies)": tapped_messages,
        "the state directory": list(files.values()),
        "the logs": [json_logs.getvalue()],
        "the API's answers": api.answers,
    }
    agents = settings.state_dir / "agents" / "local"
    assert any(p.is_relative_to(agents) and p.suffix == ".json" for p in files), sorted(files)  # the agent's state
    assert any(p.suffix == ".log" for p in files), sorted(files)  # the service's own output
    assert '"api call"' in json_logs.getvalue()
    assert any(found_in("CONVOY_RESOURCE_ORDERS_DB_PASSWORD", m) for m in messages)  # the reference travelled
    assert any(found_in(variable, m) for m in messages)  # ... naming where the value lives
    for value in (secret, kept):
        for where, items in places.items():
            assert not any(found_in(value, item) for item in items), f"a secret value is in clear in {where}"
    # The secret's request and its sealed answer crossed the tapped bus (so the grep saw them).
    secret_subject = natsauth.secret_subject(schema_name, "local").encode()
    assert any(m.startswith(secret_subject + b" ") for m in tapped_messages)
    assert found_in("secret delivered sealed", json_logs.getvalue())  # the responder logged it (the grep covers its lines)
    # Not vacuous: the same search finds the value where it must be.
    assert found_in(secret, seen.read_bytes())
    assert found_in(kept, seen.read_bytes())
    assert found_in(secret, os.environ[variable])
