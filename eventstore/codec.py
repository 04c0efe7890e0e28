"""Typed events in, raw envelopes out — and back, upcast to the current layout.

The store keeps opaque bytes; this module gives them meaning. An event's type is its
protobuf full name (`convoy.v1.ApplicationCreated`) and its schema version is the
`(convoy.v1.event_schema_version)` option next to its fields. Old layouts live on as
messages in legacy.proto (tagged with `event_type`), and an `Upcaster` lifts each one
version at a time, so every reader sees only current messages and the domain never
branches on versions.

The `EventRegistry` is an explicit object (no import-time registry): tests build small
ones, `convoy_registry()` builds Convoy's. It checks at construction that every type
can be read from version 1 to its current version, so a missing upcaster fails at
startup, not on the first old event in production. Pure: no I/O library is imported.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from google.protobuf.message import DecodeError, Message

from eventstore.errors import ConvoyError, InvalidInput, UnknownEventType
from eventstore.types import NewEvent, RecordedEvent
from schemas.convoy.v1 import events_pb2, legacy_pb2, options_pb2, resources_pb2


class RegistryError(ConvoyError, ValueError):
    """The registry's messages or upcasters are inconsistent: a programming error,
    raised at construction. The message names the type and the missing piece."""


@dataclass(frozen=True, slots=True)
class Upcaster:
    """Lifts `type_name` from `from_version` to `to_version` (= from_version + 1):
    `fn` receives the old message (the class registered for `from_version`) and returns
    the next version's message; decode checks the returned class."""

    type_name: str
    from_version: int
    to_version: int
    fn: Callable[[Any], Message]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A stored event read back: the current typed message plus its envelope.
    `schema_version` is the version as stored, before upcasting."""

    message: Message
    position: int
    stream_id: str
    version: int
    event_id: uuid.UUID
    type: str
    schema_version: int
    actor: str
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    recorded_at: datetime


def event_type_and_version(message_class: type[Message]) -> tuple[str, int]:
    """What the options on a message class say: (event type, schema version)."""
    descriptor = message_class.DESCRIPTOR
    options = descriptor.GetOptions()
    if not options.HasExtension(options_pb2.event_schema_version):
        raise RegistryError(
            f"{descriptor.full_name} has no `option (convoy.v1.event_schema_version) = N;` "
            "— every event message must declare its schema version"
        )
    version = options.Extensions[options_pb2.event_schema_version]
    if version < 1:
        raise RegistryError(f"{descriptor.full_name} declares schema version {version}; versions start at 1")
    if options.HasExtension(options_pb2.event_type):
        return options.Extensions[options_pb2.event_type], version
    return descriptor.full_name, version


class EventRegistry:
    """The event types this build reads and writes, with their upcasters."""

    def __init__(self, *, messages: Iterable[type[Message]], upcasters: Iterable[Upcaster] = ()) -> None:
        self._classes: dict[tuple[str, int], type[Message]] = {}
        self._keys: dict[type[Message], tuple[str, int]] = {}
        for cls in messages:
            key = event_type_and_version(cls)
            if key in self._classes:
                raise RegistryError(
                    f"{key[0]} version {key[1]} is registered twice "
                    f"({self._classes[key].DESCRIPTOR.full_name}, {cls.DESCRIPTOR.full_name})"
                )
            self._classes[key] = cls
            self._keys[cls] = key
        self._current: dict[str, int] = {}
        for type_name, version in self._classes:
            self._current[type_name] = max(version, self._current.get(type_name, 0))
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for up in upcasters:
            self._add_upcaster(up)
        for type_name, current in self._current.items():
            self._check_chain(type_name, current)

    def _add_upcaster(self, up: Upcaster) -> None:
        current = self._current.get(up.type_name)
        if current is None:
            raise RegistryError(f"upcaster for unregistered event type {up.type_name}")
        if up.to_version != up.from_version + 1 or not 1 <= up.from_version < current:
            raise RegistryError(
                f"upcaster {up.type_name} v{up.from_version}->v{up.to_version} must lift one version "
                f"at a time, within 1..{current}"
            )
        if (up.type_name, up.from_version) in self._upcasters:
            raise RegistryError(f"two upcasters for {up.type_name} v{up.from_version}")
        self._upcasters[(up.type_name, up.from_version)] = up

    def _check_chain(self, type_name: str, current: int) -> None:
        current_class = self._classes[(type_name, current)]
        if current_class.DESCRIPTOR.full_name != type_name:
            raise RegistryError(
                f"the newest registered version of {type_name} is {current_class.DESCRIPTOR.full_name} "
                f"(v{current}), a legacy layout; register the current {type_name} message"
            )
        for version in range(1, current):
            if (type_name, version) not in self._classes:
                raise RegistryError(
                    f"{type_name} is at version {current} but no message for version {version} is "
                    "registered; keep the old layout in legacy.proto and register it"
                )
            if (type_name, version) not in self._upcasters:
                raise RegistryError(f"{type_name} has no upcaster from version {version} to {version + 1}")

    def versions(self) -> Mapping[str, int]:
        """Every known event type and its current schema version."""
        return dict(self._current)

    def message_class(self, type_name: str, version: int | None = None) -> type[Message]:
        """The message class for a type at `version` (default: current)."""
        current = self._current.get(type_name)
        if current is None:
            raise UnknownEventType(f"event type {type_name!r} is not known to this build of Convoy")
        key = (type_name, current if version is None else version)
        if key not in self._classes:
            raise UnknownEventType(f"{type_name} has no schema version {key[1]} in this build (1..{current})")
        return self._classes[key]

    def encode(
        self,
        message: Message,
        *,
        actor: str,
        causation_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
        event_id: uuid.UUID | None = None,
    ) -> NewEvent:
        """A `NewEvent` for a current-version message. Bytes are serialised
        deterministically (map order fixed) so a retried append carries identical
        content and is recognised as the same event."""
        key = self._keys.get(type(message))
        if key is None:
            raise InvalidInput(f"{message.DESCRIPTOR.full_name} is not an event in this EventRegistry")
        type_name, version = key
        if version != self._current[type_name]:
            raise InvalidInput(
                f"{message.DESCRIPTOR.full_name} is version {version} of {type_name}; only the current "
                f"version ({self._current[type_name]}) may be written"
            )
        event = NewEvent(
            type=type_name,
            data=message.SerializeToString(deterministic=True),
            schema_version=version,
            event_id=event_id if event_id is not None else uuid.uuid4(),
            actor=actor,
            causation_id=causation_id,
            correlation_id=correlation_id,
        )
        event.validate()
        return event

    def decode(self, recorded: RecordedEvent) -> Decoded:
        """Parse a stored event and upcast it to the current version of its type."""
        where = (
            f"event {recorded.event_id} (stream {recorded.stream_id}, position {recorded.position}, "
            f"{recorded.type} v{recorded.schema_version})"
        )
        current = self._current.get(recorded.type)
        if current is None:
            raise UnknownEventType(
                f"{where}: type {recorded.type!r} is unknown to this build; it was probably written "
                "by a newer Convoy — upgrade this process"
            )
        if recorded.schema_version > current:
            raise UnknownEventType(
                f"{where}: this build knows {recorded.type} up to schema version {current}; the event "
                "was written by a newer Convoy — upgrade this process"
            )
        if recorded.schema_version < 1:
            raise InvalidInput(f"{where}: schema versions start at 1")
        message = self._classes[(recorded.type, recorded.schema_version)]()
        try:
            message.ParseFromString(bytes(recorded.data))
        except DecodeError as exc:
            raise InvalidInput(
                f"{where}: stored bytes are not a valid {message.DESCRIPTOR.full_name}: {exc}"
            ) from exc
        for version in range(recorded.schema_version, current):
            message = self._upcasters[(recorded.type, version)].fn(message)
            expected = self._classes[(recorded.type, version + 1)]
            if type(message) is not expected:
                raise TypeError(
                    f"upcaster {recorded.type} v{version}->v{version + 1} returned "
                    f"{type(message).__name__}, not {expected.__name__}"
                )
        return Decoded(
            message=message,
            position=recorded.position,
            stream_id=recorded.stream_id,
            version=recorded.version,
            event_id=recorded.event_id,
            type=recorded.type,
            schema_version=recorded.schema_version,
            actor=recorded.actor,
            causation_id=recorded.causation_id,
            correlation_id=recorded.correlation_id,
            recorded_at=recorded.recorded_at,
        )


def _application_created_v1_to_v2(old: legacy_pb2.ApplicationCreatedV1) -> legacy_pb2.ApplicationCreatedV2:
    """v1 kept channels as "staging, prod-eu"; v2 lists them. Blanks and repeats drop out."""
    channels = (part.strip() for part in old.channels.split(","))
    return legacy_pb2.ApplicationCreatedV2(
        name=old.name,
        description=old.description,
        release_channels=list(dict.fromkeys(c for c in channels if c)),
    )


def _application_created_v2_to_v3(old: legacy_pb2.ApplicationCreatedV2) -> events_pb2.ApplicationCreated:
    """v3 records the whole declaration; a v2 application had named channels only."""
    return events_pb2.ApplicationCreated(
        application=resources_pb2.Application(
            name=old.name,
            description=old.description,
            release_channels=[resources_pb2.ReleaseChannel(name=name) for name in old.release_channels],
        )
    )


_RUNTIME_KINDS = {
    "kubernetes": resources_pb2.RUNTIME_KIND_KUBERNETES,
    "exec": resources_pb2.RUNTIME_KIND_EXEC,
}


def _runtime_registered_v1_to_v2(old: legacy_pb2.RuntimeRegisteredV1) -> events_pb2.RuntimeRegistered:
    """v1's kind was a free string; unknown strings become RUNTIME_KIND_UNSPECIFIED."""
    return events_pb2.RuntimeRegistered(
        runtime=resources_pb2.Runtime(
            name=old.name,
            kind=_RUNTIME_KINDS.get(old.kind.strip().lower(), resources_pb2.RUNTIME_KIND_UNSPECIFIED),
            labels=dict(old.labels),
        )
    )


