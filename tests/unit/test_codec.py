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
from schemas.convoy.v1 import events_pb2, legacy_pb2, resources_pb2

RECORDED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
APP = "convoy.v1.ApplicationCreated"
RUNTIME = "convoy.v1.RuntimeRegistered"


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


def v2_application(*channels: str) -> RecordedEvent:
    old = legacy_pb2.ApplicationCreatedV2(name="shop", description="Web shop", release_channels=channels)
    return recorded(type=APP, data=old.SerializeToString(), schema_version=2)


def v1_runtime(kind: str) -> RecordedEvent:
    old = legacy_pb2.RuntimeRegisteredV1(name="eu-west-1", kind=kind, labels={"tier": "prod", "region": "eu"})
    return recorded(type=RUNTIME, data=old.SerializeToString(), schema_version=1, stream_id="runtime/eu-west-1")


def shop(*channels: str) -> events_pb2.ApplicationCreated:
    """The current message a v1 or v2 "shop" application upcasts to: named channels only."""
    return events_pb2.ApplicationCreated(
        application=resources_pb2.Application(
            name="shop",
            description="Web shop",
            release_channels=[resources_pb2.ReleaseChannel(name=name) for name in channels],
        )
    )


# Small registries for ApplicationCreated's three layouts, with minimal upcasters.
def _to_v2(old: legacy_pb2.ApplicationCreatedV1) -> legacy_pb2.ApplicationCreatedV2:
    return legacy_pb2.ApplicationCreatedV2(name=old.name)


def _to_v3(old: legacy_pb2.ApplicationCreatedV2) -> events_pb2.ApplicationCreated:
    return events_pb2.ApplicationCreated(application=resources_pb2.Application(name=old.name))


ALL_LAYOUTS: list[type[Message]] = [
    events_pb2.ApplicationCreated,
    legacy_pb2.ApplicationCreatedV1,
    legacy_pb2.ApplicationCreatedV2,
]
BOTH_UPCASTERS: list[Upcaster] = [Upcaster(APP, 1, 2, _to_v2), Upcaster(APP, 2, 3, _to_v3)]


def test_round_trip_returns_the_same_typed_message() -> None:
    registry = convoy_registry()
    message = events_pb2.RuntimeRegistered(
        runtime=resources_pb2.Runtime(
            name="eu-west-1", kind=resources_pb2.RUNTIME_KIND_KUBERNETES, labels={"tier": "prod"}
        )
    )

    decoded = registry.decode(stored(registry.encode(message, actor="alice")))

    assert type(decoded.message) is events_pb2.RuntimeRegistered
    assert decoded.message == message


def test_encode_fills_the_envelope_from_the_schema_and_arguments() -> None:
    registry = convoy_registry()
    event_id, causation, correlation = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    event = registry.encode(
        events_pb2.ApplicationCreated(
            application=resources_pb2.Application(
                name="shop",
                release_channels=[
                    resources_pb2.ReleaseChannel(name="staging"),
                    resources_pb2.ReleaseChannel(name="prod"),
                ],
            )
        ),
        actor="bob",
        causation_id=causation,
        correlation_id=correlation,
        event_id=event_id,
    )

    assert (event.type, event.schema_version, event.actor) == (APP, 3, "bob")
    assert (event.event_id, event.causation_id, event.correlation_id) == (event_id, causation, correlation)


def test_encode_gives_each_event_a_fresh_id_by_default() -> None:
    registry = convoy_registry()
    message = events_pb2.RuntimeLabelled(name="eu-west-1")

    first, second = (registry.encode(message, actor="alice") for _ in range(2))

    assert first.event_id != second.event_id
    assert first.causation_id is None and first.correlation_id is None


LABELS = {f"key{i}": str(i) for i in range(50)}
REVERSED_LABELS = dict(reversed(LABELS.items()))


