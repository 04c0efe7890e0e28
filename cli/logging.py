"""Logging for Convoy's processes, configured once at the CLI edge.

Two formats: `console` (the default, for people at a terminal) and `json` (one object
per line, for a log pipeline), chosen by `--log-format` or CONVOY_LOG_FORMAT; the level
by CONVOY_LOG_LEVEL (default info). Logs go to stderr, so what `convoy up` prints for
people stays alone on stdout. Library logs (stdlib `logging`: asyncio, aiohttp) are
rendered the same way.

Correlation ids travel in structlog's contextvars — the API binds the call's, the agent
the intent's, the planner the input's where it logs about one — and `merge_contextvars`
puts them on every line logged meanwhile.

Secrets never reach a log: `redact_secrets` replaces the value of any secret-bearing key
(token, secret, password, authorization, credential …, but not `token_id` and the like,
which name a secret without revealing it), and scrubs token-, bearer- and URL-password
shapes out of every string (URL credentials of every scheme, `password=` parameters and
libpq DSNs: eventstore.redaction), nested dicts and lists, and exception text included.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Annotated, Any, Final, TextIO

import structlog
import typer

from eventstore import redaction
from eventstore.settings import environ

FORMATS: Final = ("console", "json")
REDACTED: Final = "***"
SECRET_WORDS: Final = ("token", "secret", "password", "passwd", "authorization", "credential", "apikey", "api_key", "private_key")
NAMING_SUFFIXES: Final = ("_id", "_ids", "_name", "_file", "_path", "_count", "_kind")
"""A key ending so names or locates a secret (`token_id`, `credential_file`): kept."""

_SCRUB: Final = (
    (re.compile(r"\bcvy_(tok-[0-9a-f]+_)?[A-Za-z0-9_\-]+"), lambda m: f"cvy_{m.group(1) or ''}{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"), lambda m: f"{m.group(1)} {REDACTED}"),
)

LogFormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", help="Log format: console (default) or json (else $CONVOY_LOG_FORMAT).", show_default=False),
]


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """(Cached: a line's keys are the same few names on every line, and this runs for
    each of them on every line logged.)"""
    lowered = key.lower().replace("-", "_")
    if lowered.endswith(NAMING_SUFFIXES):
        return False
    return any(word in lowered for word in SECRET_WORDS)


def scrub(text: str) -> str:
    """Token and bearer shapes, and URL / DSN credentials (eventstore.redaction: every
    scheme's `user:password@`, `password=` and `token=`-like parameters, libpq
    key=value strings), in free text, replaced."""
    # Every string of every log line passes here: run a pattern only on text that holds
    # the word it starts with (`cvy_`; `bearer` / `basic`, any case — non-ASCII text
    # always, since a case-insensitive match there is not a plain lower-case test).
    ascii_text = text.isascii()
    if "cvy_" in text or not ascii_text:
        text = _SCRUB[0][0].sub(_SCRUB[0][1], text)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered or not ascii_text:
        text = _SCRUB[1][0].sub(_SCRUB[1][1], text)
    return redaction.redact_text(text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret value leaves the process in a log line."""
    for key, value in list(event_dict.items()):
        if is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _redact(value)
    return event_dict


def redact_exception(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor, after tracebacks became a field: their text scrubbed."""
    if "exception" in event_dict:
        event_dict["exception"] = _redact(event_dict["exception"])
    return event_dict


def resolve_format(flag: str | None, env: Mapping[str, str]) -> str:
    chosen = (flag or env.get("CONVOY_LOG_FORMAT") or "console").strip().lower()
    if chosen not in FORMATS:
        raise typer.BadParameter(f"log format {chosen!r} is not one of {', '.join(FORMATS)}", param_hint="--log-format")
    return chosen


class _Stderr:
    """Whatever `sys.stderr` is when a line is written (not when logging was set up), so
    a command run in-process — under a test's CliRunner, which swaps and then closes its
    own stderr — leaves no logger writing to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(format: str = "console", *, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog (and route stdlib logging through it) for this process."""
    if format not in FORMATS:
        raise ValueError(f"unknown log format {format!r}")
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    out: Any = stream or _Stderr()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any
    if format == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
        # Tracebacks become fields before the last redaction: an exception's message
        # (a connection error naming its URL) is scrubbed like any other string.
        tail: list[Any] = [structlog.processors.dict_tracebacks, redact_exception]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        tail = [structlog.dev.set_exc_info, structlog.processors.format_exc_info, redact_exception]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared], processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer
            ]
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "convoy", False):
            root.removeHandler(old)
    handler.convoy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(number, logging.INFO))


def setup(flag: str | None) -> str:
    """The CLI's one call: format from the flag or CONVOY_LOG_FORMAT, level from
    CONVOY_LOG_LEVEL. Answers the format chosen."""
    env = environ()
    chosen = resolve_format(flag, env)
    level = env.get("CONVOY_LOG_LEVEL", "info")
    try:
        configure(chosen, level=level)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return chosen
