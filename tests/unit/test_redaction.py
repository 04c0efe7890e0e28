"""Secret-derived values (fields marked `secret` in the schema) are redacted from every
event rendered below the admin role; marking a field is all a new event needs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from eventstore.codec import convoy_registry
from schemas.convoy.v1 import events_pb2, options_pb2
from eventstore.types import RecordedEvent
from services.api import redaction
from services.api.events import to_api

LOOKS_SECRET = re.compile(r"secret|password|bcrypt|sha256|token_hash|private|credential_hash")
NOT_SECRET = {"convoy.v1.IntentIssued.spec_hash"}


def test_every_field_that_looks_secret_derived_is_marked() -> None:
    """A guard for the next event: a field named like a hash of a secret must carry the
    mark (or be listed here as not secret-derived, with a reason in the schema)."""
    events = events_pb2.DESCRIPTOR
    unmarked = []
    for message in events.message_types_by_name.values():
        for field in message.fields:
            name = f"{message.full_name}.{field.name}"
            if LOOKS_SECRET.search(field.name) and not redaction.is_secret(field) and name not in NOT_SECRET:
                unmarked.append(name)
    assert unmarked == []
    marked = {
        f"{m.full_name}.{f.name}" for m in events.message_types_by_name.values() for f in m.fields if redaction.is_secret(f)
    }
    assert marked == {
        "convoy.v1.TokenCreated.secret_sha256",
        "convoy.v1.TokenCreated.secret_hmac",
        "convoy.v1.AgentCredentialIssued.secret_sha256",
        "convoy.v1.AgentCredentialIssued.nats_password_bcrypt",
        "convoy.v1.SecretSet.nonce",
        "convoy.v1.SecretSet.ciphertext",
    }


def test_redaction_replaces_only_the_marked_values() -> None:
    token = events_pb2.TokenCreated(token_id="t1", name="bob", role="viewer", secret_sha256="ab" * 32)
    redacted = redaction.redact(token)
    assert redacted == events_pb2.TokenCreated(token_id="t1", name="bob", role="viewer", secret_sha256=redaction.REDACTED)
    assert token.secret_sha256 == "ab" * 32  # the original is untouched
    issued = events_pb2.AgentCredentialIssued(runtime="eu-1", credential_id="c", secret_sha256="cd" * 32, generation=3)
    assert redaction.redact(issued) == events_pb2.AgentCredentialIssued(
        runtime="eu-1", credential_id="c", secret_sha256=redaction.REDACTED, generation=3  # an empty hash stays empty
    )
    plain = events_pb2.TokenRevoked(token_id="t1", reason="left")
    assert redaction.redact(plain) is plain


def _nested_types() -> tuple[type, type]:
    """A schema with secrets inside nested, repeated and map fields (as a future event
    might have), built at run time on the real `secret` option."""
    file = descriptor_pb2.FileDescriptorProto(
        name="redaction_test.proto", package="redactiontest", syntax="proto3", dependency=[options_pb2.DESCRIPTOR.name]
    )
    inner = file.message_type.add(name="Inner")
    hashed = inner.field.add(name="hash", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    hashed.options.Extensions[options_pb2.secret] = True
    inner.field.add(name="label", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    outer = file.message_type.add(name="Outer")
    entry = outer.nested_type.add(name="ByNameEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    entry.field.add(name="value", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=".redactiontest.Inner")
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    outer.field.add(name="one", number=1, type=message, type_name=".redactiontest.Inner")
    outer.field.add(name="many", number=2, type=message, type_name=".redactiontest.Inner", label=repeated)
    outer.field.add(name="by_name", number=3, type=message, type_name=".redactiontest.Outer.ByNameEntry", label=repeated)
    pins = outer.field.add(name="pins", number=4, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=repeated)
    pins.options.Extensions[options_pb2.secret] = True
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(options_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    found = pool.FindMessageTypeByName
    return message_factory.GetMessageClass(found("redactiontest.Outer")), message_factory.GetMessageClass(found("redactiontest.Inner"))


def test_marks_are_found_in_nested_repeated_and_map_fields() -> None:
    outer_type, inner_type = _nested_types()
    value = outer_type(one=inner_type(hash="h1", label="a"), many=[inner_type(hash="h2"), inner_type(label="b")], pins=["1", "2"])
    value.by_name["x"].CopyFrom(inner_type(hash="h3", label="c"))
    out = redaction.redact(value)
    r = redaction.REDACTED
    assert (out.one.hash, out.one.label) == (r, "a")
    assert [(i.hash, i.label) for i in out.many] == [(r, ""), ("", "b")]
    assert (out.by_name["x"].hash, out.by_name["x"].label) == (r, "c")
    assert list(out.pins) == [r, r]
    assert value.one.hash == "h1" and value.by_name["x"].hash == "h3"


def test_to_api_redacts_unless_told_the_caller_is_an_admin() -> None:
    registry = convoy_registry()
    new = registry.encode(events_pb2.TokenCreated(token_id="t1", name="bob", role="admin", secret_sha256="ab" * 32), actor="x")
    recorded = RecordedEvent(
        position=1, stream_id="token/t1", version=1, event_id=new.event_id, type=new.type,
        schema_version=new.schema_version, data=new.data, actor="x", causation_id=None, correlation_id=None,
        recorded_at=datetime.now(UTC),
    )
    assert json.loads(to_api(registry, recorded).json)["secretSha256"] == redaction.REDACTED
    assert json.loads(to_api(registry, recorded, reveal_secrets=True).json)["secretSha256"] == "ab" * 32
