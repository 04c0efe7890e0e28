"""Release commands: deploy, approve, reject, bypass, pause, resume, rollback, and
`convoy status`.

Each write prints one line saying what was recorded (or the proto3 JSON answer with
`--output json|yaml`). `status` shows what the API can tell today — each service's latest
release and, per channel, the approvals, rejections, bypasses and pauses recorded for it;
where a release actually is in each channel comes from the planner, which is not built
yet, and the output says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Annotated, Any

import typer
import yaml
from google.protobuf.message import Message

from cli.commands.common import (
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    connect,
    parse_params,
    reports_errors,
    split_target,
)
from cli.output import Format, emit_one, table
from schemas.convoy.v1 import api_pb2

TargetArg = Annotated[str, typer.Argument(metavar="APP/SERVICE", help="The service, e.g. shop/api.")]
ChannelOpt = Annotated[str, typer.Option("--channel", "-c", help="The release channel.", show_default=False)]
OptionalChannel = Annotated[
    str, typer.Option("--channel", "-c", help="One channel (default: every channel).", show_default=False)
]
ReleaseOpt = Annotated[
    str, typer.Option("--release", help="Release id (default: the service's current release).", show_default=False)
]
ApprovalOpt = Annotated[
    str, typer.Option("--approval", help="The approval's name (default: the channel's only one).", show_default=False)
]


def _written(output: Format, answer: Message, line: str) -> None:
    if output is Format.table:
        typer.echo(line)
    else:
        emit_one(answer, output)


def _suffix(result: api_pb2.WriteResult) -> str:
    return f" (position {result.position})" if result.changed else " (nothing changed)"


@reports_errors
def deploy(
    target: TargetArg,
    version: Annotated[str, typer.Option("--version", help="A label for this version, unique per service.")],
    image: Annotated[str, typer.Option("--image", help="Replace the program's image.", show_default=False)] = "",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A parameter, key=value (repeatable).", show_default=False)
    ] = None,
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a release of a service version; the planner rolls it through the channels."""
    app, service = split_target(target)
    request = api_pb2.DeployRequest(
        application=app, service=service, version=version, image=image, parameters=parse_params(param)
    )
    with connect(endpoint, token) as client:
        answer: api_pb2.DeployResponse = client.write(client.releases.Deploy, request)
    _written(output, answer, f"release {answer.release.id} of {target} version {version}" + _suffix(answer.write))


