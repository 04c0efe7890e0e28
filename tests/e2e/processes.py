"""`convoy …` as a real subprocess, for end-to-end tests: output drained (and kept) in
the background so a chatty process never blocks on a full pipe, readiness taken from a
line it prints, and a stop that waits for the process and its output."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ConvoyProcess:
    def __init__(self, proc: asyncio.subprocess.Process, ready_marker: str) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.ready = asyncio.Event()
        self._marker = ready_marker
        self._drain = asyncio.create_task(self._read())

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():  # the stream's limit is raised in `start`
            self.lines.append(raw.decode())
            if self._marker in self.lines[-1]:
                self.ready.set()

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Signal it (unless it has exited), wait for it and its output; its exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may be exiting already
                self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 60)
        await asyncio.wait_for(self._drain, 30)
        return code


@asynccontextmanager
async def convoy_process(
    env: dict[str, str], *args: str, ready: str = "press Ctrl-C", timeout: float = 120
) -> AsyncIterator[ConvoyProcess]:
    """`convoy ARGS` running until it printed `ready`; killed on the way out if still alive."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env, cwd=ROOT, limit=16 * 1024 * 1024,  # a log line may quote a runtime's output
    )
    running = ConvoyProcess(proc, ready)
    try:
        try:
            await asyncio.wait_for(running.ready.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"`convoy {args[0]}` did not print {ready!r}:\n" + running.output[-5000:]) from None
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def convoy(env: dict[str, str], *args: str, timeout: float = 180) -> tuple[int, str]:
    """Run `convoy ARGS` to completion: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env, cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@asynccontextmanager
async def service_process(env: dict[str, str], *args: str, ready: str) -> AsyncIterator[list[str]]:
    """`convoy ARGS` (a long-running service) until the test is done; then it must stop on
    SIGTERM, cleanly (exit 0, no traceback)."""
    async with convoy_process(env, *args, ready=ready, timeout=90) as running:
        yield running.lines
        code = await running.stop(signal.SIGTERM)
        assert code == 0, running.output[-4000:]
        assert "Traceback" not in running.output, running.output[-4000:]
