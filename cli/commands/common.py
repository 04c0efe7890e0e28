"""What every client command shares: the connection options, `--output`, turning a
`CliError` into one line on stderr and its exit code, the one line a write prints, and the
`--yes` confirmation every deletion asks for, and `--at` for reads of the past."""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf.message import Message

from cli import config
from cli.client import FAILED, INVALID, CliError, Client, resolve
from cli.output import Format, emit_one
from eventstore.errors import InvalidInput
from eventstore.settings import environ
from schemas.convoy.v1 import api_pb2

EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="The API's gRPC address, host:port, or grpcs://host:port for TLS (else CONVOY_ENDPOINT, the config "
        "file, or the local `convoy up`).",
        show_default=False,
    ),
]
CaFileOpt = Annotated[
    str | None,
    typer.Option(
        "--ca-file",
        help="PEM CA certificates a grpcs:// endpoint is verified against (else CONVOY_CA_FILE, the config "
        "file's ca_file, or the system trust store).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token (else CONVOY_TOKEN, the config file, or the local admin-token).",
        show_default=False,
    ),
]
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table, json (proto3 JSON) or yaml.")]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (required when stdin is not a terminal).")
]

_AGO = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

AtOpt = Annotated[
    str,
    typer.Option(
        "--at",
        help="Answer as the log stood then: a position (1234), an ISO 8601 time (UTC if no zone), "
        "or how long ago (90s, 15m, 2h, 1d).",
        show_default=False,
    ),
]


def parse_at(text: str, *, now: datetime | None = None) -> api_pb2.AsOf:
    """`--at`: a log position, an ISO 8601 time, or a duration ago."""
    text = text.strip()
    if text.isdigit():
        return api_pb2.AsOf(position=int(text))
    as_of = api_pb2.AsOf()
    ago = _AGO.fullmatch(text)
    if ago:
        moment = (now or datetime.now(UTC)) - timedelta(seconds=int(ago[1]) * _UNITS[ago[2]])
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise CliError(
                f"--at {text!r} is not a position, an ISO 8601 time (e.g. 2026-01-31T12:00:00Z) or a duration "
                "ago (e.g. 15m, 2h)",
                INVALID,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    as_of.time.FromDatetime(moment)
    return as_of


def read_text_file(path: Path, what: str) -> str:
    """A small file's text (a secret, a URL), stripped; InvalidInput saying what is wrong."""
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise InvalidInput(f"cannot read the {what} file {path}: {error.strerror or error}") from None
    if not text:
        raise InvalidInput(f"the {what} file {path} is empty")
    return text


def with_as_of(request: Message, at: str) -> Message:
    """`request` with its `as_of` set from `--at` (unchanged when `at` is empty)."""
    if at:
        request.as_of.CopyFrom(parse_at(at))  # type: ignore[attr-defined]
    return request


F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Print a CliError as `error: ...` on stderr and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def connect(endpoint: str | None, token: str | None, ca_file: str | None = None) -> Iterator[Client]:
    with Client(resolve(endpoint=endpoint, token=token, environ=environ(), ca_file=ca_file)) as client:
        yield client


def split_target(text: str) -> tuple[str, str]:
    """"shop/api" -> ("shop", "api")."""
    app, sep, service = text.partition("/")
    if not sep or not app or not service or "/" in service:
        raise CliError(f"{text!r} is not APP/SERVICE (e.g. shop/api)", INVALID)
    return app, service


def parse_params(params: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--param {item!r} is not key=value", INVALID)
        out[key] = value
    return out


def written(output: Format, answer: Message, line: str) -> None:
    """What a write prints: one line saying what was recorded, or the answer as JSON/YAML."""
    if output is Format.table:
        typer.echo(line)
    else:
        emit_one(answer, output)


def suffix(result: api_pb2.WriteResult) -> str:
    return f" (position {result.position})" if result.changed else " (nothing changed)"


def show_resource(message: Message, output: Format, *extra: str) -> None:
    """A config resource: in the table format as the YAML `convoy apply` reads."""
    if output is Format.table:
        typer.echo(config.render(message).rstrip())
        for line in extra:
            typer.echo(line)
    else:
        emit_one(message, output)


def confirm(action: str, yes: bool) -> None:
    """Go on with `action` ("delete application shop") only if the user agrees: `--yes`, or
    "y" at the prompt on a terminal. With no terminal to ask (a script, a pipe) it needs
    `--yes`, so it never waits for an answer nobody will type, nor acts because stdin
    happened to hold a "y"."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"refusing to {action} without --yes: stdin is not a terminal to ask on", INVALID)
    if not typer.confirm(f"{action[:1].upper()}{action[1:]}?", default=False):
        raise CliError("not confirmed; nothing was changed", FAILED)