@pytest.mark.parametrize(
    ("forwards", "backwards"),
    [
        pytest.param(
            events_pb2.RuntimeLabelled(name="r", labels=LABELS),
            events_pb2.RuntimeLabelled(name="r", labels=REVERSED_LABELS),
            id="top-level-map",
        ),
        pytest.param(
            events_pb2.RuntimeRegistered(runtime=resources_pb2.Runtime(name="r", labels=LABELS)),
            events_pb2.RuntimeRegistered(runtime=resources_pb2.Runtime(name="r", labels=REVERSED_LABELS)),
            id="nested-map",
        ),
    ],
)
def test_encoding_is_deterministic_so_retries_carry_identical_bytes(forwards: Message, backwards: Message) -> None:
    registry = convoy_registry()

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


def test_version_1_application_is_upcast_through_version_2_to_the_current_layout() -> None:
    decoded = convoy_registry().decode(v1_application(" staging, prod-eu,,prod-us ,staging"))

    assert type(decoded.message) is events_pb2.ApplicationCreated
    assert decoded.message == shop("staging", "prod-eu", "prod-us")
    assert decoded.schema_version == 1, "the envelope keeps the version as stored"


def test_version_1_application_without_channels_upcasts_to_an_empty_list() -> None:
    decoded = convoy_registry().decode(v1_application(""))

    assert isinstance(decoded.message, events_pb2.ApplicationCreated)
    assert decoded.message.application.name == "shop"
    assert list(decoded.message.application.release_channels) == []


def test_version_2_application_is_upcast_to_the_current_layout() -> None:
    decoded = convoy_registry().decode(v2_application("staging", "prod-eu"))

    assert type(decoded.message) is events_pb2.ApplicationCreated
    assert decoded.message == shop("staging", "prod-eu")
    assert decoded.schema_version == 2, "the envelope keeps the version as stored"


def test_version_2_channels_become_bare_channels_in_their_stored_order() -> None:
    decoded = convoy_registry().decode(v2_application("prod", "staging"))

    assert isinstance(decoded.message, events_pb2.ApplicationCreated)
    application = decoded.message.application
    assert [channel.name for channel in application.release_channels] == ["prod", "staging"]
    for channel in application.release_channels:
        assert channel == resources_pb2.ReleaseChannel(name=channel.name), "v2 knew nothing but the name"
    assert dict(application.labels) == {}


def test_versions_1_and_2_of_the_same_application_upcast_to_the_same_message() -> None:
    registry = convoy_registry()

    from_v1 = registry.decode(v1_application("staging, prod"))
    from_v2 = registry.decode(v2_application("staging", "prod"))

    assert from_v1.message == from_v2.message == shop("staging", "prod")


def test_decode_applies_each_upcaster_once_in_version_order() -> None:
    seen: list[str] = []

    def to_v2(old: legacy_pb2.ApplicationCreatedV1) -> legacy_pb2.ApplicationCreatedV2:
        seen.append(type(old).__name__)
        return legacy_pb2.ApplicationCreatedV2(name=old.name, release_channels=[old.channels])

    def to_v3(old: legacy_pb2.ApplicationCreatedV2) -> events_pb2.ApplicationCreated:
        seen.append(type(old).__name__)
        return events_pb2.ApplicationCreated(application=resources_pb2.Application(name=old.name + "-v3"))

    registry = EventRegistry(
        messages=ALL_LAYOUTS, upcasters=[Upcaster(APP, 2, 3, to_v3), Upcaster(APP, 1, 2, to_v2)]
    )

    decoded = registry.decode(v1_application("staging"))

    assert seen == ["ApplicationCreatedV1", "ApplicationCreatedV2"]
    assert decoded.message == events_pb2.ApplicationCreated(application=resources_pb2.Application(name="shop-v3"))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("kubernetes", resources_pb2.RUNTIME_KIND_KUBERNETES),
        ("exec", resources_pb2.RUNTIME_KIND_EXEC),
        ("Kubernetes ", resources_pb2.RUNTIME_KIND_KUBERNETES),
        ("  EXEC\t", resources_pb2.RUNTIME_KIND_EXEC),
        ("nomad", resources_pb2.RUNTIME_KIND_UNSPECIFIED),
        ("kube rnetes", resources_pb2.RUNTIME_KIND_UNSPECIFIED),
        ("", resources_pb2.RUNTIME_KIND_UNSPECIFIED),
    ],
)
def test_version_1_runtime_kind_string_is_upcast_to_the_kind_enum(
    kind: str, expected: resources_pb2.RuntimeKind.ValueType
) -> None:
    decoded = convoy_registry().decode(v1_runtime(kind))

    assert type(decoded.message) is events_pb2.RuntimeRegistered
    assert decoded.message == events_pb2.RuntimeRegistered(
        runtime=resources_pb2.Runtime(
            name="eu-west-1",
            kind=expected,
            labels={"tier": "prod", "region": "eu"},
        )
    )
    assert decoded.schema_version == 1, "the envelope keeps the version as stored"


