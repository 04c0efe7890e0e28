"""Resource messages back to the friendly YAML form, so `load(render(m))` gives `m`."""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cli.config.convert import DURATION_TYPE
from cli.config.documents import KINDS
from cli.config.formats import enum_short, format_duration
from cli.config.yamlio import YamlDumper

# ---------------------------------------------------------------------------------------
# Rendering


def render(message: Message) -> str:
    """The YAML document for a resource message, in the friendly form `load` reads
    (camelCase fields in schema order, short enum names, durations like "1h30m", map keys
    sorted), so two renders can be diffed line by line."""
    for kind, cls in KINDS.items():
        if isinstance(message, cls):
            data = {kind: _friendly(message)}
            return yaml.dump(data, Dumper=YamlDumper, sort_keys=False, allow_unicode=True, width=100)
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
        return enum_short(field.enum_type, desc.name) if desc else value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == DURATION_TYPE:
            return format_duration(value.seconds * 10**9 + value.nanos)
        return _friendly(value)
    return value
