"""Friendly YAML values to resource messages, field by field, reporting every problem."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from cli.config.documents import Report
from cli.config.formats import enum_choices, enum_value_name, is_scalar, join_path, key_text, parse_duration, snake, type_name, unknown_choice

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
DURATION_TYPE = "google.protobuf.Duration"

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
    "convoy.v1.Registry": ("name", "url"),
    "convoy.v1.FollowRepository": ("repository", "strategy"),
}
# Oneofs that must have a member set, by message.
_REQUIRED_ONEOF = {
    "convoy.v1.Precondition": "kind",
    "convoy.v1.Protection": "check",
    "convoy.v1.HealthCheck": "kind",
}
_PORT_FIELDS = {("convoy.v1.Port", "port"), ("convoy.v1.HttpGet", "port"), ("convoy.v1.TcpSocket", "port")}


class Converter:
    def __init__(self, report: Report) -> None:
        self.report = report

    def message(self, desc: Descriptor, value: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.report(path, f"must be a mapping of {desc.name} fields, not {type_name(value)}")
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
                self.report(join_path(path, key_text(key)), unknown_choice("field", key, [f.json_name for f in desc.fields]))
                ok = False
                continue
            if field.json_name in given_as:
                self.report(
                    join_path(path, field.json_name),
                    f"given twice (as {given_as[field.json_name]!r} and {key!r})",
                )
                ok = False
                continue
            given_as[field.json_name] = key
            if item is None:  # `field:` with no value means "not set", as JSON null does
                continue
            converted = self.field(field, item, join_path(path, field.json_name))
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
                enum = desc.fields_by_name[snake(name)].enum_type
                hint = f" (one of: {', '.join(enum_choices(enum))})" if enum else ""
                self.report(join_path(path, name), f"is required{hint}")
                ok = False
            elif out.get(name) in ("", []):
                self.report(join_path(path, name), "must not be empty")
                ok = False
        return out if ok else None

    def field(self, field: FieldDescriptor, value: Any, path: str) -> Any:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return self.map(entry, value, path)
        if field.is_repeated:
            if not isinstance(value, list):
                self.report(path, f"must be a list, not {type_name(value)}")
                return _INVALID
            items = [self.value(field, item, f"{path}[{i}]") for i, item in enumerate(value)]
            return _INVALID if any(i is _INVALID for i in items) else items
        return self.value(field, value, path)

    def map(self, entry: Descriptor, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.report(path, f"must be a mapping, not {type_name(value)}")
            return _INVALID
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        out: dict[str, Any] = {}
        ok = True
        for key, item in value.items():
            item_path = join_path(path, key_text(key))
            if key_field.type == FieldDescriptor.TYPE_STRING and not isinstance(key, str):
                self.report(item_path, f"key must be a string, not {type_name(key)}; quote it")
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
            if field.message_type.full_name == DURATION_TYPE:
                return self.duration(value, path)
            if value is None:
                self.report(path, f"must be a mapping of {field.message_type.name} fields, not nothing")
                return _INVALID
            converted = self.message(field.message_type, value, path)
            return _INVALID if converted is None else converted
        if kind == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return value
            self.report(path, f"must be a string, not {type_name(value)}" + ("; quote it" if is_scalar(value) else ""))
            return _INVALID
        if kind == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.report(path, f"must be true or false, not {type_name(value)}")
            return _INVALID
        if kind in _INT_RANGES:
            if not isinstance(value, int) or isinstance(value, bool):
                self.report(path, f"must be a whole number, not {type_name(value)}")
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
            self.report(path, f"must be a number, not {type_name(value)}")
            return _INVALID
        if kind == FieldDescriptor.TYPE_ENUM:
            return self.enum(field.enum_type, value, path)
        self.report(path, f"has a type this loader does not support ({type_name(value)})")
        return _INVALID

    def enum(self, enum: EnumDescriptor, value: Any, path: str) -> Any:
        choices = enum_choices(enum)
        if isinstance(value, str):
            name = enum_value_name(enum, value)
            if name is not None:
                return name
            self.report(path, unknown_choice("value", value, list(choices), listing="one of"))
        else:
            self.report(path, f"must be one of {', '.join(choices)}, not {type_name(value)}")
        return _INVALID

    def duration(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            self.report(
                path,
                f'must be a duration such as "30s", "5m" or "1h30m", not {type_name(value)}'
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
