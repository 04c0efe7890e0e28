"""How the CLI prints answers: `--output table|json|yaml`.

`json` is the proto3 JSON mapping (the same the REST API speaks), one object, or an array
for lists; `yaml` is the same data as YAML; `table` is a rich table on a terminal and plain
aligned columns otherwise, so `convoy apps list | grep` works. Streams of events print as
JSON Lines (one object per line) so they can be piped while they arrive.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    value: Callable[[Any], object]


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


def as_json_line(message: Message) -> str:
    return json.dumps(as_dict(message), separators=(",", ":"), sort_keys=False)


def emit_one(message: Message, fmt: Format, fields: Sequence[tuple[str, object]] | None = None) -> None:
    """One object: as JSON/YAML, or as `key: value` lines for the table format."""
    if fmt is Format.json:
        typer.echo(json.dumps(as_dict(message), indent=2))
    elif fmt is Format.yaml:
        typer.echo(yaml.safe_dump(as_dict(message), sort_keys=False, allow_unicode=True).rstrip())
    else:
        rows = fields if fields is not None else [(k, _cell(v)) for k, v in as_dict(message).items()]
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            typer.echo(f"{key + ':':<{width + 1}} {value}")


def emit_many(messages: Iterable[Message], fmt: Format, columns: Sequence[Column], *, title: str = "") -> None:
    items = list(messages)
    if fmt is Format.json:
        typer.echo(json.dumps([as_dict(m) for m in items], indent=2))
    elif fmt is Format.yaml:
        typer.echo(yaml.safe_dump([as_dict(m) for m in items], sort_keys=False, allow_unicode=True).rstrip())
    else:
        table([c.header for c in columns], [[_cell(c.value(m)) for c in columns] for m in items], title=title)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "") -> None:
    """A rich table on a terminal; plain aligned text (upper-case headers) otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers, title=title or None)
        for row in rows:
            t.add_row(*row)
        Console().print(t)
        return
    if title:
        typer.echo(title)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [[h.upper() for h in headers], *rows]
    for line in lines:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if value is None:
        return ""
    return str(value)
