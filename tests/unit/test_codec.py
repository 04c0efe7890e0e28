"""The codec: typed messages to envelopes and back, upcasting, and clear failures.

Pure tests: registries are built in each test, stored events are constructed directly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from eventstore.codec import EventRegistry, RegistryError, Upcaster, convoy_registry
from eventstore.errors import ConvoyError, InvalidInput, UnknownEventType
from eventstore.types import NewEvent, RecordedEvent
from schemas.convoy.v1 import events_pb2, legacy_pb2

RECORDED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
APP = "convoy.v1.ApplicationCreated"


def recorded(
    *, type: str, data: bytes, schema_version: int, event_id: uuid.UUID | None = None, **envelope: object
) -> RecordedEvent:
    fields: dict[str, object] = {
        "position": 42,
        "stream_id": "application/shop",
        "version": 3,
        "event_id": event_id or uuid.uuid4(),
        "actor": "alice",
        "causation_id": None,
        "correlation_id": None,
        "recorded_at": RECORDED_AT,
    }
    fields.update(envelope)
    return RecordedEvent(type=type, data=data, schema_version=schema_version, **fields)  # type: ignore[arg-type]


def stored(event: NewEvent, **envelope: object) -> RecordedEvent:
    return recorded(
        type=event.type,
        data=event.data,
        schema_version=event.schema_version,
        event_id=event.event_id,
        actor=event.actor,
        causation_id=event.causation_id,
        correlation_id=event.correlation_id,
        **envelope,
    )


def v1_application(channels: str) -> RecordedEvent:
    old = legacy_pb2.ApplicationCreatedV1(name="shop", description="Web shop", channels=channels)
    return recorded(type=APP, data=old.SerializeToString(), schema_version=1)


def test_round_trip_returns_the_same_typed_message() -> None:
    registry = convoy_registry()
    message = events_pb2.RuntimeRegistered(name="eu-west-1", kind="kubernetes", labels={"tier": "prod"})

    decoded = registry.decode(stored(registry.encode(message, actor="alice")))

    assert type(decoded.message) is events_pb2.RuntimeRegistered
    assert decoded.message == message


def test_encode_fills_the_envelope_from_the_schema_and_arguments() -> None:
    registry = convoy_registry()
    event_id, causation, correlation = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    event = registry.encode(
        events_pb2.ApplicationCreated(name="shop", release_channels=["staging", "prod"]),
        actor="bob",
        causation_id=causation,
        correlation_id=correlation,
        event_id=event_id,
    )

    assert (event.type, event.schema_version, event.actor) == (APP, 2, "bob")
    assert (event.event_id, event.causation_id, event.correlation_id) == (event_id, causation, correlation)


def test_encode_gives_each_event_a_fresh_id_by_default() -> None:
    registry = convoy_registry()
    message = events_pb2.RuntimeLabelled(name="eu-west-1")

    first, second = (registry.encode(message, actor="alice") for _ in range(2))

    assert first.event_id != second.event_id
    assert first.causation_id is None and first.correlation_id is None


def test_encoding_is_deterministic_so_retries_carry_identical_bytes() -> None:
    registry = convoy_registry()
    labels = {f"key{i}": str(i) for i in range(50)}
    forwards = events_pb2.RuntimeLabelled(name="r", labels=labels)
    backwards = events_pb2.RuntimeLabelled(name="r", labels=dict(reversed(labels.items())))

    assert registry.encode(forwards, actor="a").data == registry.encode(backwards, actor="a").data


def test_decode_carries_the_stored_envelope() -> None:
    registry = convoy_registry()
    causation, correlation = uuid.uuid4(), uuid.uuid4()
    event = registry.encode(
        events_pb2.RuntimeLabelled(name="r"), actor="carol", causation_id=causation, correlation_id=correlation
    )

    decoded = registry.decode(stored(event, position=9, stream_id="runtime/r", version=5))

    assert (decoded.position, decoded.stream_id, decoded.version) == (9, "runtime/r", 5)
    assert (decoded.event_id, decoded.type, decoded.schema_version) == (event.event_id, event.type, 1)
    assert (decoded.actor, decoded.causation_id, decoded.correlation_id) == ("carol", causation, correlation)
    assert decoded.recorded_at == RECORDED_AT


def test_version_1_application_is_upcast_to_the_current_layout() -> None:
    decoded = convoy_registry().decode(v1_application(" staging, prod-eu,,prod-us ,staging"))

    assert decoded.message == events_pb2.ApplicationCreated(
        name="shop", description="Web shop", release_channels=["staging", "prod-eu", "prod-us"]
    )
    assert decoded.schema_version == 1, "the envelope keeps the version as stored"


def test_version_1_application_without_channels_upcasts_to_an_empty_list() -> None:
    decoded = convoy_registry().decode(v1_application(""))

    assert isinstance(decoded.message, events_pb2.ApplicationCreated)
    assert list(decoded.message.release_channels) == []


def test_unknown_type_says_a_newer_convoy_wrote_it() -> None:
    event = recorded(type="convoy.v9.SomethingNew", data=b"", schema_version=4)

    with pytest.raises(UnknownEventType, match=r"convoy\.v9\.SomethingNew v4.*newer Convoy") as caught:
        convoy_registry().decode(event)
    assert str(event.event_id) in str(caught.value)


def test_schema_version_newer_than_this_build_is_an_unknown_event_type() -> None:
    with pytest.raises(UnknownEventType, match=r"up to schema version 2.*newer Convoy"):
        convoy_registry().decode(recorded(type=APP, data=b"", schema_version=3))


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"], ids=["tag", "short", "utf8"])
def test_unparseable_bytes_are_invalid_input_naming_the_event(data: bytes) -> None:
    event = recorded(type=APP, data=data, schema_version=2)

    with pytest.raises(InvalidInput, match=r"not a valid convoy\.v1\.ApplicationCreated") as caught:
        convoy_registry().decode(event)
    assert str(event.event_id) in str(caught.value) and APP in str(caught.value)


def test_schema_version_below_1_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="start at 1"):
        convoy_registry().decode(recorded(type=APP, data=b"", schema_version=0))


def test_encode_refuses_legacy_layouts() -> None:
    with pytest.raises(InvalidInput, match=r"only the current version \(2\)"):
        convoy_registry().encode(legacy_pb2.ApplicationCreatedV1(name="shop"), actor="alice")


def test_encode_refuses_messages_the_registry_does_not_hold() -> None:
    registry = EventRegistry(messages=[events_pb2.RuntimeRegistered])

    with pytest.raises(InvalidInput, match="convoy.v1.RuntimeLabelled is not an event"):
        registry.encode(events_pb2.RuntimeLabelled(name="r"), actor="alice")
    with pytest.raises(InvalidInput, match="google.protobuf.Empty is not an event"):
        registry.encode(empty_pb2.Empty(), actor="alice")


def test_encode_validates_the_envelope() -> None:
    with pytest.raises(InvalidInput, match="actor"):
        convoy_registry().encode(events_pb2.RuntimeLabelled(name="r"), actor="")


def test_an_upcaster_returning_the_wrong_message_fails_loudly() -> None:
    def wrong(old: Message) -> Message:
        return events_pb2.RuntimeLabelled()

    registry = EventRegistry(
        messages=[events_pb2.ApplicationCreated, legacy_pb2.ApplicationCreatedV1],
        upcasters=[Upcaster(APP, 1, 2, wrong)],
    )

    with pytest.raises(TypeError, match="returned RuntimeLabelled, not ApplicationCreated"):
        registry.decode(v1_application("staging"))


def test_convoy_registry_is_a_new_object_each_call() -> None:
    first, second = convoy_registry(), convoy_registry()

    assert first is not second
    assert first.versions() == {
        APP: 2,
        "convoy.v1.RuntimeRegistered": 1,
        "convoy.v1.RuntimeLabelled": 1,
    }


def test_message_class_looks_up_any_known_version() -> None:
    registry = convoy_registry()

    assert registry.message_class(APP) is events_pb2.ApplicationCreated
    assert registry.message_class(APP, 1) is legacy_pb2.ApplicationCreatedV1
    with pytest.raises(UnknownEventType):
        registry.message_class(APP, 3)
    with pytest.raises(UnknownEventType):
        registry.message_class("convoy.v1.Nope")


BOTH_LAYOUTS: list[type[Message]] = [events_pb2.ApplicationCreated, legacy_pb2.ApplicationCreatedV1]
ONLY_CURRENT: list[type[Message]] = [events_pb2.ApplicationCreated]


def _lift(old: legacy_pb2.ApplicationCreatedV1) -> events_pb2.ApplicationCreated:
    return events_pb2.ApplicationCreated(name=old.name)


@pytest.mark.parametrize(
    ("messages", "upcasters", "error"),
    [
        pytest.param([empty_pb2.Empty], [], r"google\.protobuf\.Empty has no .*event_schema_version", id="no-option"),
        pytest.param(
            [events_pb2.RuntimeLabelled, events_pb2.RuntimeLabelled], [], "registered twice", id="duplicate"
        ),
        pytest.param(
            BOTH_LAYOUTS,
            [],
            "no upcaster from version 1 to 2",
            id="missing-upcaster",
        ),
        pytest.param(
            ONLY_CURRENT,
            [Upcaster(APP, 1, 2, _lift)],
            "no message for version 1",
            id="missing-old-layout",
        ),
        pytest.param([legacy_pb2.ApplicationCreatedV1], [], "a legacy layout", id="only-legacy"),
        pytest.param(
            BOTH_LAYOUTS,
            [Upcaster(APP, 1, 3, _lift)],
            "one version at a time",
            id="skips-versions",
        ),
        pytest.param(
            BOTH_LAYOUTS,
            [Upcaster(APP, 2, 3, _lift)],
            "one version at a time",
            id="beyond-current",
        ),
        pytest.param(
            BOTH_LAYOUTS,
            [Upcaster(APP, 1, 2, _lift), Upcaster(APP, 1, 2, _lift)],
            "two upcasters",
            id="duplicate-upcaster",
        ),
        pytest.param(
            [events_pb2.RuntimeLabelled],
            [Upcaster("convoy.v1.Nope", 1, 2, _lift)],
            "unregistered event type convoy.v1.Nope",
            id="upcaster-unknown-type",
        ),
    ],
)
def test_registry_construction_rejects_inconsistent_schemas(
    messages: list[type[Message]], upcasters: list[Upcaster], error: str
) -> None:
    with pytest.raises(RegistryError, match=error) as caught:
        EventRegistry(messages=messages, upcasters=upcasters)
    assert isinstance(caught.value, ConvoyError)
