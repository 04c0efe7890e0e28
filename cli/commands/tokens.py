"""`convoy tokens`: API tokens (admin only). A new token's secret is printed once."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from cli.client import INVALID, CliError
from cli.commands.common import CaFileOpt, EndpointOpt, OutputOpt, TokenOpt, connect, reports_errors
from cli.output import Column, Format, emit_many, emit_one
from schemas.convoy.v1 import api_pb2, options_pb2, resources_pb2

tokens = typer.Typer(name="tokens", help="API tokens.", no_args_is_help=True)

ROLES = {"viewer": options_pb2.ROLE_VIEWER, "deployer": options_pb2.ROLE_DEPLOYER,
         "approver": options_pb2.ROLE_APPROVER, "admin": options_pb2.ROLE_ADMIN}


def role_name(role: int) -> str:
    return next((name for name, value in ROLES.items() if value == role), str(role))


_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """"30d", "12h", "90m", "2w" (one number and unit)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise CliError(f"--expires-in {text!r}: use a number and a unit, e.g. 90m, 12h, 30d or 2w", INVALID)
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _names(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


@tokens.command("create")
@reports_errors
def create(
    name: str,
    role: Annotated[str, typer.Option("--role", help="viewer, deployer, approver or admin.", show_default=False)],
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Expire after this long: 90m, 12h, 30d, 2w (default: never).")
    ] = None,
    application: Annotated[
        list[str] | None,
        typer.Option("--application", help="Scope: act only on this application (repeat, or comma-separate).", show_default=False),
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", help="Scope: act only on this channel (repeat, or comma-separate).", show_default=False),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option("--owner", help="The principal it acts as (default: its name), e.g. alice or sso:corp:<sub>.", show_default=False),
    ] = None,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a token; its secret is shown this once."""
    if role.lower() not in ROLES:
        raise CliError(f"--role {role!r}: use one of {', '.join(ROLES)}", INVALID)
    request = api_pb2.CreateTokenRequest(
        name=name,
        role=ROLES[role.lower()],
        scope=resources_pb2.TokenScope(applications=_names(application), channels=_names(channel)),
        owner=owner or "",
    )
    if expires_in is not None:
        request.expires_at.FromDatetime(datetime.now(UTC) + parse_duration(expires_in))
    with connect(endpoint, token, ca_file) as client:
        created = client.write(client.tokens.CreateToken, request)
    emit_one(
        created,
        output,
        [("id", created.token_id), ("name", created.name), ("owner", created.owner),
         ("role", role_name(created.role)), ("expires", _expires(created)), ("scope", _scope(created.scope)),
         ("secret", f"{created.secret}  (shown once: store it now)")],
    )


def _expires(token: api_pb2.CreatedToken | api_pb2.TokenInfo) -> str:
    if not token.HasField("expires_at"):
        return "never"
    return token.expires_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _scope(scope: resources_pb2.TokenScope) -> str:
    parts = []
    if scope.applications:
        parts.append("applications " + ",".join(scope.applications))
    if scope.channels:
        parts.append("channels " + ",".join(scope.channels))
    return "; ".join(parts) or "all"


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
        [Column("id", lambda t: t.token_id), Column("name", lambda t: t.name), Column("owner", lambda t: t.owner),
         Column("role", lambda t: role_name(t.role)), Column("expires", _expires), Column("scope", lambda t: _scope(t.scope)),
         Column("revoked", lambda t: t.revoked)],
    )
