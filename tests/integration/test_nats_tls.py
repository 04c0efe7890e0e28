"""Agents reach NATS over TLS whenever the server offers it (eventstore.natstls).

A nats-server with a certificate for 127.0.0.1 signed by a CA this test makes: an agent
given the CA connects and gets its desired state; without it (the system store does not
know this CA) the first connection fails at once with an error that says the
certificate is not trusted and what to give. A server that only *allows* TLS
(`allow_non_tls`) still gets TLS, and a tls:// URL never falls back to plaintext.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from nats.aio.client import Client
from typer.testing import CliRunner

from cli.main import app
from eventstore import bus, natsauth
from eventstore.embedded import NatsServer
from eventstore.natstls import NatsTls, TlsRefused
from eventstore.postgres import PostgresEventStore
from services.agent.agent import Agent, AgentSettings
from services.agent.runtimes.memory import MemoryRuntime
from services.api.auth import nats_password_bcrypt
from tests.conftest import eventually
from tests.integration.test_agent_support import FAST, control_plane
from tests.tlscerts import make_pki

SYSTEM_PASSWORD = secrets.token_urlsafe(16)


def write_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 it signs: (ca, cert, key) PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = make_pki(folder)
    return pki.ca_cert, pki.server_cert, pki.server_key


def tls_block(cert: Path, key: Path, *, allow_non_tls: bool = False) -> str:
    text = f"tls {{\n  cert_file: {json.dumps(str(cert))}\n  key_file: {json.dumps(str(key))}\n}}\n"
    return text + ("allow_non_tls: true\n" if allow_non_tls else "")


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_pki(tmp_path / "pki")


AGENT_SECRET = secrets.token_urlsafe(24)


@pytest.fixture
def tls_nats(tmp_path: Path, pki: tuple[Path, Path, Path], subject_prefix: str) -> Iterator[NatsServer]:
    """Users rendered up front (an external server: Convoy's sync must not rewrite this
    config, whose TLS block is not Convoy's)."""
    _, cert, key = pki
    users = [natsauth.system(subject_prefix, SYSTEM_PASSWORD),
             natsauth.agent(subject_prefix, "rt-a", nats_password_bcrypt(AGENT_SECRET))]
    accounts = natsauth.render(subject_prefix, users)
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=tls_block(cert, key) + accounts)
    server.start()
    yield server
    server.stop()


def encrypted(nc: Client) -> bool:
    writer = nc._transport._io_writer  # type: ignore[union-attr]  # nats-py keeps no public flag for this
    return writer is not None and writer.get_extra_info("ssl_object") is not None


async def test_an_agent_with_the_ca_connects_over_tls_and_gets_its_desired_state(
    pg_store: PostgresEventStore, tls_nats: NatsServer, pki: tuple[Path, Path, Path], subject_prefix: str
) -> None:
    ca, _, _ = pki
    tls = NatsTls(ca)
    async with control_plane(pg_store, tls_nats.url, subject_prefix, system_password=SYSTEM_PASSWORD, tls=tls) as plane:
        secret = AGENT_SECRET
        await plane.register("rt-a", bcrypt=nats_password_bcrypt(secret))
        nc = await bus.connect(
            tls_nats.url, name="tls-agent", tls=tls, user=natsauth.agent_user(subject_prefix, "rt-a"), password=secret,
            inbox_prefix=natsauth.agent_inbox_prefix(subject_prefix, "rt-a"),
        )
        runtime = MemoryRuntime(name="rt-a")
        try:
            assert encrypted(nc)
            settings = AgentSettings(instance=subject_prefix, runtime="rt-a", snapshot_timeout=5.0, subscription=FAST)
            async with Agent(nc=nc, settings=settings, runtime=runtime) as agent:
                await eventually(agent.ready.is_set, message="the TLS agent ready")
                assert agent.stats.snapshots == 1  # its desired state came over TLS
        finally:
            await runtime.close()
            await nc.close()


async def test_without_the_ca_the_certificate_is_refused_clearly_and_at_once(tls_nats: NatsServer) -> None:
    started = time.monotonic()
    with pytest.raises(TlsRefused, match="not trusted.*--nats-ca"):
        await bus.connect(tls_nats.url, name="no-ca", connect_attempts=1)
    assert time.monotonic() - started < 5  # not a hang


async def test_convoy_agent_says_the_certificate_is_not_trusted(tls_nats: NatsServer, tmp_path: Path) -> None:
    (tmp_path / "cred").write_text("secret")
    saved = structlog.get_config()
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke, app,
            ["agent", "--runtime", "rt-a", "--nats-url", tls_nats.url, "--credential-file", str(tmp_path / "cred"),
             "--state-dir", str(tmp_path / "agent"), "--health", ""],
            env={"CONVOY_NATS_CA": None, "CONVOY_CONFIG": str(tmp_path / "none.toml")},
        )
    finally:
        structlog.configure(**saved)
    assert result.exit_code == 2, result.output
    assert "not trusted" in result.output and "--nats-ca" in result.output


async def test_a_server_that_allows_tls_gets_tls(tmp_path: Path, pki: tuple[Path, Path, Path]) -> None:
    ca, cert, key = pki
    server = NatsServer(data_dir=tmp_path / "mixed", config_extra=tls_block(cert, key, allow_non_tls=True))
    server.start()
    try:
        nc = await bus.connect(server.url, name="upgraded", tls=NatsTls(ca))
        try:
            assert encrypted(nc)  # nats-py alone would have stayed in plaintext here
        finally:
            await nc.close()
    finally:
        server.stop()


async def test_a_tls_url_never_falls_back_to_plaintext(own_nats: NatsServer) -> None:
    own_nats.start()
    url = own_nats.url.replace("nats://", "tls://")
    with pytest.raises(TlsRefused, match="offers no TLS"):
        await bus.connect(url, name="plaintext", connect_attempts=1)
    nc = await bus.connect(own_nats.url, name="plain-ok", connect_attempts=1)  # plain where none is offered
    assert not encrypted(nc)
    await nc.close()


def test_a_missing_ca_file_is_bad_input(tmp_path: Path) -> None:
    from eventstore.errors import InvalidInput

    with pytest.raises(InvalidInput, match="no such file"):
        NatsTls(tmp_path / "missing.pem").context()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(InvalidInput, match="no usable PEM"):
        NatsTls(tmp_path / "junk.pem").context()
