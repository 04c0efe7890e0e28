"""`convoy down`: stop a `convoy up` running in the background on this machine.

`convoy up` records its process id in its state folder; `down` sends it SIGTERM (what
Ctrl-C does: everything stops in order, the embedded servers last) and waits until it
has exited. A stale pid file (the process is gone) is removed and reported.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from cli import localstate
from eventstore.embedded import pid_alive
from eventstore.settings import Settings, environ


def down(
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="The state folder of the `convoy up` to stop.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for it to stop.")] = 60.0,
) -> None:
    """Stop the `convoy up` running in the background (its state folder names it)."""
    settings = Settings.from_env(environ(), state_dir=state_dir)
    pid_file = settings.state_dir / localstate.PID_FILE
    pid = localstate.read_pid(settings.state_dir)
    if pid is None or not pid_alive(pid):
        if pid is not None:
            pid_file.unlink(missing_ok=True)
        typer.echo(f"no convoy up is running for {settings.state_dir}")
        raise typer.Exit(0)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            typer.echo(f"error: convoy up (pid {pid}) did not stop within {timeout:g}s", err=True)
            raise typer.Exit(1)
        time.sleep(0.1)  # waiting for another process to exit: nothing to wait on but its pid
    typer.echo(f"stopped convoy up (pid {pid})")