@reports_errors
def approve(
    target: TargetArg,
    channel: ChannelOpt,
    release: ReleaseOpt = "",
    approval: ApprovalOpt = "",
    comment: Annotated[str, typer.Option("--comment", help="Why (recorded).", show_default=False)] = "",
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Sign off a release for a channel's manual approval."""
    app, service = split_target(target)
    request = api_pb2.ApproveRequest(
        application=app, service=service, channel=channel, release_id=release, approval=approval, comment=comment
    )
    with connect(endpoint, token) as client:
        answer = client.write(client.releases.Approve, request)
    _written(output, answer, f"approved {target} in {channel}" + _suffix(answer))


@reports_errors
def reject(
    target: TargetArg,
    channel: ChannelOpt,
    release: ReleaseOpt = "",
    approval: ApprovalOpt = "",
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).", show_default=False)] = "",
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Reject a release for a channel's manual approval."""
    app, service = split_target(target)
    request = api_pb2.RejectRequest(
        application=app, service=service, channel=channel, release_id=release, approval=approval, reason=reason
    )
    with connect(endpoint, token) as client:
        answer = client.write(client.releases.Reject, request)
    _written(output, answer, f"rejected {target} in {channel}" + _suffix(answer))


@reports_errors
def bypass(
    target: TargetArg,
    channel: ChannelOpt,
    bypass_target: Annotated[
        str,
        typer.Option("--target", help='"precondition:<name>" or "protection:<name>".', show_default=False),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded; required).", show_default=False)],
    release: ReleaseOpt = "",
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Skip one precondition or protection for a release in a channel (audited)."""
    app, service = split_target(target)
    request = api_pb2.BypassRequest(
        application=app, service=service, channel=channel, release_id=release, target=bypass_target, reason=reason
    )
    with connect(endpoint, token) as client:
        answer = client.write(client.releases.Bypass, request)
    _written(output, answer, f"bypassed {bypass_target} for {target} in {channel}" + _suffix(answer))


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded).", show_default=False)]


@reports_errors
def pause(
    target: TargetArg,
    channel: OptionalChannel = "",
    reason: ReasonOpt = "",
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Pause a service's convergence (in one channel, or all)."""
    app, service = split_target(target)
    request = api_pb2.ConvergenceRequest(application=app, service=service, channel=channel, reason=reason)
    with connect(endpoint, token) as client:
        answer = client.write(client.releases.PauseConvergence, request)
    _written(output, answer, f"paused {target} in {channel or 'every channel'}" + _suffix(answer))


@reports_errors
def resume(
    target: TargetArg,
    channel: OptionalChannel = "",
    reason: ReasonOpt = "",
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Resume a service's convergence (in one channel, or all)."""
    app, service = split_target(target)
    request = api_pb2.ConvergenceRequest(application=app, service=service, channel=channel, reason=reason)
    with connect(endpoint, token) as client:
        answer = client.write(client.releases.ResumeConvergence, request)
    _written(output, answer, f"resumed {target} in {channel or 'every channel'}" + _suffix(answer))


@reports_errors
def rollback(
    target: TargetArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded; required).", show_default=False)],
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", "-c", help="A channel (repeatable; default: every channel).", show_default=False),
    ] = None,
    release: Annotated[
        str, typer.Option("--to", help="Release id (default: the last converged one).", show_default=False)
    ] = "",
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Roll a service back to an earlier release."""
    app, service = split_target(target)
    request = api_pb2.RollbackRequest(
        application=app, service=service, channels=channel or [], target_release_id=release, reason=reason
    )
    with connect(endpoint, token) as client:
        answer = client.write(client.releases.Rollback, request)
    where = ", ".join(channel) if channel else "every channel"
    _written(output, answer, f"rollback of {target} requested in {where}" + _suffix(answer))


_DECISIONS = (
    "convoy.v1.ApprovalGranted",
    "convoy.v1.ApprovalRejected",
    "convoy.v1.BypassGranted",
    "convoy.v1.ConvergencePaused",
    "convoy.v1.ConvergenceResumed",
)
PLANNER_NOTE = "where each release is in each channel comes from the planner, which is not running yet"


@reports_errors
def status(
    app: Annotated[str, typer.Argument(metavar="APP")],
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show an application's services per channel.

    For now what the API knows: each service's latest release and the approvals,
    bypasses and pauses recorded for it per channel (rollout progress needs the planner)."""
    with connect(endpoint, token) as client:
        application = client.call(client.applications.GetApplication, api_pb2.GetApplicationRequest(name=app))
        services = client.pages(client.services.ListServices, api_pb2.ListServicesRequest(application=app), "services")
        latest: dict[str, api_pb2.Release | None] = {}
        for service in services:
            releases = client.pages(
                client.releases.ListReleases,
                api_pb2.ListReleasesRequest(application=app, service=service.name),
                "releases",
            )
            latest[service.name] = releases[-1] if releases else None
        decisions = _decisions(client, app)
    report: dict[str, Any] = {"application": app, "note": PLANNER_NOTE, "channels": []}
    for channel in application.release_channels:
        rows = []
        for service in services:
            release = latest[service.name]
            seen = decisions[(service.name, channel.name)]
            paused = decisions_paused(decisions[(service.name, "")], seen)
            mine = [d for d in seen if release is not None and d.get("releaseId") == release.id]
            rows.append(
                {
                    "service": service.name,
                    "release": release.id if release else "",
                    "version": release.version if release else "",
                    "approvals": [_decision_text(d) for d in mine],
                    "paused": paused,
                }
            )
        report["channels"].append({"channel": channel.name, "services": rows})
    if output is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    if output is Format.yaml:
        typer.echo(yaml.safe_dump(report, sort_keys=False).rstrip())
        return
    for entry in report["channels"]:
        table(
            ["service", "latest release", "version", "approvals", "paused"],
            [
                [r["service"], r["release"] or "-", r["version"] or "-", ", ".join(r["approvals"]) or "-", "yes" if r["paused"] else "no"]
                for r in entry["services"]
            ],
            title=f"channel {entry['channel']}",
        )
        typer.echo("")
    typer.echo(f"note: {PLANNER_NOTE}")


def _decisions(client: Any, app: str) -> defaultdict[tuple[str, str], list[dict[str, Any]]]:
    """Recorded decisions by (service, channel), oldest first; channel "" = every channel."""
    out: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    after = 0
    while True:
        page = client.call(
            client.events.ListEvents,
            api_pb2.ListEventsRequest(after_position=after, application=app, types=list(_DECISIONS), limit=500),
        )
        for event in page.events:
            data = json.loads(event.json or "{}")
            data["type"] = event.type.rsplit(".", 1)[-1]
            data["actor"] = event.actor
            data["_position"] = event.position
            out[(data.get("service", ""), data.get("channel", ""))].append(data)
        if not page.events or page.last_position <= after:
            return out
        after = page.last_position


def decisions_paused(everywhere: list[dict[str, Any]], here: list[dict[str, Any]]) -> bool:
    """Whether the last pause/resume that applies to this channel was a pause."""
    relevant = [d for d in [*everywhere, *here] if d["type"] in ("ConvergencePaused", "ConvergenceResumed")]
    return bool(relevant) and max(relevant, key=lambda d: d.get("_position", 0))["type"] == "ConvergencePaused"


def _decision_text(d: dict[str, Any]) -> str:
    kind = {"ApprovalGranted": "approved", "ApprovalRejected": "rejected", "BypassGranted": "bypassed"}.get(d["type"])
    if kind is None:
        return ""
    what = d.get("approval") or d.get("target") or ""
    return f"{kind} {what} by {d.get('approver') or d.get('actor')}".replace("  ", " ")

