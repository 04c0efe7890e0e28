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

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from eventstore.errors import InvalidInput
from schemas.convoy.v1 import api_pb2, resources_pb2

KINDS: dict[str, type[Message]] = {
    "application": resources_pb2.Application,
    "protection": resources_pb2.Protection,
    "resource": resources_pb2.Resource,
    "runtime": resources_pb2.Runtime,
    "service": resources_pb2.Service,
}
SUFFIXES = (".yaml", ".yml")

Report = Callable[[str, str], None]  # (field path, message): records one problem


# ---------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class Source:
    file: Path
    index: int  # the document's position in its file, 0-based (empty documents count)

    def __str__(self) -> str:
        return f"{self.file}: document {self.index}"


@dataclass(frozen=True)
class Document:
    kind: str  # one of KINDS
    message: Message
    source: Source


@dataclass(frozen=True)
class Problem:
    file: Path
    document_index: int | None  # None: the problem concerns the whole file
    field_path: str  # e.g. "application.releaseChannels[1].name"; "" for the document
    message: str

    def __str__(self) -> str:
        parts = [str(self.file)]
        if self.document_index is not None:
            parts.append(f"document {self.document_index}")
        if self.field_path:
            parts.append(self.field_path)
        return ": ".join([*parts, self.message])


class ConfigError(InvalidInput):
    """The config files are wrong; `problems` lists every problem found, in file order.
    Fix them and run again — nothing was sent."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# ---------------------------------------------------------------------------------------
# Loading


def load(path: Path | str) -> list[Document]:
    """Read one config file, or every *.yaml / *.yml file under a directory (recursively,
    in sorted order, skipping hidden files and directories). Raises `ConfigError` listing
    every problem; returns the documents in file order otherwise."""
    root = Path(path)
    problems: list[Problem] = []
    documents: list[Document] = []
    files = _files(root, problems)
    for file in files:
        documents.extend(_load_file(file, problems))
    _check_duplicates(documents, problems)
    if problems:
        raise ConfigError(problems)
    return documents


def loads(text: str, *, file: Path | str = Path("<string>")) -> list[Document]:
    """`load` for text already in memory (stdin, tests, `render` output)."""
    problems: list[Problem] = []
    documents = list(_parse(text, Path(file), problems))
    _check_duplicates(documents, problems)
    if problems:
        raise ConfigError(problems)
    return documents


def _files(root: Path, problems: list[Problem]) -> list[Path]:
    try:
        if root.is_file():
            return [root]
        if not root.is_dir():
            problems.append(Problem(root, None, "", "no such file or directory"))
            return []
    except OSError as e:
        problems.append(Problem(root, None, "", f"cannot read: {e.strerror or e}"))
        return []

    def unreadable(e: OSError) -> None:
        problems.append(Problem(Path(e.filename or root), None, "", f"cannot read: {e.strerror or e}"))

    found: list[Path] = []
    for directory, subdirs, names in os.walk(root, onerror=unreadable):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(
            Path(directory, n) for n in names if n.endswith(SUFFIXES) and not n.startswith(".")
        )
    if not found:
        problems.append(Problem(root, None, "", "no *.yaml or *.yml files in this directory"))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _load_file(file: Path, problems: list[Problem]) -> Iterator[Document]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        problems.append(Problem(file, None, "", f"not UTF-8 text ({e.reason} at byte {e.start})"))
        return
    except OSError as e:
        problems.append(Problem(file, None, "", f"cannot read: {e.strerror or e}"))
        return
    yield from _parse(text, file, problems)


def _parse(text: str, file: Path, problems: list[Problem]) -> Iterator[Document]:
    index = 0
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # already reads (and may reject) the first characters
        while loader.check_data():
            data = loader.get_data()
            for line, column, key in loader.duplicate_keys:
                problems.append(
                    Problem(file, index, "", f"duplicate key {key!r} at line {line}, column {column}")
                )
            clean = not loader.duplicate_keys
            loader.duplicate_keys = []
            if data is not None:
                document = _document(data, Source(file, index), problems)
                if document is not None and clean:
                    yield document
            index += 1
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = e.problem or e.context or "invalid YAML"
        problems.append(Problem(file, index, "", f"invalid YAML{where}: {what}"))
    except yaml.YAMLError as e:
        problems.append(Problem(file, index, "", f"invalid YAML: {e}"))
    except RecursionError:
        problems.append(Problem(file, index, "", "invalid YAML: nested too deeply"))
    finally:
        if loader is not None:
            loader.dispose()


def _document(data: Any, source: Source, problems: list[Problem]) -> Document | None:
    found: list[Problem] = []

    def report(field_path: str, message: str) -> None:
        found.append(Problem(source.file, source.index, field_path, message))

    kinds = ", ".join(KINDS)
    message: Message | None = None
    if not isinstance(data, dict):
        report("", f"must be a mapping with one kind key ({kinds}), not {_type_name(data)}")
    elif not data:
        report("", f"has no kind key; expected one of: {kinds}")
    elif unknown := [k for k in data if k not in KINDS]:
        for key in unknown:
            report(_key_text(key), _unknown("kind", key, list(KINDS), listing="kinds are"))
    elif len(data) > 1:
        given = ", ".join(data)
        report("", f"has several kind keys ({given}); put each in its own document, separated by ---")
    else:
        ((kind, value),) = data.items()
        message = _build(kind, value, report)
        if message is not None and not found:
            _check_semantics(message, report)
    problems.extend(found)
    if message is None or found:
        return None
    return Document(kind, message, source)


def _build(kind: str, value: Any, report: Report) -> Message | None:
    cls = KINDS[kind]
    if value is None:
        report(kind, f"is empty; expected the {kind}'s fields")
        return None
    try:
        converted = _Converter(report).message(cls.DESCRIPTOR, value, kind)
    except RecursionError:
        report(kind, "is nested too deeply (or refers to itself through a YAML alias)")
        return None
    if converted is None:
        return None
    try:
        return json_format.ParseDict(converted, cls())
    except (json_format.ParseError, ValueError, TypeError) as e:  # belt and braces
        report(kind, f"invalid: {e}")
        return None


# ---------------------------------------------------------------------------------------
# YAML: 1.2-style scalars, duplicate keys recorded


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[int, int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        pairs = node.value if isinstance(node, yaml.MappingNode) else []  # super() rejects the rest
        for key_node, _ in pairs:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    mark = key_node.start_mark
                    self.duplicate_keys.append((mark.line + 1, mark.column + 1, key_node.value))
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAML_11_ONLY = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
}
_YAML_12 = [
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+))$"),
        list("-+0123456789"),
    ),
]
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _regexp, _first in _YAML_12:
    _Loader.add_implicit_resolver(_tag, _regexp, _first)


def _strict(construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """PyYAML's scalar constructors raise ValueError/KeyError on explicitly tagged
    nonsense (`!!int x`, `!!bool maybe`); turn that into a YAML error with a position."""

    def wrapper(loader: Any, node: Any) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, LookupError, AttributeError, TypeError, ArithmeticError) as e:
            tag = str(node.tag).rsplit(":", 1)[-1]
            what = repr(node.value) if isinstance(node.value, str) else "this node"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what} as {tag}", node.start_mark
            ) from e

    return wrapper


for _tag_name, _construct in yaml.SafeLoader.yaml_constructors.items():
    _Loader.add_constructor(_tag_name, _strict(_construct))


class _Dumper(yaml.SafeDumper):
    """Quotes every string that a YAML 1.1 *or* a YAML 1.2 reader would take for
    something else, so rendered configs read the same everywhere."""


_Dumper.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
for _tag, _regexp, _first in _YAML_12:
    _Dumper.add_implicit_resolver(_tag, _regexp, _first)


# ---------------------------------------------------------------------------------------
# YAML values -> proto3 JSON, collecting problems


_INVALID = object()
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_DURATION = "google.protobuf.Duration"

# Fields that must be set, by message; names as in proto3 JSON.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "convoy.v1.Application": ("name",),
    "convoy.v1.ReleaseChannel": ("name",),
    "convoy.v1.RuntimeBinding": ("runtime",),
    "convoy.v1.ChannelStable": ("channel",),
    "convoy.v1.ProtectionAttachment": ("protection",),
    "convoy.v1.Protection": ("name",),
    "convoy.v1.HttpProbe": ("url",),
    "convoy.v1.CommandCheck": ("command",),
    "convoy.v1.Parameter": ("name",),
    "convoy.v1.ChannelOverride": ("channel",),
    "convoy.v1.Service": ("application", "name"),
    "convoy.v1.Runtime": ("name", "kind"),
    "convoy.v1.Resource": ("name",),
}
# Oneofs that must have a member set, by message.
_REQUIRED_ONEOF = {
    "convoy.v1.Precondition": "kind",
    "convoy.v1.Protection": "check",
    "convoy.v1.HealthCheck": "kind",
}
_PORT_FIELDS = {("convoy.v1.Port", "port"), ("convoy.v1.HttpGet", "port"), ("convoy.v1.TcpSocket", "port")}


class _Converter:
    def __init__(self, report: Report) -> None:
        self.report = report

    def message(self, desc: Descriptor, value: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.report(path, f"must be a mapping of {desc.name} fields, not {_type_name(value)}")
            return None
        fields: dict[str, FieldDescriptor] = {}
        for f in desc.fields:
            fields[f.json_name] = f
            fields[f.name] = f
        out: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        ok = True
        for key, item in value.items():
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                self.report(_join(path, _key_text(key)), _unknown("field", key, [f.json_name for f in desc.fields]))
                ok = False
                continue
            if field.json_name in given_as:
                self.report(
                    _join(path, field.json_name),
                    f"given twice (as {given_as[field.json_name]!r} and {key!r})",
                )
                ok = False
                continue
            given_as[field.json_name] = key
            if item is None:  # `field:` with no value means "not set", as JSON null does
                continue
            converted = self.field(field, item, _join(path, field.json_name))
            if converted is _INVALID:
                ok = False
            else:
                out[field.json_name] = converted
        for oneof in desc.oneofs:
            members = [f.json_name for f in oneof.fields if f.json_name in given_as and f.json_name in out]
            choices = ", ".join(f.json_name for f in oneof.fields)
            if len(members) > 1:
                self.report(path, f"set only one of {choices} (got {', '.join(members)})")
                ok = False
            elif not members and ok and _REQUIRED_ONEOF.get(desc.full_name) == oneof.name:
                self.report(path, f"must set one of {choices}")
                ok = False
        for name in _REQUIRED.get(desc.full_name, ()):
            if name not in given_as or value[given_as[name]] is None:
                enum = desc.fields_by_name[_snake(name)].enum_type
                hint = f" (one of: {', '.join(_enum_choices(enum))})" if enum else ""
                self.report(_join(path, name), f"is required{hint}")
                ok = False
            elif out.get(name) in ("", []):
                self.report(_join(path, name), "must not be empty")
                ok = False
        return out if ok else None

    def field(self, field: FieldDescriptor, value: Any, path: str) -> Any:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return self.map(entry, value, path)
        if field.is_repeated:
            if not isinstance(value, list):
                self.report(path, f"must be a list, not {_type_name(value)}")
                return _INVALID
            items = [self.value(field, item, f"{path}[{i}]") for i, item in enumerate(value)]
            return _INVALID if any(i is _INVALID for i in items) else items
        return self.value(field, value, path)

    def map(self, entry: Descriptor, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.report(path, f"must be a mapping, not {_type_name(value)}")
            return _INVALID
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        out: dict[str, Any] = {}
        ok = True
        for key, item in value.items():
            item_path = _join(path, _key_text(key))
            if key_field.type == FieldDescriptor.TYPE_STRING and not isinstance(key, str):
                self.report(item_path, f"key must be a string, not {_type_name(key)}; quote it")
                ok = False
                continue
            converted = self.value(value_field, item, item_path)
            if converted is _INVALID:
                ok = False
            else:
                out[str(key)] = converted
        return out if ok else _INVALID

    def value(self, field: FieldDescriptor, value: Any, path: str) -> Any:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == _DURATION:
                return self.duration(value, path)
            if value is None:
                self.report(path, f"must be a mapping of {field.message_type.name} fields, not nothing")
                return _INVALID
            converted = self.message(field.message_type, value, path)
            return _INVALID if converted is None else converted
        if kind == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return value
            self.report(path, f"must be a string, not {_type_name(value)}" + ("; quote it" if _scalar(value) else ""))
            return _INVALID
        if kind == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.report(path, f"must be true or false, not {_type_name(value)}")
            return _INVALID
        if kind in _INT_RANGES:
            if not isinstance(value, int) or isinstance(value, bool):
                self.report(path, f"must be a whole number, not {_type_name(value)}")
                return _INVALID
            low, high = _INT_RANGES[kind]
            low = max(low, 0)  # no Convoy number (count, port, status) is negative
            if (field.containing_type.full_name, field.name) in _PORT_FIELDS:
                low, high = 1, 65535
            if value < 0 <= low:
                self.report(path, f"must not be negative (got {value})")
                return _INVALID
            if not low <= value <= high:
                self.report(path, f"must be between {low} and {high}, not {value}")
                return _INVALID
            return value
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            self.report(path, f"must be a number, not {_type_name(value)}")
            return _INVALID
        if kind == FieldDescriptor.TYPE_ENUM:
            return self.enum(field.enum_type, value, path)
        self.report(path, f"has a type this loader does not support ({_type_name(value)})")
        return _INVALID

    def enum(self, enum: EnumDescriptor, value: Any, path: str) -> Any:
        choices = _enum_choices(enum)
        if isinstance(value, str):
            name = _enum_value_name(enum, value)
            if name is not None:
                return name
            self.report(path, _unknown("value", value, list(choices), listing="one of"))
        else:
            self.report(path, f"must be one of {', '.join(choices)}, not {_type_name(value)}")
        return _INVALID

    def duration(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            self.report(
                path,
                f'must be a duration such as "30s", "5m" or "1h30m", not {_type_name(value)}'
                + (" (a number needs a unit)" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""),
            )
            return _INVALID
        try:
            nanos = parse_duration(value)
        except ValueError as e:
            self.report(path, str(e))
            return _INVALID
        seconds, fraction = divmod(nanos, 10**9)
        return f"{seconds}.{fraction:09d}s" if fraction else f"{seconds}s"


# ---------------------------------------------------------------------------------------
# Checks across fields of one document, and across documents


_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")


def _check_semantics(message: Message, report: Report) -> None:
    if isinstance(message, resources_pb2.Application):
        _check_application(message, report)
    elif isinstance(message, resources_pb2.Service):
        _check_dns_label(message.name, "service.name", report)
        for i, channel in enumerate(message.overrides):
            if sum(1 for o in message.overrides[:i] if o.channel == channel.channel):
                report(f"service.overrides[{i}].channel", f"channel {channel.channel!r} is overridden twice")
    elif isinstance(message, resources_pb2.Resource):
        scope = resources_pb2.ResourceScope
        if message.scope == scope.RESOURCE_SCOPE_UNSPECIFIED:
            message.scope = (
                scope.RESOURCE_SCOPE_APPLICATION if message.application else scope.RESOURCE_SCOPE_INFRASTRUCTURE
            )
        elif message.scope == scope.RESOURCE_SCOPE_APPLICATION and not message.application:
            report("resource.application", "is required when scope is application")
        elif message.scope == scope.RESOURCE_SCOPE_INFRASTRUCTURE and message.application:
            report("resource.application", "must be empty when scope is infrastructure (or set scope: application)")


def _check_application(app: resources_pb2.Application, report: Report) -> None:
    _check_dns_label(app.name, "application.name", report)
    first: dict[str, int] = {}
    for i, channel in enumerate(app.release_channels):
        path = f"application.releaseChannels[{i}]"
        _check_dns_label(channel.name, f"{path}.name", report)
        if channel.name in first:
            report(f"{path}.name", f"duplicate channel {channel.name!r} (also releaseChannels[{first[channel.name]}])")
        first.setdefault(channel.name, i)
        for j, pre in enumerate(channel.preconditions):
            pre_path = f"{path}.preconditions[{j}]"
            if pre.HasField("channel_stable"):
                target = pre.channel_stable.channel
                if target == channel.name:
                    report(f"{pre_path}.channelStable.channel", "a channel cannot wait for itself")
                elif target not in {c.name for c in app.release_channels}:
                    known = [c.name for c in app.release_channels if c.name != channel.name]
                    report(f"{pre_path}.channelStable.channel", _unknown("channel", target, known))
            elif pre.HasField("deploy_window"):
                _check_window(pre.deploy_window, f"{pre_path}.deployWindow", report)
    cycle = _channel_cycle(app)
    if cycle:
        report("application.releaseChannels", f"channels wait for each other in a cycle: {' -> '.join(cycle)}")


def _channel_cycle(app: resources_pb2.Application) -> list[str]:
    waits = {
        c.name: [p.channel_stable.channel for p in c.preconditions if p.HasField("channel_stable")]
        for c in app.release_channels
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str]:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done or name not in waits:
            return []
        for target in waits[name]:
            if target != name and (cycle := visit(target, [*trail, name])):
                return cycle
        done.add(name)
        return []

    for name in waits:
        if cycle := visit(name, []):
            return cycle
    return []


def _check_window(window: resources_pb2.DeployWindow, path: str, report: Report) -> None:
    for i, day in enumerate(window.days):
        if day not in _DAYS:
            report(f"{path}.days[{i}]", _unknown("day", day, list(_DAYS), listing="one of"))
    for name in ("start", "end"):
        value = getattr(window, name)
        if not _CLOCK.match(value):
            report(f"{path}.{name}", f'must be a 24-hour time "HH:MM", not {value!r}')
    if _CLOCK.match(window.start) and _CLOCK.match(window.end) and window.start >= window.end:
        report(f"{path}.end", f"must be later than start ({window.start})")


def _check_dns_label(name: str, path: str, report: Report) -> None:
    if name and not _DNS_LABEL.match(name):
        report(path, f"{name!r} must be a DNS label: at most 63 lower-case letters, digits and '-'")


def identity(document: Document) -> tuple[str, ...]:
    """What makes a document the same resource as another (the key the API stores it by)."""
    m = document.message
    if isinstance(m, resources_pb2.Service):
        return ("service", m.application, m.name)
    if isinstance(m, resources_pb2.Resource):
        return ("resource", m.application, m.name)
    return (document.kind, getattr(m, "name"))


def _check_duplicates(documents: Iterable[Document], problems: list[Problem]) -> None:
    first: dict[tuple[str, ...], Document] = {}
    for document in documents:
        key = identity(document)
        if key in first:
            name = "/".join(k for k in key[1:] if k)
            problems.append(
                Problem(
                    document.source.file,
                    document.source.index,
                    f"{document.kind}.name",
                    f"duplicate {document.kind} {name!r}: already defined in {first[key].source}",
                )
            )
        else:
            first[key] = document


# ---------------------------------------------------------------------------------------
# Requests


def _rank(document: Document) -> int:
    m = document.message
    if isinstance(m, resources_pb2.Resource):
        return 4 if m.scope == resources_pb2.RESOURCE_SCOPE_APPLICATION else 2
    return {"runtime": 0, "protection": 1, "application": 3, "service": 5}[document.kind]


def to_requests(documents: Iterable[Document]) -> list[tuple[Document, Message]]:
    """The API requests that apply `documents`, dependencies first: runtimes, protections,
    infrastructure resources, applications, application resources, services. Within a
    group the order of the files is kept."""
    out: list[tuple[Document, Message]] = []
    for document in sorted(documents, key=_rank):
        m = document.message
        request: Message
        if isinstance(m, resources_pb2.Runtime):
            request = api_pb2.ApplyRuntimeRequest(runtime=m)
        elif isinstance(m, resources_pb2.Protection):
            request = api_pb2.ApplyProtectionRequest(protection=m)
        elif isinstance(m, resources_pb2.Resource):
            request = api_pb2.LinkResourceRequest(resource=m)
        elif isinstance(m, resources_pb2.Application):
            request = api_pb2.ApplyApplicationRequest(application=m)
        elif isinstance(m, resources_pb2.Service):
            request = api_pb2.ApplyServiceRequest(service=m)
        else:
            raise TypeError(f"not a config resource: {type(m).__name__}")
        out.append((document, request))
    return out


# ---------------------------------------------------------------------------------------
# Rendering


def render(message: Message) -> str:
    """The YAML document for a resource message, in the friendly form `load` reads
    (camelCase fields in schema order, short enum names, durations like "1h30m", map keys
    sorted), so two renders can be diffed line by line."""
    for kind, cls in KINDS.items():
        if isinstance(message, cls):
            data = {kind: _friendly(message)}
            return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    raise TypeError(f"not a config resource: {type(message).__name__}")


def _friendly(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            out[field.json_name] = {k: _friendly_value(value_field, value[k]) for k in sorted(value)}
        elif field.is_repeated:
            out[field.json_name] = [_friendly_value(field, v) for v in value]
        else:
            out[field.json_name] = _friendly_value(field, value)
    return out


def _friendly_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        desc = field.enum_type.values_by_number.get(value)
        return _enum_short(field.enum_type, desc.name) if desc else value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _DURATION:
            return format_duration(value.seconds * 10**9 + value.nanos)
        return _friendly(value)
    return value


# ---------------------------------------------------------------------------------------
# Durations and enums


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NANOS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_MAX_DURATION_NANOS = 315_576_000_000 * 10**9  # the protobuf Duration range


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go-style duration ("300ms", "30s", "5m", "1h30m", "1.5h")."""
    bad = f'{text!r} is not a duration such as "30s", "5m" or "1h30m"'
    stripped = text.strip()
    if stripped == "0":
        return 0
    if stripped.startswith("-"):
        raise ValueError(f"{text!r}: must not be negative")
    pos, total = 0, Decimal(0)
    while pos < len(stripped):
        part = _DURATION_PART.match(stripped, pos)
        if part is None:
            raise ValueError(bad)
        try:
            total += Decimal(part.group(1)) * _UNIT_NANOS[part.group(2)]
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            raise ValueError(bad) from None
        pos = part.end()
    if pos == 0:
        raise ValueError(bad)
    if total != total.to_integral_value():
        raise ValueError(f"{text!r} is finer than a nanosecond")
    if total > _MAX_DURATION_NANOS:
        raise ValueError(f"{text!r} is longer than 10,000 years")
    return int(total)