def test_unknown_type_says_a_newer_convoy_wrote_it() -> None:
    event = recorded(type="convoy.v9.SomethingNew", data=b"", schema_version=4)

    with pytest.raises(UnknownEventType, match=r"convoy\.v9\.SomethingNew v4.*newer Convoy") as caught:
        convoy_registry().decode(event)
    assert str(event.event_id) in str(caught.value)


def test_schema_version_newer_than_this_build_is_an_unknown_event_type() -> None:
    with pytest.raises(UnknownEventType, match=r"up to schema version 3.*newer Convoy"):
        convoy_registry().decode(recorded(type=APP, data=b"", schema_version=4))


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", b"\x2a\x05ab", b"\x2a\x04\x0a\x02\xff\xfe"],
    ids=["tag", "short", "utf8"],
)
def test_unparseable_bytes_are_invalid_input_naming_the_event(data: bytes) -> None:
    event = recorded(type=APP, data=data, schema_version=3)

    with pytest.raises(InvalidInput, match=r"not a valid convoy\.v1\.ApplicationCreated:") as caught:
        convoy_registry().decode(event)
    assert str(event.event_id) in str(caught.value) and APP in str(caught.value)


def test_unparseable_bytes_of_an_old_version_name_the_old_layout() -> None:
    event = recorded(type=APP, data=b"\x0a\x02\xff\xfe", schema_version=2)

    with pytest.raises(InvalidInput, match=r"ApplicationCreated v2\).*not a valid convoy\.v1\.ApplicationCreatedV2:"):
        convoy_registry().decode(event)


def test_schema_version_below_1_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="start at 1"):
        convoy_registry().decode(recorded(type=APP, data=b"", schema_version=0))


@pytest.mark.parametrize(
    ("message", "current"),
    [
        (legacy_pb2.ApplicationCreatedV1(name="shop"), 3),
        (legacy_pb2.ApplicationCreatedV2(name="shop"), 3),
        (legacy_pb2.RuntimeRegisteredV1(name="eu-west-1"), 2),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Message) else str(value),
)
def test_encode_refuses_legacy_layouts(message: Message, current: int) -> None:
    with pytest.raises(InvalidInput, match=rf"only the current version \({current}\)"):
        convoy_registry().encode(message, actor="alice")


def test_encode_refuses_messages_the_registry_does_not_hold() -> None:
    registry = EventRegistry(messages=[events_pb2.RuntimePaused])

    with pytest.raises(InvalidInput, match="convoy.v1.RuntimeLabelled is not an event"):
        registry.encode(events_pb2.RuntimeLabelled(name="r"), actor="alice")
    with pytest.raises(InvalidInput, match="google.protobuf.Empty is not an event"):
        registry.encode(empty_pb2.Empty(), actor="alice")


