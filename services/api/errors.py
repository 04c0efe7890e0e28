"""How every failure becomes one answer, the same on gRPC and on REST.

The domain, the event store and this layer raise typed errors; `classify` maps each to a
gRPC status code and an HTTP status in one table, so the two transports can never
disagree about what a failure means. Anything unexpected becomes INTERNAL/500 with the
request's correlation id, so an operator can find the traceback in the logs without the
client ever seeing it. Bad input must never land there: the transports turn every
parse problem into `InvalidArgument` before a handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    (WrongExpectedVersion, grpc.StatusCode.ABORTED, 409),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    # Store-level bad input (an oversized event, a malformed id that slipped through).
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, 400),
)


def classify(error: BaseException) -> Failure:
    """The answer for `error`. BadCommandContext is our bug, not the caller's."""
    if isinstance(error, BadCommandContext):
        return Failure(grpc.StatusCode.INTERNAL, 500, "internal error", expected=False)
    for kind, code, status in _TABLE:
        if isinstance(error, kind):
            violations = error.violations if isinstance(error, InvalidArgument) else ()
            return Failure(code, status, str(error) or code.name, violations)
    return Failure(grpc.StatusCode.INTERNAL, 500, "internal error", expected=False)


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for the transports' parse errors."""
    return InvalidArgument.at(field, description)
