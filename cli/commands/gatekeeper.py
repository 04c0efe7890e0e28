"""`convoy gatekeeper`: run the change-ticket gates and GitHub deployment statuses alone.

The gatekeeper (services/gatekeeper) reads and appends to the log, like the planner, so
it talks to PostgreSQL directly: CONVOY_DATABASE_URL, or the embedded one of a local
`convoy up` (which runs the same gatekeeper inside itself; run this only for a control
plane started without it, or to run it on the machine that may reach the ticketing
system). Secrets its declarations name (`env:` / `file:` references) are resolved on this
machine, from this process's environment and files.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from cli import logging as convoy_logging
from cli.commands.planner import StateDir, database_url
from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.settings import Settings, environ
from services.gatekeeper.github import GitHubReporter
from services.gatekeeper.worker import Gatekeeper
from services.planner.clock import SystemClock


def gatekeeper(
    state_dir: StateDir = None,
    github: Annotated[
        bool, typer.Option("--github/--no-github", help="Also report deployments to GitHub (applications that ask).")
    ] = True,
    log_format: convoy_logging.LogFormatOpt = None,
) -> None:
    """Poll change-ticket gates (external approvals) and post GitHub deployment statuses (Ctrl-C stops it)."""
    convoy_logging.setup(log_format)
    settings = Settings.from_env(environ(), state_dir=state_dir)
    asyncio.run(_run(database_url(settings), settings.instance, github))
    typer.echo("stopped")


async def _run(url: str, instance: str, github: bool) -> None:
    store = await PostgresEventStore.open(PostgresSettings(dsn=url, schema=instance, pool_max=4))
    registry = convoy_registry()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            gates = await stack.enter_async_context(Gatekeeper(store=store, registry=registry, clock=SystemClock()))
            if github:
                await stack.enter_async_context(GitHubReporter(store=store, registry=registry))
            await gates.ready.wait()
            typer.echo(f"gatekeeper polling {len(gates.polling)} open gate(s); press Ctrl-C to stop")
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await store.close()
