"""Declarative config files: YAML documents in, typed resource messages and API requests out.

`convoy apply -f`, `convoy validate` and `convoy diff` all read configs through `load`, so
a config is checked the same way everywhere, and *before* anything is sent: every problem in
every file is collected and reported at once (`ConfigError`), each with its file, document
index and field path, because fixing one error per round trip is what makes config tools
painful. Only checks that need no server state happen here (syntax, shape, types, names,
duplicates, references inside one application); the API checks the rest when it decides.

A document holds exactly one kind key (`application`, `service`, `runtime`, `protection`,
`resource`) whose value is the resource message in proto3 JSON form (lowerCamelCase or
snake_case field names), with friendlier spellings for people: durations like "5m" or
"1h30m", enums by their short name (`kind: exec`, `lifecycle: [post_deployment]`).
`render` writes that friendly form back, so `load(render(m))` gives `m` again.

YAML is read with YAML 1.2 scalars (only true/false are booleans; no sexagesimal numbers
or timestamps), so `start: 17:30` or `country: no` stay strings, and duplicate keys are an
error instead of the silent last-one-wins of YAML 1.1 parsers.
"""

from cli.config.checks import identity
from cli.config.documents import KINDS, SUFFIXES, ConfigError, Document, Problem, Source
from cli.config.formats import format_duration, parse_duration
from cli.config.loader import load, loads, to_declarations, to_requests
from cli.config.render import render

__all__ = [
    "KINDS",
    "SUFFIXES",
    "ConfigError",
    "Document",
    "Problem",
    "Source",
    "format_duration",
    "identity",
    "load",
    "loads",
    "parse_duration",
    "render",
    "to_declarations",
    "to_requests",
]
