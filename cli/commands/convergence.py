"""Where releases are: `convoy status`, `convoy why`, and deploy's `--dry-run` / `--wait`.

All of it reads the planner's record through the API (GetConvergence, Why, PlanDeploy),
so it works the same against a local `convoy up` and a remote installation. `--wait`
polls GetConvergence at the deploy's position (read-your-writes) and prints a line per
change; it ends with exit code 0 when every channel converged (or all that is left
waits for a person's approval, which it names), 1 with the reason when a channel failed,
rolled back or was replaced, and 7 when the timeout passed while something still waits
(a window, a soak, a slow rollout).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
import yaml

from cli.client import FAILED, Client, CliError
from cli.commands.common import EndpointOpt, OutputOpt, TokenOpt, connect, reports_errors, split_target
from cli.output import Format, as_dict, emit_one, table
from schemas.convoy.v1 import api_pb2, convergence_pb2

STILL_WAITING = 7
"""Exit code of `deploy --wait` when its timeout passed before the release settled."""

_DONE = {convergence_pb2.INSTANCE_STATUS_CONVERGED}
_BAD = {
    convergence_pb2.INSTANCE_STATUS_FAILED,
    convergence_pb2.INSTANCE_STATUS_ROLLED_BACK,
    convergence_pb2.INSTANCE_STATUS_REPLACED,
}


_MOVING = {
    convergence_pb2.INSTANCE_STATUS_DEPLOYING,
    convergence_pb2.INSTANCE_STATUS_VERIFYING,
    convergence_pb2.INSTANCE_STATUS_ROLLING_BACK,
}


def status_name(value: int) -> str:
    return convergence_pb2.InstanceStatus.Name(value).removeprefix("INSTANCE_STATUS_")


@reports_errors
def status(
    app: Annotated[str, typer.Argument(metavar="APP")],
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show where each service of an application is, per channel and runtime."""
    with connect(endpoint, token) as client:
        application = client.call(client.applications.GetApplication, api_pb2.GetApplicationRequest(name=app))
        services = client.pages(client.services.ListServices, api_pb2.ListServicesRequest(application=app), "services")
        answer = client.call(client.convergence.GetConvergence, api_pb2.GetConvergenceRequest(application=app))
    found = {(c.service, c.channel): c for c in answer.channels}
    if output is not Format.table:
        report = {"application": app, "position": answer.position, "channels": [as_dict(c) for c in answer.channels]}
        typer.echo(json.dumps(report, indent=2) if output is Format.json else yaml.safe_dump(report, sort_keys=False).rstrip())
        return
    for channel in application.release_channels:
        rows = []
        for service in services:
            c = found.get((service.name, channel.name))
            if c is None:
                rows.append([service.name, "-", "-", "no release yet", "-"])
                continue
            healthy = sum(1 for t in c.targets if t.status == convergence_pb2.INSTANCE_STATUS_CONVERGED and t.release_id == c.release_id)
            rows.append([service.name, c.version or "-", status_name(c.status), c.reason or "-", f"{healthy}/{len(channel.runtimes)}"])
        table(["service", "version", "status", "why", "runtimes"], rows, title=f"channel {channel.name}")


@reports_errors
def why(
    target: Annotated[str, typer.Argument(metavar="APP/SERVICE", help="The service, e.g. shop/api.")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="One channel (default: every channel).", show_default=False)] = "",
    evidence: Annotated[bool, typer.Option("--evidence/--no-evidence", help="List the events that prove it.")] = True,
    endpoint: EndpointOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Explain from the log why a service is where it is in each channel."""
    app, service = split_target(target)
    with connect(endpoint, token) as client:
        answer = client.call(client.convergence.Why, api_pb2.WhyRequest(application=app, service=service, channel=channel))
    if output is not Format.table:
        emit_one(answer, output)
        return
    for item in answer.channels:
        version = f" {item.version}" if item.version else ""
        typer.echo(f"{item.channel}{version}: {item.summary}")
        for line in item.details:
            typer.echo(f"  - {line}")
        if evidence and item.evidence:
            typer.echo("  evidence:")
            for event in item.evidence:
                when = event.recorded_at.ToDatetime().strftime("%H:%M:%S")
                typer.echo(f"    #{event.position} {when} {event.type.rsplit('.', 1)[-1]} by {event.actor}: {_short(event.json)}")


def _short(payload: str, limit: int = 140) -> str:
    text = " ".join(payload.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show_plan(client: Client, request: api_pb2.PlanDeployRequest, output: Format) -> None:
    plan = client.call(client.convergence.PlanDeploy, request)
    if output is not Format.table:
        emit_one(plan, output)
        return
    typer.echo(f"dry run: {request.application}/{request.service} version {request.version} (nothing recorded)")
    rows = []
    for step in plan.steps:
        seconds = int(step.after.ToTimedelta().total_seconds())
        rows.append([f"+{seconds}s", step.channel, step.action, step.runtime or "-", step.detail])
    table(["after", "channel", "action", "runtime", "detail"], rows)


def wait_for(
    client: Client,
    app: str,
    service: str,
    release_id: str,
    position: int,
    *,
    timeout: float,
    echo: Callable[[str], Any] = typer.echo,
    poll: float = 0.5,
) -> None:
    """Follow the release until it settles everywhere; raise CliError when it failed or
    the timeout passed."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    request = api_pb2.GetConvergenceRequest(application=app, service=service, min_position=position)
    while True:
        answer = client.call(client.convergence.GetConvergence, request)
        mine = [c for c in answer.channels if c.release_id == release_id]
        for c in mine:
            for key, status, reason in [((c.channel, ""), c.status, c.reason)] + [
                ((c.channel, f"{t.runtime}/{t.namespace}"), t.status, t.reason) for t in c.targets if t.release_id in (release_id, c.rollback_release_id)
            ]:
                if seen.get(key) != (status, reason):
                    seen[key] = (status, reason)
                    where = f"{key[0]} {key[1]}".strip()
                    echo(f"{where}: {status_name(status)}" + (f" — {reason}" if reason else ""))
        bad = [c for c in mine if c.status in _BAD]
        if bad and not any(c.status in _MOVING for c in mine):  # let a rollback finish first
            raise CliError("; ".join(f"{c.channel} {status_name(c.status)}: {c.reason}" for c in bad), FAILED)
        if mine and len(mine) == _channel_count(client, app):
            if all(c.status in _DONE for c in mine):
                echo(f"{app}/{service}: converged in every channel")
                return
            human = [c for c in mine if c.status == convergence_pb2.INSTANCE_STATUS_WAITING_APPROVAL]
            if human and all(c.status in _DONE or c in human for c in mine):
                for c in human:
                    echo(f"{c.channel} needs a person: {c.reason} — `convoy approve {app}/{service} --channel {c.channel}`")
                return
        if time.monotonic() > deadline:
            waiting = "; ".join(f"{c.channel} {status_name(c.status)}: {c.reason}" for c in mine if c.status not in _DONE)
            raise CliError(f"still waiting after {timeout:g}s: {waiting or 'no channel started yet'}", STILL_WAITING)
        time.sleep(poll)  # a CLI polling its server; tests drive it with a short poll


def _channel_count(client: Client, app: str) -> int:
    application = client.call(client.applications.GetApplication, api_pb2.GetApplicationRequest(name=app))
    return len(application.release_channels)
