"""Convoy's own errors, each saying whether retrying can help.

Adapters (asyncpg, NATS, the embedded servers) translate their library's exceptions into
these at the edge, so callers above never import a driver to handle a failure. The API
maps them to gRPC codes and HTTP statuses; `retryable` tells clients and runners whether
to try again (with the same idempotency key / event ids) or to fix the request.
"""

from __future__ import annotations


class ConvoyError(Exception):
    """Base of every error Convoy raises on purpose."""

    retryable: bool = False


class InvalidInput(ConvoyError):
    """The request itself is wrong (bad stream id, oversized event, malformed data).
    Retrying the same request can never succeed; fix it."""


class WrongExpectedVersion(ConvoyError):
    """Optimistic concurrency conflict: the stream is not at the version the writer
    expected. Re-read the stream, decide again, and retry with the new version."""

    def __init__(self, stream_id: str, expected: int | None, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, not the expected {expected}; "
            "re-read the stream and decide again"
        )


class DuplicateEventId(ConvoyError):
    """An event id was reused for different content (or a different stream/position).
    Event ids identify one event forever; generate a new id for a new event."""

    def __init__(self, event_id: str, reason: str) -> None:
        self.event_id = event_id
        super().__init__(f"event id {event_id} was already used for a different event: {reason}")


class Unavailable(ConvoyError):
    """A server Convoy depends on (PostgreSQL, NATS) cannot be reached right now.
    Nothing was half-written; retry later with the same ids."""

    retryable = True


class BusRejected(ConvoyError):
    """NATS JetStream refused an operation: a missing or misconfigured stream, a failed
    publish precondition, a permission. The message carries the server's code and
    description; run `eventstore.bus.ensure_streams` or fix the credentials."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class EmbeddedServerError(ConvoyError):
    """An embedded server could not be started or stopped; the message says why and
    which log file to read."""


class UnknownEventType(ConvoyError):
    """A stored event has a type this build does not know (written by a newer Convoy)."""
