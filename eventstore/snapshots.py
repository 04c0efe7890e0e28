"""Snapshots of folded read models: bounded restarts without trusting a cache blindly.

A read model (the API's catalog, the planner's state) is a fold of the log; refolding
from position 0 on every start costs time proportional to the whole log. A snapshot is
the fold's state after position P, stored beside the log, so that a start loads it and
folds only (P, head]. It is a cache, never the record: each one travels in a
`SnapshotEnvelope` naming its kind, its fold version (what folding code and event
schemas produced it), its position and the SHA-256 of its payload, and `load` throws
away (and logs) any that does not match what this build folds — the fold then starts
from an older snapshot or from 0. The payload is protobuf (schemas/convoy/v1/
snapshots.proto), never pickle: the service role may write the table, and decoding
these messages can only build data, not run code.

Taking one must not stall the fold it copies. The fold calls `Snapshotter.offer` at a
point where its state is consistent (between events, between committed batches); when
one is due, `offer` runs the caller's `capture` — the only part on the fold's path — and
hands the result to the snapshotter's supervised task, which builds the message when
`capture` returned a builder (in a worker thread: for a model whose state is immutable,
like the API's catalog, capture only takes references), serializes, compresses,
checksums and stores it. While one is being written no other is captured: a slow
database delays snapshots, never the fold.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import structlog
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from eventstore.errors import ConvoyError
from eventstore.tasks import Backoff, describe, stop_task
from schemas.convoy.v1 import snapshots_pb2

log = structlog.get_logger("convoy.snapshots")

FORMAT_VERSION: Final = 1
"""The envelope's layout (bump when SnapshotEnvelope or the compression changes)."""

KEEP: Final = 2
"""Snapshots kept per (name, kind): the newest, and one to fall back on."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One stored snapshot: the columns of the `snapshots` table (migration 0005)."""

    name: str
    kind: str
    format_version: int
    fold_version: str
    position: int
    taken_at: datetime
    body: bytes
    """A serialized SnapshotEnvelope."""


class SnapshotRejected(ConvoyError):
    """A stored snapshot this build must not use (another fold version, a checksum that
    does not match, a body that does not decode). Not retryable with this snapshot: the
    fold starts from an older one or from position 0."""


class SnapshotStore(Protocol):
    """Where snapshots are kept (eventstore.pgsnapshots in production)."""

    async def save(self, snapshot: Snapshot, *, keep: int = KEEP) -> None:
        """Store `snapshot` and drop all but the `keep` newest of its (name, kind)."""
        ...

    async def stored(self, name: str, kind: str) -> list[Snapshot]:
        """The stored snapshots of (name, kind), newest (highest position) first."""
        ...


