"""`convoy instances`: provision Convoy instances on a shared PostgreSQL (operators only).

Runs with the admin URL (`--admin-url` or CONVOY_ADMIN_DATABASE_URL), never with an
instance's. `create` writes the instance's settings — its database URL and the password of
its NATS account's system user — to `<state_dir>/instances/<name>.env`, created 0600 in
one step (no moment where another user could read it), and prints only that path: no
password reaches the terminal, and the registry keeps only the NATS password's bcrypt.
See docs/instances.md.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, TypeVar

import bcrypt
import typer

from cli.client import CONFLICT, FAILED, INVALID, NOT_FOUND, UNAVAILABLE, CliError
from cli.commands.common import confirm, reports_errors
from cli.commands.natsusers import SYSTEM_BCRYPT_ROUNDS
from cli.output import table
from eventstore import instances as provisioning
from eventstore import securefile
from eventstore.errors import ConvoyError, InvalidInput, Unavailable
from eventstore.settings import Settings, environ

instances = typer.Typer(
    name="instances", help="Convoy instances on a shared PostgreSQL (needs the admin URL).", no_args_is_help=True
)

AdminUrl = Annotated[
    str | None,
    typer.Option(
        "--admin-url",
        envvar="CONVOY_ADMIN_DATABASE_URL",
        help="A PostgreSQL URL of a role that may create roles and schemas (CONVOY_ADMIN_DATABASE_URL).",
        show_envvar=True,
        show_default=False,
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where instances/NAME.env goes (default: Convoy's state folder, CONVOY_STATE_DIR)."),
]
_T = TypeVar("_T")


def _admin_url(url: str | None) -> str:
    if not url:
        raise CliError(
            "no admin URL: pass --admin-url or set CONVOY_ADMIN_DATABASE_URL to a PostgreSQL role that may "
            "create roles and schemas (a superuser, or CREATEROLE with CREATE on the database)",
            INVALID,
        )
    return url


def _run(call: Awaitable[_T]) -> _T:
    """Run one provisioning call, turning Convoy's errors into exit codes."""
    try:
        return asyncio.run(call)  # type: ignore[arg-type]
    except InvalidInput as error:
        raise CliError(str(error), INVALID) from None
    except provisioning.UnknownInstance as error:
        raise CliError(str(error), NOT_FOUND) from None
    except (provisioning.InstanceExists, provisioning.InstanceInUse) as error:
        raise CliError(str(error), CONFLICT) from None
    except Unavailable as error:
        raise CliError(f"{error}; check the admin URL's host and that PostgreSQL runs", UNAVAILABLE) from None
    except ConvoyError as error:
        raise CliError(str(error), FAILED) from None


def write_env_file(path: Path, name: str, database_url: str, nats_password: str) -> None:
    """Create the instance's env file, 0600 from its first byte (eventstore.securefile);
    never replaces one (FileExistsError)."""
    if not securefile.create_private(path, env_file_text(name, database_url, nats_password)):
        raise FileExistsError(errno.EEXIST, "exists already", str(path))


def env_file_text(name: str, database_url: str, nats_password: str) -> str:
    return (
        f"# Convoy instance {name}: settings for its services (convoy api/planner/...). Secret: keep 0600.\n"
        f"CONVOY_INSTANCE={name}\n"
        f"CONVOY_DATABASE_URL={database_url}\n"
        f"CONVOY_NATS_PASSWORD={nats_password}\n"
    )


_SizeOpt = Annotated[str | None, typer.Option(help="NATS account limit, bytes (K/M/G/T suffixes).", show_default=False)]
_CountOpt = Annotated[int | None, typer.Option(help="NATS account limit.", show_default=False)]


@instances.command("create")
@reports_errors
def create(
    name: str,
    admin_url: AdminUrl = None,
    max_connections: _CountOpt = None,
    max_storage: _SizeOpt = None,
    max_memory: _SizeOpt = None,
    max_streams: _CountOpt = None,
    max_consumers: _CountOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Provision an instance: schema, roles, registry entry, and its env file."""
    url = _admin_url(admin_url)
    try:
        provisioning.validate_name(name)
        limits = provisioning.parse_limits(
            {"max_connections": max_connections, "max_storage": max_storage, "max_memory": max_memory,
             "max_streams": max_streams, "max_consumers": max_consumers}
        )
    except InvalidInput as error:
        raise CliError(str(error), INVALID) from None
    settings = Settings.from_env(environ(), state_dir=state_dir)
    path = settings.state_dir / "instances" / f"{name}.env"
    if path.exists():
        raise CliError(f"{path} exists already: delete the instance (or move the file) first", CONFLICT)
    try:  # before provisioning: a password nobody can store would be lost
        securefile.ensure_private_dir(path.parent)
    except InvalidInput as error:
        raise CliError(str(error), INVALID) from None
    nats_password = secrets.token_urlsafe(32)
    hashed = bcrypt.hashpw(nats_password.encode("utf-8"), bcrypt.gensalt(SYSTEM_BCRYPT_ROUNDS)).decode("ascii")
    created = _run(provisioning.create(url, name, nats_system_bcrypt=hashed, limits=limits))
    try:
        write_env_file(path, name, created.database_url, nats_password)
    except OSError as error:
        raise CliError(
            f"instance {name} was created but its settings could not be written to {path} "
            f"({error.strerror or error}); its passwords are lost: `convoy instances delete {name} --yes` "
            "and create it again",
            FAILED,
        ) from None
    typer.echo(f"created instance {name}; its settings (secret) are in {path}")
    typer.echo("next:")
    typer.echo("  1. render the NATS accounts for your nats-server: convoy nats-users --all-instances")
    typer.echo(f"  2. start the instance's services with the settings of {path} in their environment")


@instances.command("list")
@reports_errors
def list_(admin_url: AdminUrl = None) -> None:
    """The instances provisioned on this PostgreSQL."""
    records = _run(provisioning.list_instances(_admin_url(admin_url)))
    rows = [
        [r.name, r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
         ",".join(f"{k}={v}" for k, v in sorted(r.limits.items())) or "-"]
        for r in records
    ]
    table(["name", "created", "limits"], rows)


@instances.command("upgrade")
@reports_errors
def upgrade(name: str, admin_url: AdminUrl = None) -> None:
    """Apply the migrations this Convoy needs to an instance (run before upgrading its services)."""
    applied = _run(provisioning.upgrade(_admin_url(admin_url), name))
    if applied:
        typer.echo(f"instance {name}: applied migrations {', '.join(map(str, applied))}")
    else:
        typer.echo(f"instance {name}: already current")


@instances.command("delete")
@reports_errors
def delete(
    name: str,
    admin_url: AdminUrl = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask: the instance's whole event log is dropped.")] = False,
    force: Annotated[bool, typer.Option("--force", help="End the instance's open database sessions.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Drop an instance's schema (its whole log) and roles, and unregister it."""
    url = _admin_url(admin_url)
    try:
        provisioning.validate_name(name)
    except InvalidInput as error:
        raise CliError(str(error), INVALID) from None
    confirm(f"delete instance {name} and its whole event log", yes)
    _run(provisioning.delete(url, name, force=force))
    settings = Settings.from_env(environ(), state_dir=state_dir)
    env_file = settings.state_dir / "instances" / f"{name}.env"
    env_file.unlink(missing_ok=True)
    typer.echo(f"deleted instance {name}")