def _token_created_v1_to_v2(old: legacy_pb2.TokenCreatedV1) -> events_pb2.TokenCreated:
    """v1 tokens never expire, are unscoped, are owned by their name (the fold reads an
    empty owner so) and are verified by SHA-256 alone."""
    return events_pb2.TokenCreated(
        token_id=old.token_id, name=old.name, role=old.role, secret_sha256=old.secret_sha256
    )


def _messages_of(module: ModuleType) -> list[type[Message]]:
    return [getattr(module, name) for name in module.DESCRIPTOR.message_types_by_name]


def convoy_registry() -> EventRegistry:
    """Convoy's events: every message in events.proto and legacy.proto, with upcasters.
    A new registry on each call; pass it to whoever reads or writes events."""
    return EventRegistry(
        messages=[*_messages_of(events_pb2), *_messages_of(legacy_pb2)],
        upcasters=[
            Upcaster("convoy.v1.ApplicationCreated", 1, 2, _application_created_v1_to_v2),
            Upcaster("convoy.v1.ApplicationCreated", 2, 3, _application_created_v2_to_v3),
            Upcaster("convoy.v1.RuntimeRegistered", 1, 2, _runtime_registered_v1_to_v2),
            Upcaster("convoy.v1.TokenCreated", 1, 2, _token_created_v1_to_v2),
        ],
    )
