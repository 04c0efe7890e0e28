"""The event store's vocabulary and its Protocol.

A stored event is an envelope (ids, stream, versions, actor, causation, correlation,
recorded time) around an opaque payload: the protobuf bytes of a typed event from
`schemas/`. The store never interprets the payload; `eventstore.codec` turns typed
messages into `NewEvent`s and stored events back into (upcast) typed messages.

Every store implementation (PostgreSQL, in-memory) satisfies `EventStore` and passes the
same contract suite in tests/contract/.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, NamedTuple, Protocol

from eventstore.errors import InvalidInput

MAX_EVENT_BYTES: Final = 1024 * 1024
"""An event payload larger than this is rejected: events describe decisions, not blobs."""

MAX_EVENTS_PER_APPEND: Final = 10_000

_STREAM_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}){0,8}$")
"""`category/part/part…`: the category is a lower-case word; parts are DNS-ish names.
The category is used as a NATS subject token, so no dots, spaces or wildcards there."""

_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


class ExpectedVersion:
    """Sentinels for `append(expected_version=…)` besides an exact version number."""

    ANY: Final = -2
    """No concurrency check."""
    NO_STREAM: Final = 0
    """The stream must not exist yet (version 0 = empty)."""


def validate_stream_id(stream_id: str) -> str:
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise InvalidInput(
            f"malformed stream id {stream_id!r}: expected 'category/name[/name…]' where the "
            "category is a lower-case word (a-z, 0-9, '_', '-') and names use "
            "letters, digits, '.', '_', ':', '@', '-'"
        )
    return stream_id


def stream_category(stream_id: str) -> str:
    return stream_id.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended. `event_id` makes retries idempotent."""

    type: str
    data: bytes
    schema_version: int = 1
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    actor: str = "system"
    causation_id: uuid.UUID | None = None
    correlation_id: uuid.UUID | None = None

    def validate(self) -> None:
        # On the append hot path: exact type checks and a cached type-name check.
        if type(self.type) is not str or not _valid_type_name(self.type):
            raise InvalidInput(f"malformed event type {self.type!r}: expected a dotted identifier")
        if type(self.data) is not bytes:
            raise InvalidInput(f"event {self.event_id} data must be bytes, not {type(self.data).__name__}")
        if len(self.data) > MAX_EVENT_BYTES:
            raise InvalidInput(
                f"event {self.event_id} ({self.type}) is {len(self.data)} bytes; the limit is "
                f"{MAX_EVENT_BYTES} bytes — store large content elsewhere and reference it"
            )
        if type(self.schema_version) is not int or not 1 <= self.schema_version <= 10_000:
            raise InvalidInput(f"event {self.event_id} has invalid schema_version {self.schema_version!r}")
        if type(self.actor) is not str or not 0 < len(self.actor) <= 200:
            raise InvalidInput(f"event {self.event_id} needs an actor of 1-200 characters")
        if type(self.event_id) is not uuid.UUID:
            raise InvalidInput(f"event_id must be a UUID, not {self.event_id!r}")
        for name, value in (("causation_id", self.causation_id), ("correlation_id", self.correlation_id)):
            if value is not None and type(value) is not uuid.UUID:
                raise InvalidInput(f"event {name} must be a UUID, not {value!r}")


@functools.lru_cache(maxsize=4096)
def _valid_type_name(name: str) -> bool:
    return len(name) <= 200 and _TYPE_NAME.fullmatch(name) is not None


