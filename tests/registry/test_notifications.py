"""Registry notifications: what Debian's real registry posts when images are pushed (its
notifications pointed at a local endpoint), read by `parse_envelope`; and the refusals for
envelopes that are not what they claim. `tests/fixtures/registry/push-envelope.json` is an
envelope captured from the real registry this way, so the pure tests read a real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.registry.notifications import MAX_ENVELOPE, Pushed, parse_envelope
from tests.conftest import eventually
from tests.registry import images
from tests.webhooks import receiving

EVENTS = "application/vnd.docker.distribution.events.v1+json"
CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "registry" / "push-envelope.json"


async def test_pushes_to_a_real_registry_arrive_as_envelopes(start_registry) -> None:  # type: ignore[no-untyped-def]
    async with receiving() as hook:
        registry = start_registry(notify_url=hook.url, notify_headers={"Authorization": "Bearer hook-secret"})
        async with images.Pusher(url=registry.url, username=registry.username, password=registry.password) as pusher:
            single = await pusher.image("demo/app", "1.0.0", seed="n")
            index, children = await pusher.index("team/multi", "2.0.0", seed="m")
        expected = {
            Pushed("demo/app", "1.0.0", single, registry.host),
            *(Pushed("team/multi", None, child, registry.host) for child in children),
            Pushed("team/multi", "2.0.0", index, registry.host),
        }

        def pushes() -> set[Pushed]:
            return {p for headers, body in hook.received for p in parse_envelope(body, headers["Content-Type"])}

        await eventually(lambda: pushes() >= expected, timeout=60, message="the registry's push notifications")
        assert pushes() == expected
        for headers, body in hook.received:
            assert headers["Authorization"] == "Bearer hook-secret"
            assert headers["Content-Type"].startswith(EVENTS)
        # The envelopes also carried the blob pushes, which are not images: dropped.
        raw = [event for _, body in hook.received for event in json.loads(body)["events"]]
        assert any(event["target"].get("mediaType") == "application/octet-stream" for event in raw)


def test_the_captured_envelopes() -> None:
    assert parse_envelope(CAPTURED.read_bytes(), EVENTS) == [
        Pushed(
            repository="demo/app",
            tag="1.0.0",
            digest="sha256:b168128eb2529247e5e39ae9b1e4154caa383e619c49d3d8979fa7501f469961",
            host="127.0.0.1:42323",
        )
    ]
    blob = CAPTURED.with_name("blob-push-envelope.json").read_bytes()
    assert json.loads(blob)["events"][0]["action"] == "push"
    assert parse_envelope(blob, EVENTS) == []


def test_only_manifest_pushes_count() -> None:
    digest = "sha256:" + "a" * 64
    envelope = {"events": [
        {"action": "pull", "target": {"mediaType": images.OCI_MANIFEST, "repository": "a/b", "digest": digest, "tag": "1"}},
        {"action": "push", "target": {"mediaType": "application/octet-stream", "repository": "a/b", "digest": digest}},
        {"action": "delete", "target": {"repository": "a/b", "digest": digest}},
        {"action": "push", "target": {"mediaType": images.DOCKER_MANIFEST, "repository": "a/b", "digest": digest, "tag": ""}},
    ]}
    assert parse_envelope(json.dumps(envelope).encode(), f"{EVENTS}; charset=utf-8") == [Pushed("a/b", None, digest, None)]


def _event(**target: object) -> bytes:
    base = {"mediaType": images.OCI_MANIFEST, "repository": "a/b", "digest": "sha256:" + "a" * 64, "tag": "1.0"}
    return json.dumps({"events": [{"action": "push", "target": base | target}]}).encode()


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{}", "text/plain", "content type 'text/plain' is not a registry notification"),
        (b"not json", EVENTS, "the notification is not JSON"),
        (b"[]", EVENTS, 'not an object with an "events" list'),
        (b'{"events": {}}', EVENTS, 'not an object with an "events" list'),
        (b'{"events": [1]}', EVENTS, "event 0 is not an object"),
        (b'{"events": [{"action": "push", "target": []}]}', EVENTS, '"target" is not an object'),
        (_event(repository=None), EVENTS, '"target.repository" is not a string'),
        (_event(repository="A/b"), EVENTS, "component 'A' must be lowercase"),
        (_event(digest="sha256:xyz"), EVENTS, '"target.digest" is not sha256'),
        (_event(tag="bad tag"), EVENTS, '"target.tag" is not a tag'),
        (b" " * (MAX_ENVELOPE + 1), EVENTS, f"larger than {MAX_ENVELOPE} bytes"),
    ],
)
def test_malformed_envelopes(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_envelope(body, content_type)
    assert message in str(refused.value)
