"""`convoy secrets`: values Convoy keeps encrypted for the control plane (admin only).

A value is read from stdin (piped) or a hidden prompt (a terminal), never from the command
line, where it would land in shell history and in every process listing. Nothing reads a
value back: `list` shows names, the key each is encrypted under, and who set it when.
"""

from __future__ import annotations

import sys
from datetime import UTC
from typing import Annotated

import typer

from cli.client import INVALID, CliError
from cli.commands.common import CaFileOpt, EndpointOpt, OutputOpt, TokenOpt, YesOpt, confirm, connect, reports_errors
from cli.output import Column, Format, emit_many, emit_one
from schemas.convoy.v1 import api_pb2

secrets = typer.Typer(name="secrets", help="Secrets Convoy keeps (encrypted; never shown).", no_args_is_help=True)

MAX_BYTES = 64 * 1024


def read_value(name: str) -> str:
    """The value from a hidden prompt on a terminal, else all of stdin (one trailing newline dropped)."""
    if sys.stdin.isatty():
        value = typer.prompt(f"Value of secret {name}", hide_input=True, confirmation_prompt=True)
    else:
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise CliError(f"the value on stdin is larger than {MAX_BYTES} bytes", INVALID)
        try:
            value = data.decode()
        except UnicodeDecodeError:
            raise CliError("the value on stdin is not UTF-8 text", INVALID) from None
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise CliError("the value is empty: pipe it on stdin (e.g. `convoy secrets set NAME < file`) or type it", INVALID)
    return value


@secrets.command("set")
@reports_errors
def set_(
    name: str,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Set a secret; the value comes from stdin or a hidden prompt, never an argument."""
    value = read_value(name)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.secrets.SetSecret, api_pb2.SetSecretRequest(name=name, value=value))
    if output is Format.table:
        typer.echo(f"secret {name} set (encrypted; the value is not shown again)")
    else:
        emit_one(answer, output)


@secrets.command("delete")
@reports_errors
def delete(
    name: str,
    yes: YesOpt = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Delete a secret."""
    confirm(f"delete secret {name}", yes)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.secrets.DeleteSecret, api_pb2.DeleteSecretRequest(name=name))
    if output is Format.table:
        typer.echo(f"secret {name} deleted")
    else:
        emit_one(answer, output)


@secrets.command("list")
@reports_errors
def list_(
    endpoint: EndpointOpt = None, ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List secrets: names, key ids, who set them when (never values)."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.secrets.ListSecrets, api_pb2.ListSecretsRequest(), "secrets")
    emit_many(
        found,
        output,
        [Column("name", lambda s: s.name), Column("key", lambda s: s.key_id), Column("by", lambda s: s.updated_by),
         Column("at", lambda s: s.updated_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds") if s.updated_at.seconds else ""),
         Column("why", lambda s: s.cause)],
    )


@secrets.command("rotate-key")
@reports_errors
def rotate_key(
    retire_old_keys: Annotated[
        bool, typer.Option("--retire-old-keys", help="Also remove the keys no secret needs any more (older history under them can no longer be read).")
    ] = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Make a new keyring key current and re-encrypt every secret under it."""
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.secrets.RotateSecretKey, api_pb2.RotateSecretKeyRequest(retire_old_keys=retire_old_keys))
    if output is Format.table:
        typer.echo(f"key rotated; {max(0, len(answer.event_ids) - 1)} secret(s) re-encrypted")
    else:
        emit_one(answer, output)
