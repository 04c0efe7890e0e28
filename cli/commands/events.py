"""`convoy events`: the audit log, filtered, optionally followed.

`--follow` with `--app` uses the API's Watch stream (pushed as events commit); without an
application there is no stream to watch, so it polls ListEvents. `--output json` prints
JSON Lines — one proto3 JSON event per line — so the output can be piped as it arrives.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import typer
import yaml
from google.protobuf import timestamp_pb2

from cli.client import INVALID, CliError, Client
from cli.commands.common import CaFileOpt, EndpointOpt, OutputOpt, TokenOpt, connect, reports_errors
from cli.output import Format, as_dict, as_json_line
from schemas.convoy.v1 import api_pb2

POLL_INTERVAL = 1.0


def parse_since(text: str) -> timestamp_pb2.Timestamp:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)", INVALID) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _header(output: Format) -> None:
    if output is Format.table:
        typer.echo(f"{'POSITION':>8}  {'RECORDED':<25}  {'TYPE':<22} {'ACTOR':<20} STREAM")


def _print(event: api_pb2.Event, output: Format) -> None:
    if output is Format.json:
        typer.echo(as_json_line(event))
    elif output is Format.yaml:
        typer.echo("---\n" + yaml.safe_dump(as_dict(event), sort_keys=False).rstrip())
    else:
        when = event.recorded_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds") if event.recorded_at.seconds else ""
        typer.echo(f"{event.position:>8}  {when:<25}  {event.type.removeprefix('convoy.v1.'):<22} {event.actor:<20} {event.stream_id}")


@reports_errors
def events(
    app: Annotated[
        str,
        typer.Option(
            "--app",
            help="Only events about this application: its commands, the planner's decisions, its agents' observations.",
            show_default=False,
        ),
    ] = "",
    actor: Annotated[str, typer.Option("--actor", help="Only events by this actor.", show_default=False)] = "",
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only this event type, e.g. ReleaseCreated (repeatable).", show_default=False),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="Only events recorded at or after this ISO 8601 time (UTC if no zone).")
    ] = "",
    follow: Annotated[bool, typer.Option("--follow", help="Keep printing new events until Ctrl-C.")] = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show recorded events (the audit log)."""
    types = [t if "." in t else f"convoy.v1.{t}" for t in type_ or []]
    request = api_pb2.ListEventsRequest(application=app, actor=actor, types=types, limit=500)
    if since:
        request.since.CopyFrom(parse_since(since))
    with connect(endpoint, token, ca_file) as client:
        _header(output)
        after = _list(client, request, output)
        if not follow:
            return
        try:
            if app:
                _watch(client, app, after, request, output)
            else:
                while True:
                    time.sleep(POLL_INTERVAL)
                    after = _list(client, request, output, after=after)
        except KeyboardInterrupt:
            return


def _list(client: Client, request: api_pb2.ListEventsRequest, output: Format, *, after: int = 0) -> int:
    """Print every matching event after `after`; answer the last position seen."""
    while True:
        request.after_position = after
        page: api_pb2.ListEventsResponse = client.call(client.events.ListEvents, request)
        for event in page.events:
            _print(event, output)
        # A page can be empty while the scan moved on (the server reads a bounded number of
        # events per call, e.g. other applications' observations): continue from there.
        if page.last_position <= after:
            return after
        after = page.last_position


def _watch(client: Client, app: str, after: int, filters: api_pb2.ListEventsRequest, output: Format) -> None:
    """Watch sends every event of the application; the other filters apply here."""
    request = api_pb2.WatchRequest(application=app, after_position=after)
    for event in client.stream(client.events.Watch, request, until_interrupted=True):
        if filters.actor and event.actor != filters.actor:
            continue
        if filters.types and event.type not in filters.types:
            continue
        if filters.HasField("since") and event.recorded_at.ToNanoseconds() < filters.since.ToNanoseconds():
            continue
        _print(event, output)
