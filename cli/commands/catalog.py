"""What is configured: `convoy apps`, `services` and `channels` (list, get, and deleting an
application or a service), and the releases a service has had (`convoy releases`).
Runtimes have their own module (cli.commands.runtimes)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.commands.common import (
    CaFileOpt,
    AtOpt,
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    YesOpt,
    confirm,
    connect,
    reports_errors,
    show_resource,
    split_target,
    with_as_of,
    written,
)
from cli.output import Column, Format, emit_many
from schemas.convoy.v1 import api_pb2, resources_pb2

apps = typer.Typer(name="apps", help="Applications.", no_args_is_help=True)
services = typer.Typer(name="services", help="An application's services.", no_args_is_help=True)
channels = typer.Typer(name="channels", help="An application's release channels.", no_args_is_help=True)
releases = typer.Typer(name="releases", help="A service's releases (immutable versions).", no_args_is_help=True)


def _channel_names(app: resources_pb2.Application) -> str:
    return " -> ".join(c.name for c in app.release_channels)


@apps.command("list")
@reports_errors
def apps_list(
    at: AtOpt = "", endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List applications (now, or --at then)."""
    request = with_as_of(api_pb2.ListApplicationsRequest(), at)
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.applications.ListApplications, request, "applications")
    emit_many(
        found,
        output,
        [Column("name", lambda a: a.name), Column("channels", _channel_names), Column("description", lambda a: a.description)],
    )


@apps.command("get")
@reports_errors
def apps_get(
    name: str, at: AtOpt = "", endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Show one application (as config YAML unless --output json|yaml; --at: as declared then)."""
    request = with_as_of(api_pb2.GetApplicationRequest(name=name), at)
    with connect(endpoint, token, ca_file) as client:
        found = client.call(client.applications.GetApplication, request)
    show_resource(found, output)


@apps.command("delete")
@reports_errors
def apps_delete(
    name: str, yes: YesOpt = False, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Delete an application (refused while it still has services or linked resources)."""
    confirm(f"delete application {name}", yes)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.applications.DeleteApplication, api_pb2.DeleteApplicationRequest(name=name))
    written(output, answer, f"deleted application {name} (position {answer.position})")


def _images(service: resources_pb2.Service) -> str:
    return ",".join(p.image for p in service.programs if p.image)


def _digests(release: resources_pb2.Release) -> str:
    """What the release runs: each pinned image's digest (short), "-" when none is pinned."""
    return ",".join(pin.digest[:19] for pin in release.images) or "-"


@services.command("list")
@reports_errors
def services_list(
    app: str, at: AtOpt = "", endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List an application's services (now, or --at then)."""
    request = with_as_of(api_pb2.ListServicesRequest(application=app), at)
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.services.ListServices, request, "services")
    emit_many(
        found,
        output,
        [
            Column("name", lambda s: s.name),
            Column("replicas", lambda s: s.replicas),
            Column("programs", lambda s: [p.name for p in s.programs]),
            Column("images", _images),
        ],
    )


@services.command("get")
@reports_errors
def services_get(
    app: str,
    name: str,
    at: AtOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show one service: convoy services get APP NAME (--at: as declared then)."""
    request = with_as_of(api_pb2.GetServiceRequest(application=app, name=name), at)
    with connect(endpoint, token, ca_file) as client:
        found = client.call(client.services.GetService, request)
    show_resource(found, output)


@services.command("delete")
@reports_errors
def services_delete(
    app: str,
    name: str,
    yes: YesOpt = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Delete a service: convoy services delete APP NAME (the planner has its workloads removed)."""
    confirm(f"delete service {app}/{name}", yes)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(
            client.services.DeleteService, api_pb2.DeleteServiceRequest(application=app, name=name)
        )
    written(output, answer, f"deleted service {app}/{name} (position {answer.position})")


@channels.command("list")
@reports_errors
def channels_list(
    app: str, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List an application's release channels, in order."""
    with connect(endpoint, token, ca_file) as client:
        found = client.call(client.applications.GetApplication, api_pb2.GetApplicationRequest(name=app))
    emit_many(
        found.release_channels,
        output,
        [
            Column("name", lambda c: c.name),
            Column("runtimes", lambda c: [b.runtime + (f"/{b.namespace}" if b.namespace else "") for b in c.runtimes]),
            Column("preconditions", lambda c: [_precondition(p) for p in c.preconditions]),
            Column("protections", lambda c: [p.protection for p in c.protections]),
        ],
    )


def _precondition(pre: resources_pb2.Precondition) -> str:
    if pre.HasField("channel_stable"):
        return f"stable:{pre.channel_stable.channel}"
    if pre.HasField("manual_approval"):
        return f"approval:{pre.manual_approval.name}"
    return pre.WhichOneof("kind") or "none"


@releases.command("list")
@reports_errors
def releases_list(
    target: Annotated[str, typer.Argument(metavar="APP/SERVICE", help="The service, e.g. shop/api.")],
    at: AtOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """List a service's releases, oldest first, with who deployed each and the digests they
    run (now, or --at then); `-o json` shows the full digests and references."""
    app, service = split_target(target)
    request = with_as_of(api_pb2.ListReleasesRequest(application=app, service=service), at)
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.releases.ListReleases, request, "releases")
    emit_many(
        found,
        output,
        [
            Column("version", lambda r: r.version),
            Column("id", lambda r: r.id),
            Column("images", lambda r: _images(r.config)),
            Column("digests", _digests),
            Column("parameters", lambda r: [f"{k}={v}" for k, v in sorted(r.parameters.items())]),
            Column("deployer", lambda r: r.created_by or "-"),
        ],
    )