def format_duration(nanos: int) -> str:
    """The shortest friendly spelling `parse_duration` reads back to `nanos`."""
    if nanos < 0:
        return "-" + format_duration(-nanos)  # never produced by load; shown as stored
    if nanos == 0:
        return "0s"
    if nanos < 10**9:
        for unit, size in (("ms", 10**6), ("us", 10**3)):
            if nanos % size == 0:
                return f"{nanos // size}{unit}"
        return f"{nanos}ns"
    hours, rest = divmod(nanos, _UNIT_NANOS["h"])
    minutes, rest = divmod(rest, _UNIT_NANOS["m"])
    seconds, fraction = divmod(rest, 10**9)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if seconds or fraction:
        text += f"{seconds}" + (f".{fraction:09d}".rstrip("0") if fraction else "") + "s"
    return text


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", enum.name).upper() + "_"


def _enum_short(enum: EnumDescriptor, name: str) -> str:
    prefix = _enum_prefix(enum)
    return (name[len(prefix) :] if name.startswith(prefix) else name).lower()


def _enum_choices(enum: EnumDescriptor) -> dict[str, str]:
    """Friendly name -> value name, without the UNSPECIFIED zero value."""
    return {_enum_short(enum, v.name): v.name for v in enum.values if v.number != 0}


def _enum_value_name(enum: EnumDescriptor, text: str) -> str | None:
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text.strip())
    normal = re.sub(r"[-\s]+", "_", words).upper()
    names = set(_enum_choices(enum).values())
    for candidate in (normal, _enum_prefix(enum) + normal):
        if candidate in names:
            return candidate
    return None


# ---------------------------------------------------------------------------------------
# Wording


def _unknown(noun: str, given: Any, valid: list[str], *, listing: str = "") -> str:
    """'unknown field "x"; did you mean "y"?', listing the valid names when asked to or
    when none is close."""
    text = f"unknown {noun} {str(given)!r}"
    close = difflib.get_close_matches(str(given), valid, n=1, cutoff=0.6)
    if close:
        text += f"; did you mean {close[0]!r}?"
    if valid and (listing or not close):
        text += f" ({listing or 'valid'}: {', '.join(valid)})"
    return text


def _snake(json_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", json_name).lower()


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key_text(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else repr(text)


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, bool))


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
