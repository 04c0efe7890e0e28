"""`convoy tokens`: API tokens (admin only). A new token's secret is printed once."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.client import INVALID, CliError
from cli.commands.common import CaFileOpt, EndpointOpt, OutputOpt, TokenOpt, connect, reports_errors
from cli.output import Column, Format, emit_many, emit_one
from schemas.convoy.v1 import api_pb2, options_pb2

tokens = typer.Typer(name="tokens", help="API tokens.", no_args_is_help=True)

ROLES = {"viewer": options_pb2.ROLE_VIEWER, "deployer": options_pb2.ROLE_DEPLOYER,
         "approver": options_pb2.ROLE_APPROVER, "admin": options_pb2.ROLE_ADMIN}


def role_name(role: int) -> str:
    return next((name for name, value in ROLES.items() if value == role), str(role))


@tokens.command("create")
@reports_errors
def create(
    name: str,
    role: Annotated[str, typer.Option("--role", help="viewer, deployer, approver or admin.", show_default=False)],
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a token; its secret is shown this once."""
    if role.lower() not in ROLES:
        raise CliError(f"--role {role!r}: use one of {', '.join(ROLES)}", INVALID)
    with connect(endpoint, token, ca_file) as client:
        created = client.write(
            client.tokens.CreateToken, api_pb2.CreateTokenRequest(name=name, role=ROLES[role.lower()])
        )
    emit_one(
        created,
        output,
        [("id", created.token_id), ("name", created.name), ("role", role_name(created.role)),
         ("secret", f"{created.secret}  (shown once: store it now)")],
    )


@tokens.command("revoke")
@reports_errors
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).", show_default=False)] = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Revoke a token; it stops working at once."""
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.tokens.RevokeToken, api_pb2.RevokeTokenRequest(token_id=token_id, reason=reason))
    if output is Format.table:
        typer.echo(f"revoked {token_id}" if answer.changed else f"{token_id} was already revoked")
    else:
        emit_one(answer, output)


@tokens.command("list")
@reports_errors
def list_(
    endpoint: EndpointOpt = None, ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List tokens (never their secrets)."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.tokens.ListTokens, api_pb2.ListTokensRequest(), "tokens")
    emit_many(
        found,
        output,
        [Column("id", lambda t: t.token_id), Column("name", lambda t: t.name),
         Column("role", lambda t: role_name(t.role)), Column("revoked", lambda t: t.revoked)],
    )