def test_encode_validates_the_envelope() -> None:
    with pytest.raises(InvalidInput, match="actor"):
        convoy_registry().encode(events_pb2.RuntimeLabelled(name="r"), actor="")


def _wrong_type(old: Message) -> Message:
    return events_pb2.RuntimeLabelled()


def _skips_to_current(old: legacy_pb2.ApplicationCreatedV1) -> events_pb2.ApplicationCreated:
    return events_pb2.ApplicationCreated(application=resources_pb2.Application(name=old.name))


@pytest.mark.parametrize(
    ("upcasters", "error"),
    [
        pytest.param(
            [Upcaster(APP, 1, 2, _wrong_type), Upcaster(APP, 2, 3, _to_v3)],
            r"v1->v2 returned RuntimeLabelled, not ApplicationCreatedV2",
            id="first-step-wrong-type",
        ),
        pytest.param(
            [Upcaster(APP, 1, 2, _skips_to_current), Upcaster(APP, 2, 3, _to_v3)],
            r"v1->v2 returned ApplicationCreated, not ApplicationCreatedV2",
            id="first-step-skips-a-version",
        ),
        pytest.param(
            [Upcaster(APP, 1, 2, _to_v2), Upcaster(APP, 2, 3, _wrong_type)],
            r"v2->v3 returned RuntimeLabelled, not ApplicationCreated$",
            id="last-step-wrong-type",
        ),
    ],
)
def test_an_upcaster_returning_the_wrong_message_fails_loudly(upcasters: list[Upcaster], error: str) -> None:
    registry = EventRegistry(messages=ALL_LAYOUTS, upcasters=upcasters)

    with pytest.raises(TypeError, match=error):
        registry.decode(v1_application("staging"))


def test_convoy_registry_is_a_new_object_each_call() -> None:
    first, second = convoy_registry(), convoy_registry()

    assert first is not second
    assert first.versions() == {
        APP: 3,
        "convoy.v1.ApplicationUpdated": 1,
        "convoy.v1.ApplicationDeleted": 1,
        "convoy.v1.ServiceConfigured": 1,
        "convoy.v1.ServiceDeleted": 1,
        RUNTIME: 2,
        "convoy.v1.RuntimeUpdated": 1,
        "convoy.v1.RuntimeLabelled": 1,
        "convoy.v1.RuntimePaused": 1,
        "convoy.v1.RuntimeResumed": 1,
        "convoy.v1.RuntimeDeregistered": 1,
        "convoy.v1.AgentCredentialIssued": 1,
        "convoy.v1.ProtectionConfigured": 1,
        "convoy.v1.ProtectionDeleted": 1,
        "convoy.v1.ResourceLinked": 1,
        "convoy.v1.ResourceUnlinked": 1,
        "convoy.v1.ReleaseCreated": 1,
        "convoy.v1.ApprovalGranted": 1,
        "convoy.v1.ApprovalRejected": 1,
        "convoy.v1.BypassGranted": 1,
        "convoy.v1.ConvergencePaused": 1,
        "convoy.v1.ConvergenceResumed": 1,
        "convoy.v1.RollbackRequested": 1,
        "convoy.v1.TokenCreated": 2,
        "convoy.v1.TokenRevoked": 1,
        "convoy.v1.IntentIssued": 1,
        "convoy.v1.ChecksRequested": 1,
        "convoy.v1.InstanceStatusChanged": 1,
        "convoy.v1.TimerScheduled": 1,
        "convoy.v1.TimerFired": 1,
        "convoy.v1.ObservationRecorded": 1,
        "convoy.v1.PlannerVersionStarted": 1,
        "convoy.v1.PlannerInputRejected": 1,
        "convoy.v1.ExternalApprovalRequested": 1,
        "convoy.v1.ExternalApprovalPolled": 1,
        "convoy.v1.ExternalApprovalClosed": 1,
        "convoy.v1.RegistryConfigured": 1,
        "convoy.v1.RegistryDeleted": 1,
        "convoy.v1.GitHubDeploymentCreated": 1,
        "convoy.v1.GitHubDeploymentStatusPosted": 1,
        "convoy.v1.SecretSet": 1,
        "convoy.v1.SecretDeleted": 1,
        "convoy.v1.SecretKeyRotated": 1,
    }
    assert first.versions() == second.versions()


