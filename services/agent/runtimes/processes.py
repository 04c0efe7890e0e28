"""Child processes the agent starts: run one to completion, or stop one for good.

The local runtime, the exec runtime and command checks all start programs the agent does
not control. Each runs in its own process group (`start_new_session`), so stopping it
stops whatever it forked too; a stop is SIGTERM to the group, then SIGKILL after a grace
period, and always ends with the child reaped (no zombies). Output is kept bounded: only
its tail says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eventstore.embedded import die_with_parent
from services.agent.runtimes.base import MAX_MESSAGE, truncate

READ_CHUNK = 65536
EXIT_POLL = 0.02


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


async def exited(process: asyncio.subprocess.Process) -> int:
    """The exit code, as soon as the process has exited.

    Not `Process.wait()`: on Python 3.11 it also waits until every pipe is closed, which
    a background process that inherited stdout can postpone for ever."""
    while process.returncode is None:
        await asyncio.sleep(EXIT_POLL)
    return process.returncode


async def stop(process: asyncio.subprocess.Process, *, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; return once the
    leader has exited (it is reaped by asyncio's child watcher).

    Members of the group left behind by a leader that already exited are killed too."""
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(exited(process), grace)
        except TimeoutError:
            pass
    signal_group(process.pid, signal.SIGKILL)
    await exited(process)


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
