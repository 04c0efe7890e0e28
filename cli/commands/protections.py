"""`convoy protections`: the checks release channels attach — list them, show one, delete one.

`convoy apply -f` creates and updates them; these are the reads and the removal. The API
has no Get for a protection, so `get` picks it from the list.
"""

from __future__ import annotations

import typer

from cli import config
from cli.client import NOT_FOUND, CliError
from cli.commands.common import (
    CaFileOpt,
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    YesOpt,
    confirm,
    connect,
    reports_errors,
    show_resource,
    written,
)
from cli.output import Column, Format, emit_many
from schemas.convoy.v1 import api_pb2, resources_pb2

protections = typer.Typer(
    name="protections", help="Protections (checks release channels attach).", no_args_is_help=True
)


def _check(protection: resources_pb2.Protection) -> str:
    kind = protection.WhichOneof("check")
    if kind == "http_probe":
        return f"http {protection.http_probe.url}"
    if kind == "command":
        return "command " + " ".join(protection.command.command)
    if kind == "agent_health":
        return "agent health"
    return kind or "none"


def _interval(protection: resources_pb2.Protection) -> str:
    if not protection.HasField("interval"):
        return ""
    return config.format_duration(protection.interval.seconds * 10**9 + protection.interval.nanos)


@protections.command("list")
@reports_errors
def protections_list(
    endpoint: EndpointOpt = None, ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List protections."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.protections.ListProtections, api_pb2.ListProtectionsRequest(), "protections")
    emit_many(
        found,
        output,
        [
            Column("name", lambda p: p.name),
            Column("check", _check),
            Column("interval", _interval),
            Column("description", lambda p: p.description),
        ],
    )


@protections.command("get")
@reports_errors
def protections_get(
    name: str, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Show one protection (as config YAML unless --output json|yaml)."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.protections.ListProtections, api_pb2.ListProtectionsRequest(), "protections")
    protection = next((p for p in found if p.name == name), None)
    if protection is None:
        raise CliError(f"protection {name!r} does not exist (convoy protections list shows what does)", NOT_FOUND)
    show_resource(protection, output)


@protections.command("delete")
@reports_errors
def protections_delete(
    name: str, yes: YesOpt = False, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Delete a protection (refused while release channels still attach it)."""
    confirm(f"delete protection {name}", yes)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.protections.DeleteProtection, api_pb2.DeleteProtectionRequest(name=name))
    written(output, answer, f"deleted protection {name} (position {answer.position})")
