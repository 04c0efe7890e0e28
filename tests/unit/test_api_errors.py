"""The answer an unavailable dependency gets: retryable, on both transports, and saying so
in words that survive the clipping (a failover's in-flight commands are answered with it)."""

from __future__ import annotations

import grpc

from eventstore.errors import Unavailable
from services.api.domain.errors import MESSAGE_LIMIT
from services.api.errors import RETRY_HINT, classify


def test_unavailable_is_503_and_says_a_retry_under_the_same_key_takes_effect_once() -> None:
    failure = classify(Unavailable("PostgreSQL unavailable during append: ConnectionRefusedError: refused"))
    assert (failure.grpc_code, failure.http_status) == (grpc.StatusCode.UNAVAILABLE, 503)
    assert failure.message == "PostgreSQL unavailable during append: ConnectionRefusedError: refused" + RETRY_HINT
    assert failure.expected


def test_the_retry_hint_survives_a_long_message() -> None:
    failure = classify(Unavailable("x" * (4 * MESSAGE_LIMIT)))
    assert failure.message.endswith(RETRY_HINT)
    assert len(failure.message.encode()) <= MESSAGE_LIMIT