def test_message_class_looks_up_any_known_version() -> None:
    registry = convoy_registry()

    assert registry.message_class(APP) is events_pb2.ApplicationCreated
    assert registry.message_class(APP, 1) is legacy_pb2.ApplicationCreatedV1
    assert registry.message_class(APP, 2) is legacy_pb2.ApplicationCreatedV2
    assert registry.message_class(APP, 3) is events_pb2.ApplicationCreated
    assert registry.message_class(RUNTIME) is events_pb2.RuntimeRegistered
    assert registry.message_class(RUNTIME, 1) is legacy_pb2.RuntimeRegisteredV1
    with pytest.raises(UnknownEventType):
        registry.message_class(APP, 4)
    with pytest.raises(UnknownEventType):
        registry.message_class(RUNTIME, 3)
    with pytest.raises(UnknownEventType):
        registry.message_class("convoy.v1.Nope")


@pytest.mark.parametrize(
    ("messages", "upcasters", "error"),
    [
        pytest.param([empty_pb2.Empty], [], r"google\.protobuf\.Empty has no .*event_schema_version", id="no-option"),
        pytest.param(
            [events_pb2.RuntimeLabelled, events_pb2.RuntimeLabelled], [], "registered twice", id="duplicate"
        ),
        pytest.param(
            ALL_LAYOUTS,
            [Upcaster(APP, 2, 3, _to_v3)],
            "no upcaster from version 1 to 2",
            id="missing-first-upcaster",
        ),
        pytest.param(
            ALL_LAYOUTS,
            [Upcaster(APP, 1, 2, _to_v2)],
            "no upcaster from version 2 to 3",
            id="missing-last-upcaster",
        ),
        pytest.param(
            [events_pb2.ApplicationCreated],
            BOTH_UPCASTERS,
            "no message for version 1",
            id="missing-old-layouts",
        ),
        pytest.param(
            [events_pb2.ApplicationCreated, legacy_pb2.ApplicationCreatedV1],
            BOTH_UPCASTERS,
            "no message for version 2",
            id="missing-middle-layout",
        ),
        pytest.param(
            [legacy_pb2.ApplicationCreatedV1, legacy_pb2.ApplicationCreatedV2],
            [Upcaster(APP, 1, 2, _to_v2)],
            r"newest registered version of convoy\.v1\.ApplicationCreated is convoy\.v1\.ApplicationCreatedV2 "
            r"\(v2\), a legacy layout",
            id="only-legacy",
        ),
        pytest.param(
            ALL_LAYOUTS,
            [Upcaster(APP, 1, 3, _skips_to_current)],
            "one version at a time",
            id="skips-versions",
        ),
        pytest.param(
            ALL_LAYOUTS,
            [*BOTH_UPCASTERS, Upcaster(APP, 3, 4, _to_v3)],
            "one version at a time",
            id="beyond-current",
        ),
        pytest.param(
            ALL_LAYOUTS,
            [*BOTH_UPCASTERS, Upcaster(APP, 2, 3, _to_v3)],
            "two upcasters",
            id="duplicate-upcaster",
        ),
        pytest.param(
            [events_pb2.RuntimeLabelled],
            [Upcaster("convoy.v1.Nope", 1, 2, _to_v2)],
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


def test_registry_accepts_a_complete_three_version_chain() -> None:
    registry = EventRegistry(messages=ALL_LAYOUTS, upcasters=BOTH_UPCASTERS)

    assert registry.versions() == {APP: 3}
