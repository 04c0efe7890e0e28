"""The embedded servers: real, ready when they say so, data kept across restarts, and
supervised the way `convoy up` runs them (EmbeddedServers): a killed server comes back on
its port and its clients find it again; a stopped one is left alone; a second runner on
the same state folder is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from eventstore import bus, natsauth
from eventstore.embedded import POSTGRES_SYSTEM_USER, EmbeddedServers, NatsServer, PostgresServer, RestartPolicy
from eventstore.errors import EmbeddedServerError, Unavailable
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import NewEvent
from tests.conftest import eventually


@pytest.mark.fault
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


@pytest.mark.fault
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


@pytest.mark.fault
async def test_nats_reload_returns_once_the_new_users_are_in_force(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=natsauth.render("convoy", [natsauth.system("convoy", "first-password")]))
    server.start()
    try:
        server.config_extra = natsauth.render("convoy", [natsauth.system("convoy", "second-password")])
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


def zombie(pid: int) -> bool:
    """Whether `pid` is an exited child nobody reaped (`<defunct>`)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.fault
async def test_a_killed_nats_server_is_restarted_on_its_port_and_its_clients_reconnect(
    tmp_path: Path, database_url: str
) -> None:
    with EmbeddedServers(state_dir=tmp_path, database_url=database_url, nats_url=None) as servers:
        server = servers.nats
        assert server is not None and server.pid is not None
        port, pid = server.port, server.pid
        nc = await bus.connect(servers.nats_url, name="survivor")
        try:
            js = nc.jetstream()
            await js.add_stream(name="KEEP", subjects=["keep.>"])
            await js.publish("keep.one", b"before")
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: server.pid not in (None, pid), message="a new nats-server")
            assert server.port == port, "restarted on another port: its clients cannot find it"
            assert not zombie(pid), "the killed nats-server was never reaped"
            assert server.status().restarts == 1 and "killed by SIGKILL" in (server.status().last_exit or "")

            async def published() -> bool:
                try:
                    await js.publish("keep.two", b"after", timeout=1)
                except (nats.errors.Error, asyncio.TimeoutError):
                    return False
                return True

            await eventually(published, message="the client reconnected and published")
            assert nc.stats["reconnects"] >= 1
            assert (await js.get_last_msg("KEEP", "keep.one")).data == b"before"  # JetStream kept its data
        finally:
            await nc.close()


@pytest.mark.fault
async def test_a_killed_postgres_is_restarted_on_its_port_and_the_store_works_again(tmp_path: Path) -> None:
    with EmbeddedServers(state_dir=tmp_path, database_url=None, nats_url="nats://127.0.0.1:1") as servers:
        server = servers.postgres
        assert server is not None and server.pid is not None
        port, pid = server.port, server.pid
        store = await PostgresEventStore.open(PostgresSettings(dsn=servers.database_url, schema="kept"))
        try:
            await store.append("app/before", [NewEvent(type="convoy.v1.ApplicationDeleted", data=b"")])
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: server.pid not in (None, pid), timeout=60, message="a new PostgreSQL")
            assert server.port == port
            assert not zombie(pid), "the killed postmaster was never reaped"

            async def appended() -> bool:
                try:
                    await store.append("app/after", [NewEvent(type="convoy.v1.ApplicationDeleted", data=b"")])
                except Unavailable:
                    return False
                return True

            await eventually(appended, message="the store's pool reconnected")
            assert [e.stream_id for e in await store.read_all(after=0)] == ["app/before", "app/after"]
        finally:
            await store.close()


@pytest.mark.fault
async def test_a_stopped_server_is_not_mistaken_for_a_dead_one(tmp_path: Path, database_url: str) -> None:
    """SIGSTOP is not an exit: a second nats-server on the same store would fight over it.
    Supervision leaves it alone; the connection notices it (its pings go unanswered),
    gives up on it, and finds it again once it continues."""
    with EmbeddedServers(state_dir=tmp_path, database_url=database_url, nats_url=None) as servers:
        server = servers.nats
        assert server is not None and server.pid is not None
        pid = server.pid
        nc = await bus.connect(servers.nats_url, name="patient")
        try:
            os.kill(pid, signal.SIGSTOP)
            try:
                # nats-py's default pings (120 s, 2 outstanding) would take 4-6 minutes.
                await eventually(lambda: not nc.is_connected, timeout=90, message="the client gave up the frozen server")
                assert server.pid == pid and server.status().restarts == 0, "a stopped server was restarted"
            finally:
                os.kill(pid, signal.SIGCONT)
            await eventually(lambda: nc.is_connected, message="the client found the server again")
            await nc.jetstream().account_info()
            assert server.pid == pid
        finally:
            await nc.close()


@pytest.mark.fault
async def test_a_client_backs_off_while_its_server_is_down(own_nats: NatsServer) -> None:
    refused: list[float] = []

    async def on_error(error: Exception) -> None:
        if isinstance(error, ConnectionRefusedError):
            refused.append(time.monotonic())

    nc = await bus.connect(own_nats.url, name="backing-off", error_cb=on_error)
    try:
        own_nats.kill()
        await eventually(lambda: len(refused) >= 7, timeout=60, message="seven refused reconnect attempts")
        gaps = [b - a for a, b in zip(refused, refused[1:])]
        # Waits only ever get longer than asked for, so these bounds hold on any machine:
        # after five refusals the client waits more than a second (nats-py alone: 0.25 s).
        assert gaps[5] >= 1.2, gaps
    finally:
        await nc.close()


def test_a_second_runner_on_the_same_state_folder_is_refused(tmp_path: Path, database_url: str) -> None:
    with EmbeddedServers(state_dir=tmp_path, database_url=database_url, nats_url=None) as first:
        assert first.nats is not None
        pid = first.nats.pid
        second = EmbeddedServers(state_dir=tmp_path, database_url=database_url, nats_url=None)
        with pytest.raises(EmbeddedServerError, match=r"another Convoy \(pid \d+\) runs the embedded servers"):
            second.start()
        assert first.nats.pid == pid, "the second runner took the first one's server for a leftover"
    with EmbeddedServers(state_dir=tmp_path, database_url=database_url, nats_url=None) as third:
        assert third.nats is not None and third.nats.pid is not None  # the lock went with the first


def test_the_port_is_remembered_for_the_next_run_and_given_up_when_taken(tmp_path: Path) -> None:
    first = NatsServer(data_dir=tmp_path / "nats")
    with first:
        port = first.port
    again = NatsServer(data_dir=tmp_path / "nats")
    with again:
        assert again.port == port
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        moved = NatsServer(data_dir=tmp_path / "nats")
        with moved:
            assert moved.port not in (None, port)


@pytest.mark.fault
def test_supervision_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=2, window=3600, base_delay=0.01, max_delay=0.01)
    server = NatsServer(data_dir=tmp_path / "nats")
    server.start()
    try:
        server.supervise(policy)
        for _ in range(3):
            pid = server.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while server.pid in (None, pid) and not server.status().gave_up:
                assert time.monotonic() < deadline, "neither restarted nor given up"
                time.sleep(0.01)
        status = server.status()
        assert status.gave_up and "exited 3 times" in status.gave_up and not status.running
        assert status.restarts == 2
    finally:
        server.stop()
