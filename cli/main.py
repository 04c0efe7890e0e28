"""The `convoy` command line.

The composition root: it reads settings from flags and the environment (the only place
that does), builds the components explicitly and runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from eventstore import bus
from eventstore.embedded import EmbeddedServers
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.relay import Relay, RelaySettings
from eventstore.settings import Settings, environ

app = typer.Typer(
    name="convoy",
    help="Convoy: ordered, protected, auditable releases across many clusters.",
    no_args_is_help=True,
)

@app.callback()
def main() -> None:
    """Convoy: ordered, protected, auditable releases across many clusters."""


StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where Convoy keeps its data (default: ~/.local/share/convoy)."),
]


@app.command()
def up(state_dir: StateDir = None) -> None:
    """Start Convoy's control plane on the embedded NATS and PostgreSQL (Ctrl-C stops it)."""
    settings = Settings.from_env(environ(), state_dir=state_dir)
    with EmbeddedServers(
        state_dir=settings.state_dir, database_url=settings.database_url, nats_url=settings.nats_url
    ) as servers:
        typer.echo(f"state folder: {settings.state_dir}")
        typer.echo(f"PostgreSQL:   {_redact(servers.database_url)}")
        typer.echo(f"NATS:         {servers.nats_url}")
        asyncio.run(_serve(settings, servers))
    typer.echo("stopped")


async def _serve(settings: Settings, servers: EmbeddedServers) -> None:
    """The control plane's processes, composed explicitly. So far: the event store and
    its relay to JetStream; the API, planner and agent join them in later issues."""
    store = await PostgresEventStore.open(PostgresSettings(dsn=servers.database_url, schema=settings.instance))
    nc = await bus.connect(servers.nats_url, name=f"convoy-up:{settings.instance}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bus.ensure_streams(nc.jetstream(), settings.instance)
        async with Relay(store=store, nc=nc, settings=RelaySettings(instance=settings.instance)):
            typer.echo(f"event store ready: {await store.head()} events, relayed to JetStream; press Ctrl-C to stop")
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await nc.close()
        await store.close()


def _redact(url: str) -> str:
    """Never print a password: postgresql://user:***@host/db."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


if __name__ == "__main__":
    app()