class MemorySnapshotStore:
    """`SnapshotStore` in a dict (tests, the in-memory composition)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[Snapshot]] = {}
        self.saved = 0

    async def save(self, snapshot: Snapshot, *, keep: int = KEEP) -> None:
        rows = [s for s in self._rows.get((snapshot.name, snapshot.kind), []) if s.position != snapshot.position]
        rows.append(snapshot)
        rows.sort(key=lambda s: s.position, reverse=True)
        self._rows[(snapshot.name, snapshot.kind)] = rows[: max(1, keep)]
        self.saved += 1

    async def stored(self, name: str, kind: str) -> list[Snapshot]:
        return list(self._rows.get((name, kind), []))

    def replace(self, snapshot: Snapshot) -> None:
        """Put a row as given (tests: a corrupt or foreign snapshot)."""
        rows = [s for s in self._rows.get((snapshot.name, snapshot.kind), []) if s.position != snapshot.position]
        self._rows[(snapshot.name, snapshot.kind)] = sorted([*rows, snapshot], key=lambda s: s.position, reverse=True)


# -- the envelope ------------------------------------------------------------------------


def seal(*, name: str, kind: str, fold_version: str, position: int, payload: bytes, level: int = 1) -> Snapshot:
    """A storable snapshot of `payload` (a serialized message) after `position`."""
    packed = zlib.compress(payload, level)
    envelope = snapshots_pb2.SnapshotEnvelope(
        format_version=FORMAT_VERSION,
        kind=kind,
        fold_version=fold_version,
        position=position,
        sha256=hashlib.sha256(packed).digest(),
        payload=packed,
    )
    return Snapshot(
        name=name,
        kind=kind,
        format_version=FORMAT_VERSION,
        fold_version=fold_version,
        position=position,
        taken_at=datetime.now(UTC),
        body=envelope.SerializeToString(),
    )


def unseal(snapshot: Snapshot, *, kind: str, fold_version: str) -> bytes:
    """The payload of a snapshot this build may use; `SnapshotRejected` says why not."""
    if snapshot.format_version != FORMAT_VERSION:
        raise SnapshotRejected(f"format version {snapshot.format_version}, this build reads {FORMAT_VERSION}")
    if snapshot.kind != kind or snapshot.fold_version != fold_version:
        raise SnapshotRejected(
            f"{snapshot.kind} snapshot of fold version {snapshot.fold_version!r}; this build folds {kind} "
            f"as {fold_version!r}"
        )
    envelope = snapshots_pb2.SnapshotEnvelope()
    try:
        envelope.ParseFromString(snapshot.body)
    except DecodeError as error:
        raise SnapshotRejected(f"the envelope does not decode: {error}") from error
    if (envelope.format_version, envelope.kind, envelope.fold_version, envelope.position) != (
        snapshot.format_version, snapshot.kind, snapshot.fold_version, snapshot.position
    ):
        raise SnapshotRejected("the envelope does not match the row it is stored in")
    if hashlib.sha256(envelope.payload).digest() != envelope.sha256:
        raise SnapshotRejected("the payload's SHA-256 does not match the envelope's")
    try:
        return zlib.decompress(envelope.payload)
    except zlib.error as error:
        raise SnapshotRejected(f"the payload does not decompress: {error}") from error


def fold_version_of(base: str, type_versions: dict[str, int] | Sequence[tuple[str, int]]) -> str:
    """`base` (a constant bumped when folding changes) plus a digest of the event types
    and schema versions the registry decodes to: a new event version (and so new
    upcasting) makes old snapshots incompatible without anyone remembering to bump."""
    items = sorted(type_versions.items() if isinstance(type_versions, dict) else type_versions)
    digest = hashlib.sha256(";".join(f"{t}={v}" for t, v in items).encode()).hexdigest()[:16]
    return f"{base}+events.{digest}"


Decode = Callable[[bytes, int], object]
Captured = Message | Callable[[], Message]
"""What `capture` returns: the message, or a function that builds it from values that
no longer change (run in a worker thread)."""


async def load(
    store: SnapshotStore, *, name: str, kind: str, fold_version: str, upto: int | None, decode: Decode
) -> tuple[int, object] | None:
    """The newest snapshot of (name, kind) this build may use, decoded: (position, value);
    None when there is none (fold from 0). A snapshot beyond `upto` (a checkpoint it
    must not pass), of another version, corrupt, or one `decode(payload, position)`
    raises on is logged and passed over — never trusted."""
    for snapshot in await store.stored(name, kind):
        if upto is not None and snapshot.position > upto:
            log.info("snapshot ignored: beyond the checkpoint", name=name, kind=kind, position=snapshot.position, upto=upto)
            continue
        try:
            payload = unseal(snapshot, kind=kind, fold_version=fold_version)
            value = decode(payload, snapshot.position)
        except Exception as error:  # noqa: BLE001 - a snapshot is a cache: any doubt, fold instead
            log.warning("snapshot ignored", name=name, kind=kind, position=snapshot.position, reason=str(error))
            continue
        return snapshot.position, value
    return None


# -- taking them ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to take snapshots: after `every_events` positions, or after `every_seconds`
    when at least one event was folded since the last one (None: by count only)."""

    every_events: int = 10_000
    every_seconds: float | None = 300.0
    keep: int = KEEP
    enabled: bool = True


@dataclass(slots=True)
class SnapshotStats:
    taken: int = 0
    failed: int = 0
    skipped_busy: int = 0
    last_position: int = 0
    last_capture_s: float = 0.0
    """Time `capture` took on the fold's path (the only part that stalls it)."""
    last_write_s: float = 0.0
    last_bytes: int = 0
    history: list[int] = field(default_factory=list)


