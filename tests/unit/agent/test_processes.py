"""Running a command to completion: output, exit codes, timeouts, daemons it leaves; and
the log files of services."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from services.agent.runtimes import processes
from services.agent.runtimes.localstate import process_start_time


async def test_output_exit_code_and_stdin() -> None:
    script = "import sys; data = sys.stdin.read(); print('got', data); print('oops', file=sys.stderr); sys.exit(3)"
    result = await processes.run([sys.executable, "-c", script], env=None, stdin=b"hello", timeout=10)
    assert (result.exit_code, result.ok, result.timed_out) == (3, False, False)
    assert "got hello" in result.output and "oops" in result.output


async def test_a_timed_out_command_is_killed_with_its_group() -> None:
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(child.pid, flush=True); time.sleep(60)"
    )
    result = await processes.run([sys.executable, "-c", script], env=None, timeout=0.5, grace=0.2)
    assert (result.exit_code, result.timed_out) == (None, True)
    child = int(result.output.split()[0])
    assert process_start_time(child) is None or _is_zombie_elsewhere(child)


async def test_a_daemon_left_behind_does_not_hold_the_command_up() -> None:
    result = await processes.run(["/bin/sh", "-c", "sleep 30 & echo $!"], env=None, timeout=10, grace=0.2)
    daemon = int(result.output.strip())
    try:
        assert (result.exit_code, result.timed_out) == (0, False)
        assert process_start_time(daemon) is not None
    finally:
        os.kill(daemon, signal.SIGKILL)


async def test_a_missing_program_raises_oserror() -> None:
    with pytest.raises(OSError):
        await processes.run(["/nonexistent/program"], env=None, timeout=1)


def _is_zombie_elsewhere(pid: int) -> bool:
    """Killed, but not yet reaped by its new parent (init): gone for practical purposes."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return True
    return text[text.rindex(")") + 2] == "Z"


def test_a_log_is_cut_to_its_tail_and_the_writer_keeps_appending_at_the_end(tmp_path: Path) -> None:
    """A service holds its log open with O_APPEND (processes.spawn): after a trim its next
    write lands at the new end, not at its old offset."""
    log = tmp_path / "web-0.log"
    with log.open("ab", buffering=0) as writer:
        writer.write(b"x" * 10_000 + b"tail-kept\n")
        processes.trim_log(log, limit=1000, keep=10)
        assert log.read_bytes() == b"tail-kept\n"
        writer.write(b"next line\n")
    assert log.read_bytes() == b"tail-kept\nnext line\n"
    assert processes.read_tail(log, 12) == "…\nnext line\n"
    processes.trim_log(log, limit=1000, keep=10)  # within the limit: left alone
    assert log.read_bytes() == b"tail-kept\nnext line\n"
