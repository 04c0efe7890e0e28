"""A PostgreSQL primary with a synchronous streaming standby, and a failover, for tests.

In production a failover is Patroni's or the cloud's job; Convoy's part is to reconnect
to whichever server now takes writes and never to lose an acknowledged command. To test
that part for real, this harness builds what those systems build, with the embedded
PostgreSQL binaries (eventstore.embedded: when we are root the servers run as the
unprivileged `convoy-postgres` user):

- the primary: wal_level=replica, a `replicator` role with REPLICATION, a pg_hba entry
  for it on loopback;
- the standby: `pg_basebackup -R` (standby.signal and primary_conninfo written for us),
  started as a hot standby (ready when it says "read-only connections");
- `synchronous_standby_names` on the primary naming the standby, and the primary's
  `pg_stat_replication` saying `sync` before the harness returns: from then on a commit
  is acknowledged only once the standby has flushed it (synchronous_commit=on), which is
  what makes "acknowledged = survives the failover" true;
- `pause_replication`: SIGSTOP to the standby's WAL receiver, so that commits wait on the
  primary for the standby (observable in pg_stat_activity) — a commit caught in flight;
- `kill_primary`: SIGKILL to every process of the primary (the postmaster and its
  backends, as when its machine dies);
- `promote_standby`: `pg_ctl promote` on the standby and a poll of `pg_is_in_recovery()`
  until it takes writes (in production Patroni or the cloud decides when).

`dsn` is the multi-host URL a client gives to ride out the failover:
`postgresql://convoy:…@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from eventstore.embedded import POSTGRES_SYSTEM_USER, PostgresServer, pid_alive, postgres_bin_dir

STANDBY_NAME = "convoy_standby"
REPLICATION_USER = "replicator"
DEADLINE = 60.0
"""Seconds a setup step or the promotion may take before the harness gives up (a bound on
failure only: every wait polls a condition the server reports)."""


class StandbyServer(PostgresServer):
    """A hot standby: the same server, ready when it accepts read-only connections."""

    name = "PostgreSQL standby"
    ready_line = "database system is ready to accept read-only connections"


class ReplicatedPostgres:
    """A primary and its synchronous standby under `root`. `start()`, `pause_replication()`,
    `kill_primary()`, `promote_standby()`, `stop()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = PostgresServer(data_dir=root / "primary")
        self.standby = StandbyServer(data_dir=root / "standby")
        self._replication_password = secrets.token_urlsafe(18)
        self.promoted = False
        self._paused: list[int] = []

    @property
    def password(self) -> str:
        return self.primary.password

    @property
    def ports(self) -> tuple[int, int]:
        assert self.primary.port is not None and self.standby.port is not None, "not started"
        return self.primary.port, self.standby.port

    @property
    def dsn(self) -> str:
        """Both servers, the writable one chosen at each connect."""
        p1, p2 = self.ports
        return (
            f"postgresql://convoy:{self.password}@127.0.0.1:{p1},127.0.0.1:{p2}/postgres"
            "?target_session_attrs=read-write"
        )

    def server_dsn(self, which: PostgresServer) -> str:
        """One server alone (for the test's own look at each)."""
        return f"postgresql://convoy:{self.password}@127.0.0.1:{which.port}/postgres"

    # -- setup -------------------------------------------------------------------------

    async def start(self) -> None:
        self.primary.start()
        conn = await asyncpg.connect(self.server_dsn(self.primary))
        try:
            await conn.execute(
                f"CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{self._replication_password}'"
            )
            await conn.execute("ALTER SYSTEM SET wal_level = 'replica'")  # the default; said for the reader
            hba = Path(await conn.fetchval("SHOW hba_file"))
            with hba.open("a") as f:
                f.write(f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256\n")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        self._base_backup()
        self.standby.start()
        await self._make_synchronous()

    def _base_backup(self) -> None:
        """The standby's data folder: a copy of the primary's, with standby.signal and a
        primary_conninfo naming the standby (its application_name) for the primary's
        synchronous_standby_names."""
        self.standby.data_dir.mkdir(parents=True, exist_ok=True)
        # The convoy role (and its password) came over in the copy; the standby's
        # PostgresServer reads the password from its own folder.
        shutil.copy2(self.primary.data_dir / "password", self.standby.data_dir / "password")
        pgdata = self.standby.pgdata
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": self._replication_password}
        result = subprocess.run(
            [
                str(postgres_bin_dir() / "pg_basebackup"),
                "-d", f"host=127.0.0.1 port={self.primary.port} user={REPLICATION_USER} application_name={STANDBY_NAME}",
                "-D", str(pgdata),
                "-R",  # standby.signal + primary_conninfo
                "-X", "stream",
                "-c", "fast",
            ],
            capture_output=True, text=True, env=env, check=False, timeout=DEADLINE,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed ({result.returncode}): {result.stderr.strip()}")
        pgdata.chmod(0o700)
        run_as = self._run_as()
        if run_as is not None:  # we are root: the copy must be the server user's
            for path in [pgdata, *pgdata.rglob("*")]:
                os.lchown(path, *run_as)

    def _run_as(self) -> tuple[int, int] | None:
        """The server user when we are root (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return None
        stat = self.primary.pgdata.stat()
        return stat.st_uid, stat.st_gid

    async def _make_synchronous(self) -> None:
        conn = await asyncpg.connect(self.server_dsn(self.primary))
        try:
            await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({STANDBY_NAME})'")
            await conn.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
            await conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + DEADLINE
            while await conn.fetchval(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync' "
                "AND state = 'streaming'",
                STANDBY_NAME,
            ) != 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby did not become synchronous within {DEADLINE:.0f}s")
                await _pause()
        finally:
            await conn.close()

    # -- the failover ------------------------------------------------------------------

    async def pause_replication(self) -> None:
        """Stop (SIGSTOP) the standby's WAL receiver: from now on every commit on the primary
        is written there and waits for the standby's acknowledgement (wait event SyncRep,
        see `commits_waiting`), holding its locks — a commit in flight, made observable.
        `kill_primary` lets it continue."""
        conn = await asyncpg.connect(self.server_dsn(self.standby))
        try:
            pids = [r[0] for r in await conn.fetch("SELECT pid FROM pg_stat_wal_receiver WHERE pid IS NOT NULL")]
        finally:
            await conn.close()
        if not pids:
            raise RuntimeError("the standby has no WAL receiver to pause")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self._paused.extend(pids)

    @staticmethod
    async def commits_waiting(primary: asyncpg.Connection) -> int:
        """Transactions on the primary that committed locally and wait for the standby."""
        return int(await primary.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"))

    async def kill_primary(self) -> None:
        """Kill the primary as a dead machine would: SIGKILL to all its processes (the
        postmaster and every backend, so no backend outlives it). A paused WAL receiver
        continues: it reads what reached it, then finds the primary gone."""
        pids = [*self._server_pids(self.primary)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        while any(pid_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise RuntimeError("the primary's processes did not die")
            await _pause()
        self.primary.stop()  # reaps the postmaster; nothing left to stop
        paused, self._paused = self._paused, []
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def promote_standby(self) -> float:
        """`pg_ctl promote` the standby and poll `pg_is_in_recovery()` until it takes
        writes. Returns the seconds that took."""
        started = time.monotonic()
        deadline = started + DEADLINE
        promote = [str(postgres_bin_dir() / "pg_ctl"), "promote", "-D", str(self.standby.pgdata.absolute()), "--no-wait"]
        if self._run_as() is not None:
            # pg_ctl refuses root. runuser rather than subprocess's user=: switching users
            # in the forked child of a process with gRPC threads can crash the child.
            promote = ["runuser", "-u", POSTGRES_SYSTEM_USER, "--", *promote]
        result = subprocess.run(promote, capture_output=True, text=True, check=False, timeout=DEADLINE)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed ({result.returncode}): {result.stderr.strip()}")
        conn = await asyncpg.connect(self.server_dsn(self.standby))
        try:
            while await conn.fetchval("SELECT pg_is_in_recovery()"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby was not promoted within {DEADLINE:.0f}s")
                await _pause()
        finally:
            await conn.close()
        self.promoted = True
        return time.monotonic() - started

    def _server_pids(self, server: PostgresServer) -> Iterator[int]:
        """Every process of `server`: PostgreSQL's processes all work in its data folder."""
        pgdata = os.path.realpath(server.pgdata)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/cwd") == pgdata:
                        yield int(entry)

    def stop(self) -> None:
        for pid in self._paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.standby.stop()
        self.primary.stop()


async def _pause() -> None:
    """One poll interval of the waits above (each waits for a condition, with a deadline)."""
    await asyncio.sleep(0.02)
