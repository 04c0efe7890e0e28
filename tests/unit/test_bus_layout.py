"""The bus layout is pure: names and subjects per instance, reversible subject tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlparse

import pytest
from nats.aio.client import Server

from eventstore import bus
from eventstore.errors import InvalidInput
from eventstore.types import RecordedEvent


@pytest.mark.parametrize("text", ["web", "eu.west-1", "a b\tc", "x*y>z", "tilde~", "ünï.côde", "", "@:_-"])
def test_tokens_are_safe_and_reversible(text: str) -> None:
    token = bus.encode_token(text)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert bus.decode_token(token) == text


def test_long_tokens_are_hashed_and_say_so() -> None:
    token = bus.encode_token("a." * 100)
    assert token.startswith("~H") and len(token) == 34
    assert token == bus.encode_token("a." * 100) != bus.encode_token("b." * 100)
    with pytest.raises(InvalidInput, match="header"):
        bus.decode_token(token)


def test_names_and_subjects_per_instance() -> None:
    assert bus.events_stream("convoy") == "CONVOY_EVENTS_CONVOY"
    assert bus.observations_stream("prod-1") == "CONVOY_OBSERVATIONS_PROD-1"
    assert bus.dlq_stream("prod-1") == "CONVOY_DLQ_PROD-1"
    assert bus.events_subjects("convoy") == "convoy.convoy.evt.>"
    assert bus.event_subject("convoy", "service/shop/web") == "convoy.convoy.evt.service.shop.web"
    assert bus.event_subject("convoy", "intent/eu.west/web") == "convoy.convoy.evt.intent.eu~2Ewest.web"
    assert bus.intent_filter("convoy", "eu.west") == [
        "convoy.convoy.evt.intent.eu~2Ewest",
        "convoy.convoy.evt.intent.eu~2Ewest.>",
    ]
    assert bus.stream_id_from_subject("convoy", "convoy.convoy.evt.intent.eu~2Ewest.web") == "intent/eu.west/web"
    assert bus.observation_subject("convoy", "eu.west", "web", "v1") == "convoy.convoy.obs.eu~2Ewest.web.v1"
    assert bus.observation_filter("convoy", "eu.west") == "convoy.convoy.obs.eu~2Ewest.>"
    assert bus.dlq_subject("convoy", "agent-eu") == "convoy.convoy.dlq.agent-eu"


@pytest.mark.parametrize("instance", ["", "Convoy", "a.b", "a b", "x" * 33, "-x"])
def test_bad_instance_names_are_refused(instance: str) -> None:
    with pytest.raises(InvalidInput):
        bus.events_stream(instance)


@pytest.mark.parametrize("stream_id", [
    "release", "intent/p01/app00-prod/app00/svc0001", "service/shop/web", "intent/eu.west/web", "app/" + "a" * 128,
    "app/" + "a" * 129, "timer/shop/web:1/prod@x", "convergence/a-b/c_d/e",
])
def test_the_fast_subject_is_the_escaped_one(stream_id: str) -> None:
    """`event_subject` skips escaping when every part is a plain token: same answer."""
    assert bus.event_subject("convoy", stream_id) == bus._escaped_event_subject("convoy", stream_id)


@pytest.mark.parametrize("stream_id", ["Intent/x", "intent//x", "intent/x y", "intent/.x", ""])
def test_an_invalid_stream_id_has_no_subject(stream_id: str) -> None:
    with pytest.raises(InvalidInput):
        bus.event_subject("convoy", stream_id)


@pytest.mark.parametrize("actor", ["system", "user:ann@example.com", "user: ann %\nx", "ünï"])
def test_the_envelope_survives_headers(actor: str) -> None:
    event = RecordedEvent(
        position=7, stream_id="app/web.1", version=3, event_id=uuid.uuid4(), type="convoy.v1.Deployed",
        schema_version=2, data=b"\x00\x01", actor=actor, causation_id=uuid.uuid4(), correlation_id=None,
        recorded_at=datetime(2026, 11, 26, 3, 4, 5, 678901, tzinfo=UTC),
    )
    headers = bus.event_headers(event)
    assert all("\n" not in v and "\r" not in v for v in headers.values())
    block = dict(line.split(": ", 1) for line in bus.event_header_block(event).split("\r\n") if line)
    assert block == {k: v for k, v in headers.items() if k != bus.H_MSG_ID}
    assert bus.event_from_message(headers, event.data) == event
    with pytest.raises(InvalidInput):
        bus.event_from_message({**headers, bus.H_POSITION: "x"}, event.data)


def test_heartbeats_travel_outside_every_stream_and_only_agents_of_their_runtime_send_them() -> None:
    from eventstore import natsauth

    subject = natsauth.heartbeat_subject("prod", "eu-1")
    assert subject == "convoy.prod.hb.eu-1"
    for config in bus.stream_configs("prod"):
        for pattern in config.subjects or []:
            prefix = pattern.removesuffix(">")
            assert not subject.startswith(prefix), f"{config.name} would store every heartbeat"
    assert subject in natsauth.agent_permissions("prod", "eu-1").publish
    assert subject not in natsauth.agent_permissions("prod", "us-1").publish
    assert natsauth.runtime_of_heartbeat("prod", subject) == "eu-1"
    observations = next(c for c in bus.stream_configs("prod") if c.name == bus.observations_stream("prod"))
    assert observations.max_age == bus.OBSERVATIONS_MAX_AGE


def test_a_comma_separated_url_names_every_node_of_a_cluster() -> None:
    # CONVOY_NATS_URL names a NATS cluster as one string; nats-py would parse it as one URL.
    three = "nats://n1:4222, nats://n2:4222,nats://n3:4222"
    assert bus.server_urls(three) == ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
    assert bus.server_urls(["nats://n1:4222,nats://n2:4222"]) == ["nats://n1:4222", "nats://n2:4222"]
    assert bus.server_urls("nats://one:4222") == ["nats://one:4222"]
    with pytest.raises(InvalidInput):
        bus.server_urls(" , ")


def test_a_lost_connection_moves_to_another_node_first() -> None:
    # After a disconnect every node of a cluster has a clean record; the one just lost
    # (killed, frozen, cut off) is tried last among equals, then by its failures' backoff.
    n1, n2, n3 = (Server(uri=urlparse(f"nats://n{i}:4222")) for i in (1, 2, 3))
    assert bus.next_server([n1, n2, n3], lost="n1:4222")[0] is n2
    assert bus.next_server([n1, n2, n3], lost=None)[0] is n1
    n2.reconnects, n3.reconnects = 1, 3
    assert bus.next_server([n1, n2, n3], lost="n1:4222") == (n1, 0.0)
    n1.reconnects = 2
    assert bus.next_server([n1, n2, n3], lost="n1:4222") == (n2, bus.reconnect_delay(1))
