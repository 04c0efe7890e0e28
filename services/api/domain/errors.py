"""Why a command was refused, as types the API can map to gRPC codes and HTTP statuses.

`decide` raises only these (and never half-decides: a refused command yields no events).
Each message says what to fix and, for bad input, names the field path the way the
request spells it (`application.release_channels[1].runtimes[0].runtime`), so a CLI user
or a UI can point at the offending line. None of them is retryable: sending the same
command again gets the same answer until the request or the catalog changes.

| error                | gRPC                | HTTP |
|----------------------|---------------------|------|
| InvalidArgument      | INVALID_ARGUMENT    | 400  |
| NotFound             | NOT_FOUND           | 404  |
| AlreadyExists        | ALREADY_EXISTS      | 409  |
| FailedPrecondition   | FAILED_PRECONDITION | 400/409 |
| PermissionDenied     | PERMISSION_DENIED   | 403  |
| BadCommandContext    | INTERNAL            | 500  |

Messages stay short whatever the request held: a value quoted in one goes through
`quote` (its first `QUOTE_LIMIT` characters and its size), and a whole message through
`clip` (at most `MESSAGE_LIMIT` bytes). A 3 MB version must come back as a one-line
INVALID_ARGUMENT, not as a 3 MB status that no gRPC trailer (8 KiB by default) can carry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from eventstore.errors import ConvoyError, InvalidInput

QUOTE_LIMIT: Final = 128
"""Characters of a value an error message quotes whole (twice a DNS label, so a name a
little too long shows in full); longer values are cut and their size said."""
MESSAGE_LIMIT: Final = 1024
"""UTF-8 bytes of one error message at most."""


def quote(value: object, *, limit: int = QUOTE_LIMIT) -> str:
    """A value quoted for an error message: JSON-quoted (control characters escaped) and,
    past `limit` characters, cut with its size — `"vvvv…" (3145728 bytes)`."""
    if isinstance(value, str):
        if len(value) <= limit:
            return json.dumps(value, ensure_ascii=False)
        size = len(value.encode("utf-8", "surrogatepass"))
        return f"{json.dumps(value[:limit], ensure_ascii=False)[:-1]}…\" ({size} bytes)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def clip(text: str, *, limit: int = MESSAGE_LIMIT) -> str:
    """`text` in at most `limit` UTF-8 bytes; a longer one is cut and says how long it was."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    tail = f"… ({len(data)} bytes)"
    keep = max(0, limit - len(tail.encode()))
    return data[:keep].decode("utf-8", "ignore") + tail


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing wrong with a request: where (a field path) and what to do about it."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


MAX_SHOWN: Final = 20
"""Violations an InvalidArgument's message names (all are kept in `violations`)."""


class InvalidArgument(InvalidInput):
    """The request is malformed or contradicts itself, whatever the catalog holds.
    `violations` lists every problem found (the API can return them as field
    violations); the message joins as many as fit `MESSAGE_LIMIT` and counts the rest."""

    def __init__(self, violations: Iterable[Violation]) -> None:
        self.violations: tuple[Violation, ...] = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one violation")
        super().__init__(_joined(self.violations))

    @classmethod
    def at(cls, field: str, description: str) -> InvalidArgument:
        """A single violation, the common case."""
        return cls([Violation(field, description)])


def _joined(violations: tuple[Violation, ...]) -> str:
    """The violations as one message: as many as fit `MESSAGE_LIMIT` (at most
    `MAX_SHOWN`), then how many more there are."""
    parts: list[str] = []
    used = 0
    for index, violation in enumerate(violations):
        text = str(violation)
        size = len(text.encode("utf-8", "surrogatepass")) + 2
        if parts and (index == MAX_SHOWN or used + size > MESSAGE_LIMIT - 40):
            return "; ".join(parts) + f"; and {len(violations) - index} more"
        parts.append(text)
        used += size
    return clip("; ".join(parts))


class NotFound(ConvoyError):
    """The request names something the catalog does not hold (an application, a
    runtime, a release, a channel …). Create it first, or fix the name."""


class AlreadyExists(ConvoyError):
    """The request would create something that must be unique and already exists
    (e.g. a release version of a service)."""


class FailedPrecondition(ConvoyError):
    """The request is well-formed but the catalog is not in a state that allows it
    (deleting an application that still has services, approving a rejected release …).
    The message says what must change first."""


class PermissionDenied(ConvoyError):
    """The caller's role or identity does not allow this particular command. Role
    checks per method happen in the API; the domain raises this only for rules that
    depend on the catalog."""


class ImagesChanged(ConvoyError):
    """A Deploy's images changed (the service was reconfigured) between the shell
    resolving them and the decision: nothing was recorded; sending it again resolves the
    new ones."""

    retryable = True


class BadCommandContext(ConvoyError):
    """The shell built the `Command` wrongly: an empty actor, missing minted ids or
    secrets, a request type that is not a command. A programming error in the API
    layer, never the end user's fault; the message names what is missing."""


class Problems:
    """Collects violations while validating a declaration, so one answer lists every
    problem instead of making the user fix them one round-trip at a time."""

    def __init__(self) -> None:
        self._items: list[Violation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(Violation(field, description))

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise InvalidArgument(self._items)


DOMAIN_ERRORS: tuple[type[ConvoyError], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    ImagesChanged,
    BadCommandContext,
)
"""Everything `decide` may raise."""
