"""Release commands: deploy (with --dry-run and --wait), approve, reject, bypass,
pause, resume, rollback.

Each write prints one line saying what was recorded (or the proto3 JSON answer with
`--output json|yaml`). Where a release is afterwards — `convoy status`, `convoy why`,
the progress `--wait` prints — lives in cli.commands.convergence.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.commands import convergence
from cli.commands.common import (
    CaFileOpt,
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    connect,
    parse_params,
    reports_errors,
    split_target,
    suffix,
    written,
)
from cli.output import Format
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


@reports_errors
def deploy(
    target: TargetArg,
    version: Annotated[str, typer.Option("--version", help="A label for this version, unique per service.")],
    image: Annotated[str, typer.Option("--image", help="Replace the program's image.", show_default=False)] = "",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A parameter, key=value (repeatable).", show_default=False)
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the intents and waits it would cause; record nothing.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the rollout until it settles in every channel.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits (exit 7 when exceeded).")] = 900.0,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a release of a service version; the planner rolls it through the channels."""
    app, service = split_target(target)
    parameters = parse_params(param)
    with connect(endpoint, token, ca_file) as client:
        if dry_run:
            plan = api_pb2.PlanDeployRequest(application=app, service=service, version=version, image=image, parameters=parameters)
            convergence.show_plan(client, plan, output)
            return
        request = api_pb2.DeployRequest(application=app, service=service, version=version, image=image, parameters=parameters)
        answer: api_pb2.DeployResponse = client.write(client.releases.Deploy, request)
        written(output, answer, f"release {answer.release.id} of {target} version {version}" + suffix(answer.write))
        if wait:
            table = output is Format.table
            convergence.wait_for(
                client, app, service, answer.release.id, answer.write.position, timeout=timeout,
                display=convergence.progress_display(table, f"{target} {version}"),
                echo=typer.echo if table else (lambda line: typer.echo(line, err=True)),
            )


@reports_errors
def approve(
    target: TargetArg,
    channel: ChannelOpt,
    release: ReleaseOpt = "",
    approval: ApprovalOpt = "",
    comment: Annotated[str, typer.Option("--comment", help="Why (recorded).", show_default=False)] = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Sign off a release for a channel's manual approval."""
    app, service = split_target(target)
    request = api_pb2.ApproveRequest(
        application=app, service=service, channel=channel, release_id=release, approval=approval, comment=comment
    )
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.releases.Approve, request)
    written(output, answer, f"approved {target} in {channel}" + suffix(answer))


@reports_errors
def reject(
    target: TargetArg,
    channel: ChannelOpt,
    release: ReleaseOpt = "",
    approval: ApprovalOpt = "",
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).", show_default=False)] = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Reject a release for a channel's manual approval."""
    app, service = split_target(target)
    request = api_pb2.RejectRequest(
        application=app, service=service, channel=channel, release_id=release, approval=approval, reason=reason
    )
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.releases.Reject, request)
    written(output, answer, f"rejected {target} in {channel}" + suffix(answer))


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
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Skip one precondition or protection for a release in a channel (audited)."""
    app, service = split_target(target)
    request = api_pb2.BypassRequest(
        application=app, service=service, channel=channel, release_id=release, target=bypass_target, reason=reason
    )
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.releases.Bypass, request)
    written(output, answer, f"bypassed {bypass_target} for {target} in {channel}" + suffix(answer))


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded).", show_default=False)]


@reports_errors
def pause(
    target: TargetArg,
    channel: OptionalChannel = "",
    reason: ReasonOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Pause a service's convergence (in one channel, or all)."""
    app, service = split_target(target)
    request = api_pb2.PauseConvergenceRequest(application=app, service=service, channel=channel, reason=reason)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.releases.PauseConvergence, request)
    written(output, answer, f"paused {target} in {channel or 'every channel'}" + suffix(answer))


@reports_errors
def resume(
    target: TargetArg,
    channel: OptionalChannel = "",
    reason: ReasonOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Resume a service's convergence (in one channel, or all)."""
    app, service = split_target(target)
    request = api_pb2.ResumeConvergenceRequest(application=app, service=service, channel=channel, reason=reason)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.releases.ResumeConvergence, request)
    written(output, answer, f"resumed {target} in {channel or 'every channel'}" + suffix(answer))


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
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Roll a service back to an earlier release."""
    app, service = split_target(target)
    request = api_pb2.RollbackRequest(
        application=app, service=service, channels=channel or [], target_release_id=release, reason=reason
    )
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.releases.Rollback, request)
    where = ", ".join(channel) if channel else "every channel"
    written(output, answer, f"rollback of {target} requested in {where}" + suffix(answer))


_DECISIONS = (
    "convoy.v1.ApprovalGranted",
    "convoy.v1.ApprovalRejected",
    "convoy.v1.BypassGranted",
    "convoy.v1.ConvergencePaused",
    "convoy.v1.ConvergenceResumed",
)
