"""Webhook signatures a receiver can check for replay: `t=<unix seconds>,v1=<hex>`.

A signature of the body alone proves who sent it but not when, so whoever saw one
delivery (a proxy log, a leaked request) can replay it for ever. The notifier therefore
signs `<timestamp>.<body>` (HMAC-SHA256 with the shared secret) and sends the timestamp
with the signature in `Convoy-Webhook-Signature: t=1764670000,v1=<hex>`; a receiver
recomputes the HMAC over the timestamp it was sent and the raw body, compares in constant
time, and refuses a timestamp further than a tolerance (default 300 s) from its own clock,
in either direction. Within the tolerance a replay is still possible: receivers
deduplicate by `Convoy-Event-Id` (deliveries are at least once anyway).

Each delivery attempt is signed afresh, so a retry an hour later carries a fresh
timestamp. Several `v1=` entries may appear (a receiver accepts any that matches), which
lets a secret be rotated without a gap. The old body-only `Convoy-Signature: sha256=<hex>`
is still sent for one release, deprecated.

Pure: the clock is an argument.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from eventstore.errors import InvalidInput

SCHEME: Final = "v1"
DEFAULT_TOLERANCE: Final = 300.0
"""Seconds a signature's timestamp may differ from the receiver's clock."""


class SignatureRefused(InvalidInput):
    """The webhook delivery is not trusted (say why in the message; a resend with the
    same headers is refused again)."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int) -> str:
    """The `Convoy-Webhook-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},{SCHEME}={_mac(secret, timestamp, body)}"


def sign_body_only(secret: str, body: bytes) -> str:
    """The deprecated `Convoy-Signature: sha256=<hex>` value (no timestamp: replayable)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def parse(header: str) -> tuple[int, list[str]]:
    """(timestamp, the v1 signatures) of a header value, or `SignatureRefused`."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureRefused("the signature's timestamp `t=` is not a whole number of seconds") from None
        elif key == SCHEME and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureRefused("malformed signature: expected `t=<unix seconds>,v1=<hex>`")
    return timestamp, signatures


def verify(
    body: bytes, header: str | None, secret: str, *, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> int:
    """Check a delivery: `header` is its `Convoy-Webhook-Signature`, `body` the raw bytes
    received, `now` the receiver's clock (unix seconds). Answers the signed timestamp;
    raises `SignatureRefused` for a missing or malformed header, a timestamp more than
    `tolerance` seconds old or ahead, or a signature that does not match (compared in
    constant time)."""
    if not secret:
        raise SignatureRefused("no secret to verify with: configure the webhook's shared secret")
    if not header:
        raise SignatureRefused("the delivery is not signed (no Convoy-Webhook-Signature header)")
    timestamp, signatures = parse(header)
    expected = _mac(secret, timestamp, body)
    matched = False
    for candidate in signatures:  # every one compared: the time taken says nothing
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureRefused("the signature does not match the body (wrong secret or altered body)")
    if abs(now - timestamp) > tolerance:
        raise SignatureRefused(
            f"the signature's timestamp is {abs(now - timestamp):.0f} s {'old' if timestamp < now else 'ahead'} "
            f"(tolerance {tolerance:.0f} s): a replay, or a clock that is off — check NTP on both sides"
        )
    return timestamp
