"""`convoy resources`: the external things services use (databases, queues, registries) —
list them, unlink one.

`convoy apply -f` links them, at the infrastructure level (every application sees them) or
for one application (`--app` here).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.commands.common import (
    CaFileOpt,
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    YesOpt,
    confirm,
    connect,
    reports_errors,
    written,
)
from cli.output import Column, Format, emit_many
from schemas.convoy.v1 import api_pb2, resources_pb2

resources = typer.Typer(name="resources", help="Resources (external things services use).", no_args_is_help=True)


AppOpt = Annotated[
    str,
    typer.Option(
        "--app", help="The application (default: the infrastructure level, which every application sees).",
        show_default=False,
    ),
]


def _scope(resource: resources_pb2.Resource) -> str:
    desc = resources_pb2.ResourceScope.DESCRIPTOR.values_by_number.get(resource.scope)
    return desc.name.removeprefix("RESOURCE_SCOPE_").lower() if desc else str(resource.scope)


@resources.command("list")
@reports_errors
def resources_list(
    app: Annotated[
        str,
        typer.Option(
            "--app", help="What this application sees: its own resources and the infrastructure's (default: "
            "the infrastructure's only).", show_default=False,
        ),
    ] = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """List resources."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.resources.ListResources, api_pb2.ListResourcesRequest(application=app), "resources")
    emit_many(
        found,
        output,
        [
            Column("name", lambda r: r.name),
            Column("scope", _scope),
            Column("application", lambda r: r.application),
            Column("kind", lambda r: r.kind),
            Column("attributes", lambda r: dict(r.attributes)),
        ],
    )


@resources.command("unlink")
@reports_errors
def resources_unlink(
    name: str,
    app: AppOpt = "",
    yes: YesOpt = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Unlink a resource: an application's with --app, else the infrastructure's (refused
    while services still use it)."""
    scope = resources_pb2.RESOURCE_SCOPE_APPLICATION if app else resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE
    label = f"{app}/{name}" if app else name
    confirm(f"unlink resource {label}", yes)
    request = api_pb2.UnlinkResourceRequest(name=name, scope=scope, application=app)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.resources.UnlinkResource, request)
    written(output, answer, f"unlinked resource {label} (position {answer.position})")
