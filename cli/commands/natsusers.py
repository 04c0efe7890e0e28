"""`convoy nats-users`: the NATS users of an instance, for an external NATS server.

With the embedded NATS, Convoy writes its agents' users into the server's configuration
and reloads it. An external NATS (a cluster the platform team runs) is configured by its
operator, so this renders the same `accounts` block — the control account with the
control plane's user, and one account per runtime with its agent's least-privilege user
and current credential (eventstore.natsauth says why accounts) — from the log, for the
operator to include in that server's configuration and reload (`nats-server --signal
reload`). Run it again after registering a runtime or issuing/rotating a credential.

Several instances sharing one NATS need one block for all of them (a server has one
`accounts {}`): `--all-instances` renders every instance the registry
(eventstore.instances, `--admin-url`) lists, each control plane's user with the bcrypt
stored when it was provisioned, each instance's agents from its own log, each
instance's account limits (eventstore.natsaccounts). docs/nats-accounts.md shows an
operator's steps.

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
from eventstore import natsaccounts, natsauth, securefile
from eventstore.codec import convoy_registry
from eventstore.errors import InvalidInput
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.settings import Settings, environ
from eventstore.types import read_batches
from services.api.natsauth_sync import AgentCredentials

SYSTEM_BCRYPT_ROUNDS = 11

ADMIN_URL_ENV = "CONVOY_ADMIN_DATABASE_URL"


def nats_users(
    system_password_file: Annotated[
        Path | None,
        typer.Option(
            "--system-password-file",
            help="A file holding the password the control plane connects with (the one in CONVOY_NATS_URL); "
            "not with --all-instances, whose passwords the instance registry holds as bcrypt.",
        ),
    ] = None,
    system_user: Annotated[
        str | None,
        typer.Option("--system-user", help="The user the control plane connects as (default: convoy, or convoy-<instance>)."),
    ] = None,
    all_instances: Annotated[
        bool,
        typer.Option("--all-instances", help="Render every provisioned instance (for one NATS they all share)."),
    ] = False,
    admin_url: Annotated[
        str | None,
        typer.Option("--admin-url", help=f"With --all-instances: the admin database URL (default: ${ADMIN_URL_ENV})."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the block to this file (mode 0600, replaced atomically); default stdout."),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Render the NATS users (control plane + one per runtime's agent) for an external NATS."""
    try:
        if all_instances:
            text, summary, without = _all_instances(system_password_file, system_user, admin_url)
        else:
            text, summary, without = _one_instance(system_password_file, system_user, state_dir)
    except InvalidInput as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        securefile.write_private(output, text)  # password hashes: owner-only, atomically
    except (InvalidInput, OSError) as error:
        typer.echo(f"error: cannot write {output}: {getattr(error, 'strerror', None) or error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {output}: {summary}", err=True)
    if without:
        typer.echo(f"runtimes without a credential (their agents cannot connect): {', '.join(without)}", err=True)


def _one_instance(password_file: Path | None, system_user: str | None, state_dir: Path | None) -> tuple[str, str, list[str]]:
    if password_file is None:
        raise InvalidInput("give --system-password-file (or --all-instances)")
    password = read_text_file(password_file, "system password")
    settings = Settings.from_env(environ(), state_dir=state_dir)
    user = system_user or natsauth.system_user(settings.instance)
    known = asyncio.run(_credentials(database_url(settings), settings.instance))
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(SYSTEM_BCRYPT_ROUNDS)).decode("ascii")
    users = known.users(settings.instance, natsauth.User(user, hashed))
    text = natsauth.render(settings.instance, users)
    return text, f"{user} and {len(users) - 1} agent user(s)", sorted(known.runtimes - set(known.credentials))


def _all_instances(password_file: Path | None, system_user: str | None, admin_url: str | None) -> tuple[str, str, list[str]]:
    if password_file is not None or system_user is not None:
        raise InvalidInput(
            "--all-instances takes each control plane's user and password hash from the instance registry: "
            "drop --system-password-file/--system-user"
        )
    url = admin_url or environ().get(ADMIN_URL_ENV) or ""
    if not url:
        raise InvalidInput(f"--all-instances needs --admin-url or {ADMIN_URL_ENV} (the registry's database)")
    records, credentials = asyncio.run(_registry(url))
    if not records:
        raise InvalidInput("no instances are provisioned (convoy instances create NAME)")
    text = natsaccounts.render_instances(records, {n: c.credentials for n, c in credentials.items()})
    agents = sum(len(c.credentials) for c in credentials.values())
    without = sorted(f"{n}/{rt}" for n, c in credentials.items() for rt in c.runtimes - set(c.credentials))
    return text, f"{len(records)} instance(s), {agents} agent user(s)", without


async def _registry(url: str) -> tuple[list[natsaccounts.InstanceLike], dict[str, AgentCredentials]]:
    from eventstore import instances  # the registry of provisioned instances

    records = list(await instances.list_instances(url))
    credentials = {record.name: await _credentials(url, record.name) for record in records}
    return records, credentials


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