class Snapshotter:
    """Takes snapshots of one read model in a supervised background task.
    Create, `await start()`, call `offer` from the fold, `await stop()`."""

    def __init__(
        self,
        *,
        store: SnapshotStore,
        name: str,
        kind: str,
        fold_version: str,
        policy: SnapshotPolicy,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.name, self.kind, self.fold_version, self.policy = store, name, kind, fold_version, policy
        self._monotonic = monotonic
        self.stats = SnapshotStats()
        self._base = 0
        self._since = monotonic()
        self._pending: tuple[int, Captured] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def based_on(self, position: int) -> None:
        """The fold started from `position` (a loaded snapshot, or 0): count from there."""
        self._base = position
        self._since = self._monotonic()

    def due(self, position: int) -> bool:
        if not self.policy.enabled or self._task is None or position <= self._base:
            return False
        if position - self._base >= self.policy.every_events:
            return True
        seconds = self.policy.every_seconds
        return seconds is not None and self._monotonic() - self._since >= seconds

    def offer(self, position: int, capture: Callable[[], Captured]) -> bool:
        """Called by the fold where its state is consistent, after `position`. When a
        snapshot is due and none is being written, run `capture` now (without awaiting:
        it copies the state into a message, or takes what a builder needs that the fold
        will not change) and write it in the background."""
        if not self.due(position):
            return False
        if self._pending is not None or not self._idle.is_set():
            self.stats.skipped_busy += 1
            return False
        started = time.perf_counter()
        try:
            message = capture()
        except Exception as error:  # noqa: BLE001 - no snapshot this time; the fold goes on
            self.stats.failed += 1
            self._base, self._since = position, self._monotonic()
            log.error("snapshot capture failed", name=self.name, kind=self.kind, error=describe(error))
            return False
        self.stats.last_capture_s = time.perf_counter() - started
        self._base, self._since = position, self._monotonic()
        self._pending = (position, message)
        self._idle.clear()
        self._wake.set()
        return True

    def _seal(self, position: int, captured: Captured) -> Snapshot:
        message = captured if isinstance(captured, Message) else captured()
        return seal(
            name=self.name, kind=self.kind, fold_version=self.fold_version, position=position,
            payload=message.SerializeToString(),
        )

    async def flush(self, timeout: float = 60.0) -> None:
        """Wait until no snapshot is being written (tests, orderly shutdown)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def start(self) -> None:
        if self.policy.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"convoy.snapshots:{self.kind}:{self.name}")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._pending = None
        self._idle.set()

    async def _run(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is None:
                continue
            position, captured = self._pending
            started = time.perf_counter()
            try:
                # In a worker thread: the fold goes on meanwhile (zlib and hashlib release the GIL).
                snapshot = await asyncio.to_thread(self._seal, position, captured)
                del captured
                await self.store.save(snapshot, keep=self.policy.keep)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a snapshot is an optimisation: log, try next time
                self.stats.failed += 1
                log.warning("snapshot not stored; the next one is taken later", name=self.name, kind=self.kind,
                            position=position, error=describe(error))
                await asyncio.sleep(backoff.next())
            else:
                backoff.reset()
                self.stats.taken += 1
                self.stats.last_position = position
                self.stats.last_write_s = time.perf_counter() - started
                self.stats.last_bytes = len(snapshot.body)
                self.stats.history.append(position)
                log.info("snapshot stored", name=self.name, kind=self.kind, position=position,
                         bytes=len(snapshot.body), capture_s=round(self.stats.last_capture_s, 3),
                         write_s=round(self.stats.last_write_s, 3))
            finally:
                self._pending = None
                self._idle.set()


# -- shared pieces of the payload encodings ---------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)


def stamp(field: Timestamp, moment: datetime | None) -> None:
    """Set a Timestamp field to an aware datetime (exactly, to the microsecond); leave it
    unset for None. A naive datetime raises: its meaning would change on restore."""
    if moment is None:
        return
    if moment.tzinfo is None:
        raise ValueError(f"a naive datetime ({moment}) cannot be snapshotted")
    micros = (moment - _EPOCH) // _MICRO
    field.seconds, rest = divmod(micros, 1_000_000)
    field.nanos = rest * 1000


def unstamp(message: Message, name: str) -> datetime | None:
    """The aware (UTC) datetime a Timestamp field holds; None when unset."""
    if not message.HasField(name):
        return None
    value: Timestamp = getattr(message, name)
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def policy_every(events: int) -> SnapshotPolicy:
    """The policy of `CONVOY_SNAPSHOT_EVERY` (0: never take one; loading stays on)."""
    return SnapshotPolicy(every_events=max(1, events), enabled=events > 0)
