"""How every failure becomes one answer, the same on gRPC and on REST.

The domain, the event store and this layer raise typed errors; `classify` maps each to a
gRPC status code and an HTTP status in one table, so the two transports can never
disagree about what a failure means. Anything unexpected becomes INTERNAL/500 with the
request's correlation id, so an operator can find the traceback in the logs without the
client ever seeing it. Bad input must never land there: the transports turn every
parse problem into `InvalidArgument` before a handler runs.

Every answer is bounded here, whatever the error carried: the message is clipped to
`MESSAGE_LIMIT` bytes and the violations to `VIOLATIONS_BUDGET` bytes of JSON (the rest
counted in a last one). On gRPC both travel in trailing metadata, which clients refuse
past 8 KiB by default (16 KiB hard): a longer status becomes RESOURCE_EXHAUSTED and the
real answer is lost.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

import grpc

from eventstore.errors import ConvoyError, InvalidInput, Unavailable, WrongExpectedVersion
from services.api.domain import (
    AlreadyExists,
    BadCommandContext,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Violation,
)
from services.api.domain.errors import MESSAGE_LIMIT, ImagesChanged, clip
from services.api.limits import ResourceExhausted

VIOLATIONS_BUDGET: Final = 2048
"""Bytes of JSON the violations of one answer take at most (`convoy-violations-bin`)."""
FIELD_LIMIT: Final = 256
DESCRIPTION_LIMIT: Final = 512
RETRY_HINT: Final = " (retryable: send it again; a write with the same idempotency key takes effect once)"
"""Added to every UNAVAILABLE answer. A write cut off by a lost database connection (a
failover) may or may not have committed; its retry under the same key answers the recorded
answer if it did, and records it once if it did not."""


class Unauthenticated(ConvoyError):
    """No credential, or one Convoy does not recognise (unknown, revoked, malformed).
    Send `authorization: Bearer <token secret>`."""


class IdempotencyMismatch(ConvoyError):
    """An idempotency key was reused for a different request. Keys name one request
    forever (per token); use a fresh key for a new request."""


class Conflict(ConvoyError):
    """A concurrent writer changed what this command was decided against, twice in a
    row. Nothing was written; send the request again."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Failure:
    """What the client is told."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    violations: tuple[Violation, ...] = ()
    expected: bool = True
    """False for bugs and unknown exceptions: logged with a traceback."""
    retry_after: float | None = None
    """Seconds to wait before retrying (a limit reached): HTTP Retry-After, gRPC `retry-after`."""

    @property
    def retry_after_header(self) -> str | None:
        return None if self.retry_after is None else str(max(1, math.ceil(self.retry_after)))

    @property
    def status_name(self) -> str:
        return self.grpc_code.name


_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, int], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
    (NotFound, grpc.StatusCode.NOT_FOUND, 404),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 409),
    (IdempotencyMismatch, grpc.StatusCode.ALREADY_EXISTS, 409),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (Conflict, grpc.StatusCode.ABORTED, 409),
    (ImagesChanged, grpc.StatusCode.ABORTED, 409),
    (WrongExpectedVersion, grpc.StatusCode.ABORTED, 409),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    # Store-level bad input (an oversized event, a malformed id that slipped through).
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, 400),
)


def classify(error: BaseException) -> Failure:
    """The answer for `error`. BadCommandContext is our bug, not the caller's."""
    if isinstance(error, BadCommandContext):
        return Failure(grpc.StatusCode.INTERNAL, 500, "internal error", expected=False)
    for kind, code, status in _TABLE:
        if isinstance(error, kind):
            violations = bounded(error.violations) if isinstance(error, InvalidArgument) else ()
            retry_after = error.retry_after if isinstance(error, ResourceExhausted) else None
            message = str(error) or code.name
            if isinstance(error, Unavailable):  # the hint survives the clipping
                message = clip(message, limit=MESSAGE_LIMIT - len(RETRY_HINT.encode())) + RETRY_HINT
            return Failure(code, status, clip(message, limit=MESSAGE_LIMIT), violations, retry_after=retry_after)
    return Failure(grpc.StatusCode.INTERNAL, 500, "internal error", expected=False)


def bounded(violations: tuple[Violation, ...]) -> tuple[Violation, ...]:
    """The violations that fit `VIOLATIONS_BUDGET` bytes of JSON (each clipped), and a
    last one counting those left out."""
    kept: list[Violation] = []
    used = 2
    for index, violation in enumerate(violations):
        short = Violation(clip(violation.field, limit=FIELD_LIMIT), clip(violation.description, limit=DESCRIPTION_LIMIT))
        size = len(json.dumps({"field": short.field, "description": short.description})) + 2
        if kept and used + size > VIOLATIONS_BUDGET - 100:
            kept.append(Violation("", f"… and {len(violations) - index} more problems; fix these first"))
            break
        kept.append(short)
        used += size
    return tuple(kept)


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for the transports' parse errors."""
    return InvalidArgument.at(field, description)
