"""`convoy registries`: the container registries Convoy resolves and follows images on.

`convoy apply -f` declares them (`registry:` documents); these are the reads and the
removal. Credentials show as the reference they are (`env:REGISTRY_PASSWORD`), never a value.
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
from services.secrets.references import describe

registries = typer.Typer(
    name="registries", help="Container registries (images resolved to digests, repositories followed).",
    no_args_is_help=True,
)


def _credentials(registry: resources_pb2.Registry) -> str:
    if not registry.username:
        return "anonymous"
    if not registry.HasField("password"):
        return registry.username
    return f"{registry.username} / {describe(registry.password)}"


def _poll(registry: resources_pb2.Registry) -> str:
    d = registry.min_poll_interval
    return config.format_duration(d.seconds * 10**9 + d.nanos) if registry.HasField("min_poll_interval") else ""


@registries.command("list")
@reports_errors
def registries_list(
    endpoint: EndpointOpt = None, ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List registries."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.registries.ListRegistries, api_pb2.ListRegistriesRequest(), "registries")
    emit_many(
        found,
        output,
        [
            Column("name", lambda r: r.name),
            Column("url", lambda r: r.url),
            Column("credentials", _credentials),
            Column("requests/s", lambda r: f"{r.requests_per_second:g}" if r.requests_per_second else "unlimited"),
            Column("min poll", _poll),
        ],
    )


@registries.command("get")
@reports_errors
def registries_get(
    name: str, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Show one registry (as config YAML unless --output json|yaml)."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.registries.ListRegistries, api_pb2.ListRegistriesRequest(), "registries")
    registry = next((r for r in found if r.name == name), None)
    if registry is None:
        raise CliError(f"registry {name!r} does not exist (convoy registries list shows what does)", NOT_FOUND)
    show_resource(registry, output)


@registries.command("delete")
@reports_errors
def registries_delete(
    name: str, yes: YesOpt = False, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Delete a registry (refused while services run or follow images on it)."""
    confirm(f"delete registry {name}", yes)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.registries.DeleteRegistry, api_pb2.DeleteRegistryRequest(name=name))
    written(output, answer, f"deleted registry {name} (position {answer.position})")
