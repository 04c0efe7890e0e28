"""`convoy nats-users`: the NATS users of an instance, for an external NATS server.

With the embedded NATS, Convoy writes its agents' users into the server's configuration
and reloads it. An external NATS (a cluster the platform team runs) is configured by its
operator, so this renders the same `accounts` block — the control account with the
control plane's user, and one account per runtime with its agent's least-privilege user
and current credential (eventstore.natsauth says why accounts) — from the log, for the
operator to include in that server's configuration and reload (`nats-server --signal
reload`). Run it again after registering a runtime or issuing/rotating a credential.

Only bcrypt hashes are written: the log never holds a usable agent secret, and the
control plane's password is read from a file and hashed here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import bcrypt
import typer

from cli.commands.common import read_text_file
from cli.commands.planner import StateDir, database_url
from eventstore import natsauth, securefile
from eventstore.codec import convoy_registry
from eventstore.errors import InvalidInput
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.settings import Settings, environ
from eventstore.types import read_batches
from services.api.natsauth_sync import AgentCredentials

SYSTEM_BCRYPT_ROUNDS = 11


def nats_users(
    system_password_file: Annotated[
        Path,
        typer.Option(
            "--system-password-file",
            help="A file holding the password the control plane connects with (the one in CONVOY_NATS_URL).",
        ),
    ],
    system_user: Annotated[
        str, typer.Option("--system-user", help="The user the control plane connects as.")
    ] = natsauth.SYSTEM_USER,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the block to this file (replaced atomically); default stdout."),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Render the NATS users (control plane + one per runtime's agent) for an external NATS."""
    try:
        password = read_text_file(system_password_file, "system password")
    except InvalidInput as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    settings = Settings.from_env(environ(), state_dir=state_dir)
    known = asyncio.run(_credentials(database_url(settings), settings.instance))
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(SYSTEM_BCRYPT_ROUNDS)).decode("ascii")
    users = known.users(settings.instance, natsauth.User(system_user, hashed))
    text = natsauth.render(settings.instance, users)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        securefile.write_private(output, text)  # password hashes: owner-only, atomically
    except (InvalidInput, OSError) as error:
        typer.echo(f"error: cannot write {output}: {getattr(error, 'strerror', None) or error}", err=True)
        raise typer.Exit(2) from None
    agents = len(users) - 1
    without = sorted(known.runtimes - set(known.credentials))
    typer.echo(f"wrote {output}: {system_user} and {agents} agent user(s)", err=True)
    if without:
        typer.echo(f"runtimes without a credential (their agents cannot connect): {', '.join(without)}", err=True)


async def _credentials(url: str, instance: str) -> AgentCredentials:
    store = await PostgresEventStore.open(PostgresSettings(dsn=url, schema=instance, pool_max=2))
    registry = convoy_registry()
    known = AgentCredentials()
    try:
        async for batch in read_batches(store, categories=["runtime"]):
            for recorded in batch:
                known.fold(registry.decode(recorded).message)
        return known
    finally:
        await store.close()
