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
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.api import summaries
from cli.client import FAILED, Client, CliError
from cli.commands.common import (
    CaFileOpt,
    AtOpt,
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    connect,
    reports_errors,
    split_target,
    with_as_of,
)
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
    at: AtOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show what runs where, and what became of each latest release (now, or --at then).

    RUNNING is the version that last converged there (or that a rollback restored),
    HEALTHY how many of the channel's runtimes are settled on what they run, and LATEST
    RELEASE says in one sentence where the newest release stands (`convoy why` has the
    full reasons and the events behind them)."""
    with connect(endpoint, token, ca_file) as client:
        answer = client.call(client.convergence.GetConvergence, with_as_of(api_pb2.GetConvergenceRequest(application=app), at))
        # The declarations at the very position the convergence answer is about.
        then = str(answer.position) if at else ""
        application = client.call(
            client.applications.GetApplication, with_as_of(api_pb2.GetApplicationRequest(name=app), then)
        )
        services = client.pages(
            client.services.ListServices, with_as_of(api_pb2.ListServicesRequest(application=app), then), "services"
        )
    found = {(c.service, c.channel): c for c in answer.channels}
    if output is not Format.table:
        report = {"application": app, "position": answer.position, "channels": [as_dict(c) for c in answer.channels]}
        typer.echo(json.dumps(report, indent=2) if output is Format.json else yaml.safe_dump(report, sort_keys=False).rstrip())
        return
    if at:
        typer.echo(f"as of position {answer.position}")
    bindings = {c.name: len(c.runtimes) for c in application.release_channels}
    for channel in bindings:
        rows = []
        for service in (s.name for s in services):
            c = found.get((service, channel))
            if c is None:
                rows.append([service, "nothing", f"0/{bindings[channel]}", "no release yet"])
                continue
            siblings = [found[(service, other)] for other in bindings if (service, other) in found]
            rows.append(
                [service, summaries.running(c), f"{summaries.settled(c)}/{bindings[channel]}", summaries.latest(c, siblings)]
            )
        table(["service", "running", "healthy", "latest release"], rows, title=f"channel {channel}")


@reports_errors
def why(
    target: Annotated[str, typer.Argument(metavar="APP/SERVICE", help="The service, e.g. shop/api.")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="One channel (default: every channel).", show_default=False)] = "",
    evidence: Annotated[bool, typer.Option("--evidence/--no-evidence", help="List the events that prove it.")] = True,
    at: AtOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Explain from the log why a service is where it is in each channel (now, or --at then)."""
    app, service = split_target(target)
    request = with_as_of(api_pb2.WhyRequest(application=app, service=service, channel=channel), at)
    with connect(endpoint, token, ca_file) as client:
        answer = client.call(client.convergence.Why, request)
    if output is not Format.table:
        emit_one(answer, output)
        return
    if at:
        typer.echo(f"as of position {answer.position}")
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


Row = tuple[str, str, str]
"""(where: "channel" or "channel runtime/namespace", status, reason)."""


class Lines:
    """Progress as plain lines, one per change: for logs, pipes and CI."""

    def __init__(self, echo: Callable[[str], Any] = typer.echo) -> None:
        self._echo = echo
        self._seen: dict[str, tuple[str, str]] = {}

    def show(self, rows: list[Row]) -> None:
        for where, status, reason in rows:
            if self._seen.get(where) != (status, reason):
                self._seen[where] = (status, reason)
                self._echo(f"{where}: {status}" + (f" — {reason}" if reason else ""))

    def close(self) -> None:
        pass


class LiveTable:
    """Progress as a table redrawn in place (rich), for a person at a terminal."""

    def __init__(self, title: str, console: Console | None = None) -> None:
        self._title = title
        self._live = Live(self._table([]), console=console or Console(), refresh_per_second=4, transient=False)
        self._live.start()

    def _table(self, rows: list[Row]) -> Table:
        table = Table(title=self._title, expand=False)
        for column in ("where", "status", "why"):
            table.add_column(column)
        for where, status, reason in rows:
            style = "green" if status == "CONVERGED" else "red" if status in ("FAILED", "ROLLED_BACK") else "yellow"
            table.add_row(where, f"[{style}]{status}[/{style}]", reason)
        return table

    def show(self, rows: list[Row]) -> None:
        self._live.update(self._table(rows))

    def close(self) -> None:
        self._live.stop()


def progress_display(output_is_table: bool, title: str) -> Lines | LiveTable:
    """A live table on a terminal, plain lines otherwise (and for JSON/YAML output,
    where stdout carries the document: the lines go to stderr)."""
    if output_is_table and sys.stdout.isatty():
        return LiveTable(title)
    return Lines(typer.echo if output_is_table else (lambda line: typer.echo(line, err=True)))


def wait_for(
    client: Client,
    app: str,
    service: str,
    release_id: str,
    position: int,
    *,
    timeout: float,
    display: Lines | LiveTable | None = None,
    echo: Callable[[str], Any] = typer.echo,
    poll: float = 0.5,
) -> None:
    """Follow the release until it settles everywhere; raise CliError when it failed or
    the timeout passed."""
    display = display or Lines(echo)
    try:
        message = _follow(client, app, service, release_id, position, timeout=timeout, display=display, poll=poll)
    finally:
        display.close()
    for line in message:
        echo(line)


def _follow(
    client: Client, app: str, service: str, release_id: str, position: int, *, timeout: float,
    display: Lines | LiveTable, poll: float,
) -> list[str]:
    deadline = time.monotonic() + timeout
    request = api_pb2.GetConvergenceRequest(application=app, service=service, min_position=position)
    channels = _channel_count(client, app)
    while True:
        answer = client.call(client.convergence.GetConvergence, request)
        mine = [c for c in answer.channels if c.release_id == release_id]
        rows: list[Row] = []
        for c in mine:
            rows.append((c.channel, status_name(c.status), c.reason))
            rows += [
                (f"{c.channel} {t.runtime}/{t.namespace}", status_name(t.status), t.reason)
                for t in c.targets
                if t.release_id in (release_id, c.rollback_release_id)
            ]
        display.show(rows)
        bad = [c for c in mine if c.status in _BAD]
        if bad and not any(c.status in _MOVING for c in mine):  # let a rollback finish first
            raise CliError("; ".join(f"{c.channel} {status_name(c.status)}: {c.reason}" for c in bad), FAILED)
        if mine and len(mine) == channels:
            if all(c.status in _DONE for c in mine):
                return [f"{app}/{service}: converged in every channel"]
            human = [c for c in mine if c.status == convergence_pb2.INSTANCE_STATUS_WAITING_APPROVAL]
            if human and all(c.status in _DONE or c in human for c in mine):
                return [
                    f"{c.channel} needs a person: {c.reason} — `convoy approve {app}/{service} --channel {c.channel}`"
                    for c in human
                ]
        if time.monotonic() > deadline:
            waiting = "; ".join(f"{c.channel} {status_name(c.status)}: {c.reason}" for c in mine if c.status not in _DONE)
            raise CliError(f"still waiting after {timeout:g}s: {waiting or 'no channel started yet'}", STILL_WAITING)
        time.sleep(poll)  # a CLI polling its server; tests drive it with a short poll


def _channel_count(client: Client, app: str) -> int:
    application = client.call(client.applications.GetApplication, api_pb2.GetApplicationRequest(name=app))
    return len(application.release_channels)
