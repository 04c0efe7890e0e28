"""The embedded servers: real, ready when they say so, data kept across restarts."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import nats
import pytest

from eventstore import bus, natsauth
from eventstore.embedded import EmbeddedServers, NatsServer, PostgresServer, POSTGRES_SYSTEM_USER
from eventstore.errors import EmbeddedServerError, Unavailable


async def test_nats_restart_keeps_port_and_jetstream_data(own_nats: NatsServer) -> None:
    first_url = own_nats.url
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    await js.publish("keep.one", b"kept")
    await nc.close()
    own_nats.stop()
    own_nats.start()
    assert own_nats.url == first_url
    nc = await nats.connect(own_nats.url)
    try:
        msg = await nc.jetstream().get_last_msg("KEEP", "keep.one")
        assert msg.data == b"kept"
    finally:
        await nc.close()


async def test_postgres_restart_keeps_data_and_uses_password_auth(own_postgres: PostgresServer) -> None:
    conn = await asyncpg.connect(own_postgres.dsn)
    await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    await conn.close()
    own_postgres.stop()
    own_postgres.start()
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        assert await conn.fetchval("SELECT x FROM kept") == 42
    finally:
        await conn.close()
    wrong = own_postgres.dsn.replace(own_postgres.password, "wrong-password")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)
    assert (own_postgres.data_dir / "password").stat().st_mode & 0o077 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the unprivileged server user")
def test_postgres_started_by_root_runs_as_an_unprivileged_user(own_postgres: PostgresServer) -> None:
    import pwd

    assert own_postgres.pid is not None
    uid = os.stat(f"/proc/{own_postgres.pid}").st_uid
    assert pwd.getpwuid(uid).pw_name == POSTGRES_SYSTEM_USER


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "nats", config_extra="this is { not valid nats config")
    with pytest.raises(EmbeddedServerError, match="nats-server exited"):
        server.start()


def test_configured_urls_start_nothing(tmp_path: Path) -> None:
    servers = EmbeddedServers(state_dir=tmp_path, database_url="postgresql://u:p@db/x", nats_url="nats://bus:4222")
    with servers:
        assert servers.postgres is None and servers.nats is None
        assert servers.database_url == "postgresql://u:p@db/x"
        assert servers.nats_url == "nats://bus:4222"


async def test_nats_reload_returns_once_the_new_users_are_in_force(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=natsauth.render("convoy", [natsauth.system("first-password")]))
    server.start()
    try:
        server.config_extra = natsauth.render("convoy", [natsauth.system("second-password")])
        server.reload()
        # No wait between the reload and the connection: the old password is refused at once.
        with pytest.raises(Unavailable):
            await bus.connect(server.url, name="old-password", connect_attempts=1,
                              user=natsauth.SYSTEM_USER, password="first-password")
        nc = await bus.connect(server.url, name="new-password", user=natsauth.SYSTEM_USER, password="second-password")
        await nc.close()
        server.config_extra = "this is { not a configuration"
        with pytest.raises(EmbeddedServerError, match="refused its new configuration"):
            server.reload()
    finally:
        server.stop()
