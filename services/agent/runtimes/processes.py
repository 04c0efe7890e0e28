"""Processes the agent starts: run one to completion, start a service, or stop one for good.

The local runtime, the exec runtime and command checks all start programs the agent does
not control. Each runs in its own process group (`start_new_session`), so stopping it
stops whatever it forked too; a stop is SIGTERM to the group, then SIGKILL after a grace
period, and always ends with the child reaped (no zombies). Output is kept bounded: only
its tail says what went wrong.

Two kinds, two lifetimes. A command (`run`: an exec runtime's apply, a command check) dies
with the agent (PR_SET_PDEATHSIG): a restarted agent must not race an orphaned apply. A
service (`spawn`: a local runtime's replica) must outlive it, so a restarted agent can
adopt it instead of restarting it: no death signal, stdin from /dev/null, and its output
appended to a log file (a pipe to a dead agent would SIGPIPE it at its next write).

An adopted process (`adopt`) is one a previous agent spawned and that still runs. It is
not our child, so it is verified before anything touches it — the pid's start time (from
/proc/<pid>/stat, which pid reuse changes), that it is not a zombie, and the token the
spawner put in its environment — and its exit is seen through a pidfd that the event loop
watches (readable once it exits); its exit status is unknown (only a parent can reap it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
import select
from dataclasses import dataclass
from pathlib import Path

from eventstore.embedded import die_with_parent
from services.agent.runtimes.base import MAX_MESSAGE, truncate

READ_CHUNK = 65536
EXIT_POLL = 0.02
TOKEN_ENV = "CONVOY_PROCESS_TOKEN"
"""Set by the spawner in each service's environment: which spawn it is (see `adopt`)."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_code: int | None
    """The exit code (negative: killed by that signal); None when it timed out."""
    output: str
    """stdout and stderr, truncated to their tail."""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class OutputTail:
    """The last `limit` characters of a stream, however much was written."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        # Keep at most ~4 bytes per character of the limit (UTF-8) before decoding.
        while self._chunks and self._size - len(self._chunks[0]) >= self.limit * 4:
            self._size -= len(self._chunks.pop(0))

    def text(self) -> str:
        return truncate(b"".join(self._chunks).decode("utf-8", "replace"), self.limit)


async def drain(stream: asyncio.StreamReader | None, tail: OutputTail) -> None:
    if stream is None:
        return
    while data := await stream.read(READ_CHUNK):
        tail.add(data)


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid`; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# ---- what /proc says about a process ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    state: str
    """R, S, D, Z (zombie: exited, not reaped yet) …"""
    pgrp: int
    """Its process group."""
    start: int
    """Start time in clock ticks since boot: a pid reused by another process has another."""


def inspect(pid: int) -> ProcessInfo | None:
    """What /proc/<pid>/stat says (Linux), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(state=fields[0], pgrp=int(fields[2]), start=int(fields[19]))


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    info = inspect(pid)
    return info.start if info is not None else None


def environment(pid: int) -> dict[str, str]:
    """The environment a process was started with ({} if it cannot be read: gone, or
    another user's)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    found = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            found[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return found


# ---- services: spawned to outlive the agent, adopted by the next one --------------------


async def spawn(
    argv: Sequence[str], *, env: Mapping[str, str] | None, cwd: Path | None, log: Path
) -> asyncio.subprocess.Process:
    """Start a long-running service in its own session, its stdout and stderr appended to
    `log`. Nothing ties it to this process: it keeps running if the agent dies (no death
    signal, no pipe). Raises OSError when the program cannot be started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # the child has its own copy of the descriptor (O_APPEND)
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


class Adopted:
    """A running process an earlier agent spawned (see `adopt`), watched through a pidfd.

    `returncode` stays None: an exit is seen (`exited`), its status is not knowable."""

    def __init__(self, pid: int, pidfd: int, *, start: int, token: str) -> None:
        self.pid = pid
        self.start = start
        self.token = token
        self.returncode: int | None = None
        self._fd: int | None = pidfd
        self._exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit)

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    async def wait(self) -> None:
        await self._exited.wait()

    def close(self) -> None:
        """Stop watching (the process is left alone)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _on_exit(self) -> None:
        self._exited.set()
        self.close()


def adopt(pid: int, *, start: int, token: str) -> Adopted | None:
    """The process `pid`, if it is still the one a previous agent spawned: not a zombie,
    started at `start` (clock ticks since boot), with `TOKEN_ENV=token` in its
    environment. None otherwise (it exited, or its pid now names an unrelated process).

    The pidfd is opened first and the process checked after: once the pidfd is known to
    name a live process, that process holds the pid, so /proc/<pid> is that process."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        info = inspect(pid)
        ours = (
            info is not None
            and info.state != "Z"
            and info.start == start
            and environment(pid).get(TOKEN_ENV) == token
            and not _readable(pidfd)  # still alive after the checks: they were about this process
        )
    except BaseException:
        os.close(pidfd)
        raise
    if not ours:
        os.close(pidfd)
        return None
    return Adopted(pid, pidfd, start=start, token=token)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# ---- stopping ---------------------------------------------------------------------------

