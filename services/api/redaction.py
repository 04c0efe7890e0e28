"""Secret-derived values stay with admins: one redaction, for every read of the log.

The log keeps no usable secret, but it does keep what is derived from one — the SHA-256
of each API token's secret (what authentication compares), the bcrypt of each agent's NATS
password (what nats-server compares). Those are admin material, like ListTokens: with a
viewer token, an offline guess at a weak hash, or a copy for later, must not be one
ListEvents away. Which fields they are is declared in the schema (the `secret` field option
of schemas/convoy/v1/options.proto), so an event added later with such a field is
redacted by marking it there; this module finds the marks (nested messages, repeated
fields and maps included) and replaces the values. The handler layer decides who sees
them (`may_see_secrets`) and every read path that renders stored events — ListEvents,
Watch over gRPC and REST, why's evidence — goes through `services.api.events.to_api`,
which redacts unless told the caller is an admin.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from schemas.convoy.v1 import options_pb2

REDACTED: Final = "[redacted]"
"""What a redacted string field reads; other kinds of field are cleared."""

_PLAN: dict[str, tuple[tuple[FieldDescriptor, ...], tuple[FieldDescriptor, ...]]] = {}
_HAS: dict[str, bool] = {}


def may_see_secrets(role: int) -> bool:
    """Admins only (the role that may list tokens and issue credentials)."""
    return role >= options_pb2.ROLE_ADMIN


def is_secret(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[options_pb2.secret])


def _plan(descriptor: Descriptor) -> tuple[tuple[FieldDescriptor, ...], tuple[FieldDescriptor, ...]]:
    """(secret fields, message-typed fields to look into) of one message type."""
    plan = _PLAN.get(descriptor.full_name)
    if plan is None:
        secret = tuple(f for f in descriptor.fields if is_secret(f))
        nested = tuple(f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_MESSAGE and not is_secret(f))
        plan = _PLAN[descriptor.full_name] = (secret, nested)
    return plan


def has_secrets(descriptor: Descriptor) -> bool:
    """Whether a message of this type can carry a secret-derived value anywhere inside."""
    known = _HAS.get(descriptor.full_name)
    if known is None:
        known = _HAS[descriptor.full_name] = _search(descriptor, frozenset())
    return known


def _search(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name in seen:
        return False  # a recursive type: its marks are found where the recursion starts
    secret, nested = _plan(descriptor)
    inside = seen | {descriptor.full_name}
    return bool(secret) or any(_search(f.message_type, inside) for f in nested)


def redact(message: Message) -> Message:
    """A copy of `message` with every secret-marked value replaced (the message itself
    when it has none)."""
    if not has_secrets(message.DESCRIPTOR):
        return message
    copy = type(message)()
    copy.CopyFrom(message)
    _redact_in_place(copy)
    return copy


def _redact_in_place(message: Message) -> None:
    secret, nested = _plan(message.DESCRIPTOR)
    for field in secret:
        if field.is_repeated:
            values = getattr(message, field.name)
            if field.type == FieldDescriptor.TYPE_STRING and not _is_map(field):
                values[:] = [REDACTED] * len(values)
            else:
                message.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_STRING:
            if getattr(message, field.name):
                setattr(message, field.name, REDACTED)
        else:
            message.ClearField(field.name)
    for field in nested:
        if not has_secrets(field.message_type):
            continue
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    _redact_in_place(item)
        elif field.is_repeated:
            for item in value:
                _redact_in_place(item)
        elif message.HasField(field.name):
            _redact_in_place(value)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
