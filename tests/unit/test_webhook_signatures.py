"""Webhook signatures carry their timestamp, so a receiver refuses replays and altered
bodies (services.notifier.signatures)."""

from __future__ import annotations

import pytest

from services.notifier.signatures import DEFAULT_TOLERANCE, SignatureRefused, sign, verify
from services.notifier.webhook import H_SIGNATURE, H_WEBHOOK_SIGNATURE, Webhook

SECRET = "s3cret"
BODY = b'{"text": "shop/web v2 in prod: FAILED", "event_id": "e-1"}'
SENT = 1_764_670_000


def test_a_fresh_delivery_verifies_and_answers_its_timestamp() -> None:
    header = sign(SECRET, BODY, timestamp=SENT)
    assert header.startswith(f"t={SENT},v1=")
    assert verify(BODY, header, SECRET, now=SENT + 3) == SENT
    assert verify(BODY, header, SECRET, now=SENT + DEFAULT_TOLERANCE) == SENT  # the edge is inside


def test_a_replay_after_the_tolerance_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp=SENT)
    with pytest.raises(SignatureRefused, match="s old"):
        verify(BODY, header, SECRET, now=SENT + DEFAULT_TOLERANCE + 1)
    with pytest.raises(SignatureRefused, match="old"):
        verify(BODY, header, SECRET, now=SENT + 60, tolerance=30)


def test_a_timestamp_from_the_future_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp=SENT + 3600)
    with pytest.raises(SignatureRefused, match="ahead"):
        verify(BODY, header, SECRET, now=SENT)


def test_a_tampered_body_or_timestamp_or_another_secret_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp=SENT)
    with pytest.raises(SignatureRefused, match="does not match"):
        verify(BODY.replace(b"FAILED", b"CONVERGED"), header, SECRET, now=SENT)
    moved = header.replace(f"t={SENT}", f"t={SENT + 1000}")  # replaying with a fresh-looking timestamp
    with pytest.raises(SignatureRefused, match="does not match"):
        verify(BODY, moved, SECRET, now=SENT + 1000)
    with pytest.raises(SignatureRefused, match="does not match"):
        verify(BODY, header, "other", now=SENT)


@pytest.mark.parametrize("header", [None, "", "sha256=abc", "t=now,v1=abc", f"t={SENT}", "v1=abc"])
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(SignatureRefused):
        verify(BODY, header, SECRET, now=SENT)


def test_any_of_several_signatures_may_match_during_a_secret_rotation() -> None:
    old = sign("old-secret", BODY, timestamp=SENT).split(",")[1]
    new = sign(SECRET, BODY, timestamp=SENT).split(",")[1]
    assert verify(BODY, f"t={SENT},{old},{new}", SECRET, now=SENT) == SENT


def test_the_notifier_sends_the_timestamped_and_the_deprecated_header() -> None:
    webhook = Webhook(url="https://hooks.example/x", secret=SECRET)
    headers = webhook.signature_headers(BODY, now=SENT + 0.7)
    assert verify(BODY, headers[H_WEBHOOK_SIGNATURE], SECRET, now=SENT) == SENT
    assert headers[H_SIGNATURE] == webhook.sign(BODY) and headers[H_SIGNATURE].startswith("sha256=")
    assert Webhook(url="https://hooks.example/x").signature_headers(BODY, now=SENT) == {}