Service = asyncio.subprocess.Process | Adopted
"""A local runtime's process: one this agent spawned, or one it adopted."""


def running(process: Service) -> bool:
    if isinstance(process, Adopted):
        return process.running
    return process.returncode is None


async def exited(process: Service) -> int | None:
    """The exit code, as soon as the process has exited (None for an adopted process:
    only its parent learns it).

    Not `Process.wait()`: on Python 3.11 it also waits until every pipe is closed, which
    a background process that inherited stdout can postpone for ever."""
    if isinstance(process, Adopted):
        await process.wait()
        return None
    while process.returncode is None:
        await asyncio.sleep(EXIT_POLL)
    return process.returncode


async def stop(process: Service, *, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; return once the
    leader has exited (a child is reaped by asyncio's child watcher; an adopted process
    by whoever inherited it).

    Members of the group left behind by a leader that already exited are killed too."""
    if running(process):
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(exited(process), grace)
        except TimeoutError:
            pass
    signal_group(process.pid, signal.SIGKILL)
    await exited(process)


# ---- log files --------------------------------------------------------------------------


def read_tail(path: Path, limit: int = MAX_MESSAGE) -> str:
    """The last `limit` characters of a log file ('' if there is none)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit * 4))  # at most 4 bytes per character (UTF-8)
            data = f.read()
    except OSError:
        return ""
    return truncate(data.decode("utf-8", "replace"), limit)


def append_line(path: Path, text: str) -> None:
    """Add a line of Convoy's own to a log (what happened to the process)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(text.encode() + b"\n")


def trim_log(path: Path, *, limit: int, keep: int) -> None:
    """Cut a log longer than `limit` bytes down to its last `keep` bytes, in place: the
    process appends (O_APPEND), so its next write lands at the new end. A line written
    during the cut may be lost; the log stays bounded however long the process runs."""
    with contextlib.suppress(OSError), path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size <= limit:
            return
        f.seek(size - keep)
        data = f.read()
        f.seek(0)
        f.write(data)
        f.truncate()


async def finish_output(
    process: asyncio.subprocess.Process, readers: list[asyncio.Task[None]], *, grace: float
) -> None:
    """Let the output readers of an exited process finish for up to `grace` seconds.

    A process outside the group (a daemon the command left running) may still hold the
    pipe; then stop reading and close the pipes, so nothing is left open."""
    _done, pending = await asyncio.wait(readers, timeout=grace) if readers else (set(), set())
    for reader in pending:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    if pending:
        transport = getattr(process, "_transport", None)  # no public way to close the pipes
        if transport is not None:
            transport.close()


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    stdin: bytes | None = None,
    timeout: float,
    cwd: Path | None = None,
    grace: float = 1.0,
    output_limit: int = MAX_MESSAGE,
) -> CommandResult:
    """Run `argv` to completion within `timeout` (then kill its group).

    A command that exits in time may leave background processes it started (a daemon):
    they are its business and keep running. A command still running when this process
    dies is killed (PR_SET_PDEATHSIG): a restarted agent must not race an orphaned apply.
    Raises OSError when the program cannot be started (missing, not executable)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )
    out = OutputTail(output_limit)
    readers = [asyncio.create_task(drain(process.stdout, out), name=f"read {argv[0]}")]
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            if stdin is not None and process.stdin is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    process.stdin.write(stdin)
                    await process.stdin.drain()
                process.stdin.close()
            await exited(process)
    except TimeoutError:
        timed_out = True
    finally:
        if process.returncode is None:  # timed out or cancelled: stop it and its group
            await stop(process, grace=grace)
        # What a daemon the command left running writes later is not this command's output.
        await finish_output(process, readers, grace=min(grace, 1.0))
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
    return CommandResult(
        exit_code=None if timed_out else process.returncode,
        output=out.text(),
        timed_out=timed_out,
    )
