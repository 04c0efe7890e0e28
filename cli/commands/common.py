"""What every client command shares: the connection options, `--output`, and turning a
`CliError` into one line on stderr and its exit code."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer

from cli.client import INVALID, CliError, Client, resolve
from cli.output import Format
from eventstore.settings import environ

EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="The API's gRPC address, host:port (else CONVOY_ENDPOINT, the config file, or the local `convoy up`).",
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
def connect(endpoint: str | None, token: str | None) -> Iterator[Client]:
    with Client(resolve(endpoint=endpoint, token=token, environ=environ())) as client:
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