class RecordedEvent(NamedTuple):
    """An event as stored: immutable, with its global position and stream version.
    A NamedTuple, not a dataclass: reads build hundreds of thousands per second, and a
    frozen dataclass costs several times more to construct."""

    position: int
    stream_id: str
    version: int
    event_id: uuid.UUID
    type: str
    schema_version: int
    data: bytes
    actor: str
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    recorded_at: datetime

    @property
    def category(self) -> str:
        return stream_category(self.stream_id)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed. For an idempotent retry, the original positions."""

    stream_id: str
    positions: tuple[int, ...]
    first_version: int
    last_version: int
    duplicate: bool = False

    @property
    def last_position(self) -> int:
        return self.positions[-1] if self.positions else 0


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One stream's part of a multi-stream atomic write (used by `commit`)."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int = ExpectedVersion.ANY


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A processor's tracking record: the last input position it fully handled."""

    name: str
    position: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A command's answer, recorded by `commit` in the transaction that records the
    command's events, under a key its caller chose (the API's idempotency keys: `scope`
    is the calling token, `key` the client's key). A client that lost the answer and
    retries finds this one instead of a second command; because the answer and the
    events commit together, a crash can never leave one without the other.

    `request_sha256` identifies the request (a retry must repeat it), `response` is the
    answer's bytes, opaque to the store. `position` is set by the store: the last
    position the write recorded (0 when it recorded no event)."""

    scope: str
    key: str
    method: str
    request_sha256: bytes
    response: bytes
    position: int = 0

    @property
    def slot(self) -> tuple[str, str]:
        return (self.scope, self.key)


class EventStore(Protocol):
    """The system of record. Implementations: `PostgresEventStore`, `MemoryEventStore`."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> AppendResult:
        """Append atomically to one stream with optimistic concurrency.

        Raises `WrongExpectedVersion` on a conflict, `DuplicateEventId` when an event id
        was used for different content, `InvalidInput` for malformed input,
        `Unavailable` when the store cannot be reached (nothing written)."""
        ...

    async def commit(
        self,
        appends: Sequence[AppendRequest],
        *,
        checkpoint: Checkpoint | None = None,
        receipt: Receipt | None = None,
    ) -> list[AppendResult]:
        """Append to several streams and (optionally) advance a processor checkpoint
        and record a command's `receipt`, all in one transaction: the exactly-once
        primitive for processors and for commands.

        The checkpoint only moves forward; if it is already at or past `position`, the
        input was handled before and `AlreadyProcessed` is raised with nothing written.
        A receipt's (scope, key) is recorded once; if it is taken, `ReceiptTaken`
        (carrying the stored receipt) is raised with nothing written. `appends` may be
        empty when only a receipt is recorded."""
        ...

    async def receipts(self, slots: Sequence[tuple[str, str]]) -> tuple[int, dict[tuple[str, str], Receipt]]:
        """The log's head and the stored receipts among `slots` ((scope, key) pairs, may
        be empty), read together: what a command must know before it decides."""
        ...

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        as_of_position: int | None = None,
        as_of_time: datetime | None = None,
    ) -> list[RecordedEvent]: ...

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version; 0 when it has no events."""
        ...

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        """Events with position > `after` in global order (optionally only some stream
        categories, optionally up to `to_position`)."""
        ...

    async def head(self) -> int:
        """The global position of the last committed event (0 when empty)."""
        ...

    async def position_at(self, when: datetime) -> int:
        """The last position recorded at or before `when` (0 if none)."""
        ...

    def tail(
        self,
        *,
        after: int = 0,
        categories: Sequence[str] | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[RecordedEvent]:
        """Every event after `after`, then new ones as they commit, forever, in order."""
        ...

    async def checkpoint(self, name: str) -> int:
        """A processor's tracking position (0 when it never ran)."""
        ...

    async def close(self) -> None: ...


async def read_batches(
    store: EventStore,
    *,
    upto: int | None = None,
    categories: Sequence[str] | None = None,
    batch: int = 5000,
    after: int = 0,
) -> AsyncIterator[list[RecordedEvent]]:
    """The log after `after` (its start by default; a snapshot's position) up to position
    `upto`, in global order, `batch` events at a time: for folds that must see everything
    without holding all of it at once."""
    while upto is None or after < upto:
        events = await store.read_all(after=after, limit=batch, categories=categories, to_position=upto)
        if not events:
            return
        yield events
        after = events[-1].position


class AlreadyProcessed(Exception):
    """The processor's checkpoint is already at or past this input: a duplicate
    delivery. Nothing was written; acknowledge the input and move on."""

    def __init__(self, name: str, position: int, current: int) -> None:
        self.name = name
        self.position = position
        self.current = current
        super().__init__(f"processor {name!r} already handled position {position} (checkpoint {current})")


class ReceiptTaken(Exception):
    """A receipt under this (scope, key) is already recorded: the command was answered
    before (or the key was used for another request). Nothing was written; `stored` is
    the first answer."""

    def __init__(self, stored: Receipt) -> None:
        self.stored = stored
        super().__init__(f"a receipt for key {stored.key!r} (scope {stored.scope!r}) is already recorded")
