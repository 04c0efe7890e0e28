"""Group commit's decision core: which of many queued writes succeed, and where they land.

Concurrent appenders are grouped into one transaction (one fsync for many commands).
That must not weaken any per-command guarantee, so the decision is made item by item, in
queue order, against the state read under the append lock: each write is checked for its
expected stream version (seeing the writes queued before it), idempotent retries are
recognised by event id, processor checkpoints only move forward, and a command's
receipt is recorded at most once per key. A failed item fails alone; the others still
commit together.

Pure: no I/O, no clock. Both stores (PostgreSQL and in-memory) call `plan_batch`, so the
rules live in one place and the contract suite proves them once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from eventstore.errors import DuplicateEventId, InvalidInput, WrongExpectedVersion
from eventstore.types import (
    MAX_EVENTS_PER_APPEND,
    AlreadyProcessed,
    AppendRequest,
    AppendResult,
    Checkpoint,
    ExpectedVersion,
    NewEvent,
    Receipt,
    ReceiptTaken,
    validate_stream_id,
)


@dataclass(frozen=True, slots=True)
class Known:
    """An event already stored (or planned earlier in this batch), for retry checks."""

    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: bytes
    actor: str
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None

    @classmethod
    def of(cls, position: int, stream_id: str, version: int, event: NewEvent) -> Known:
        return cls(
            position, stream_id, version, event.type, event.schema_version, event.data, event.actor,
            event.causation_id, event.correlation_id,
        )

    def same_content(self, new: NewEvent, stream_id: str) -> bool:
        return (
            self.stream_id == stream_id
            and self.type == new.type
            and self.schema_version == new.schema_version
            and bytes(self.data) == bytes(new.data)
            and self.actor == new.actor
            and self.causation_id == new.causation_id
            and self.correlation_id == new.correlation_id
        )


@dataclass(frozen=True, slots=True)
class Write:
    """One queued write: stream appends, maybe a processor checkpoint, maybe a receipt."""

    appends: Sequence[AppendRequest]
    checkpoint: Checkpoint | None = None
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """An event to insert, with its assigned global position and stream version."""

    position: int
    stream_id: str
    version: int
    event: NewEvent


@dataclass(slots=True)
class Outcome:
    results: list[AppendResult] | None = None
    error: Exception | None = None


@dataclass(slots=True)
class BatchPlan:
    outcomes: list[Outcome] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)
    receipts: list[Receipt] = field(default_factory=list)
    """Receipts to record, each with the position of its write."""
    head: int = 0


def validate_write(write: Write) -> None:
    """Input checks that need no state; run before queuing so bad input fails fast."""
    if write.receipt is not None:
        r = write.receipt
        if not (type(r.scope) is str and type(r.key) is str and 0 < len(r.scope) <= 200 and 0 < len(r.key) <= 200):
            raise InvalidInput("a receipt needs a scope and a key of 1-200 characters")
        if type(r.response) is not bytes or type(r.request_sha256) is not bytes or type(r.method) is not str:
            raise InvalidInput("a receipt's method is text, its request hash and response are bytes")
    if write.checkpoint is not None:
        cp = write.checkpoint
        if not isinstance(cp.name, str) or not 0 < len(cp.name) <= 200:
            raise InvalidInput("a checkpoint needs a processor name of 1-200 characters")
        if not isinstance(cp.position, int) or cp.position < 0:
            raise InvalidInput(f"checkpoint position must be a non-negative integer, not {cp.position!r}")
    seen: set[uuid.UUID] = set()
    total = 0
    for request in write.appends:
        validate_stream_id(request.stream_id)
        ev = request.expected_version
        if not isinstance(ev, int) or ev < ExpectedVersion.ANY or ev == -1:
            raise InvalidInput(f"invalid expected_version {ev!r} for stream {request.stream_id!r}")
        for event in request.events:
            if type(event) is not NewEvent:
                raise InvalidInput(f"append takes NewEvent objects, not {type(event).__name__}")
            event.validate()
            if event.event_id in seen:
                raise InvalidInput(f"event id {event.event_id} appears twice in one write")
            seen.add(event.event_id)
        total += len(request.events)
    if total > MAX_EVENTS_PER_APPEND:
        raise InvalidInput(f"a write holds {total} events; the limit is {MAX_EVENTS_PER_APPEND}")


def referenced(writes: Sequence[Write]) -> tuple[set[str], set[uuid.UUID], set[str]]:
    """The streams, event ids and processor names whose state the plan needs."""
    streams: set[str] = set()
    ids: set[uuid.UUID] = set()
    names: set[str] = set()
    for write in writes:
        for request in write.appends:
            streams.add(request.stream_id)
            ids.update(e.event_id for e in request.events)
        if write.checkpoint is not None:
            names.add(write.checkpoint.name)
    return streams, ids, names


def receipt_slots(writes: Sequence[Write]) -> list[tuple[str, str]]:
    """The receipt keys the plan needs to know are taken or free."""
    return [w.receipt.slot for w in writes if w.receipt is not None]


def plan_batch(
    writes: Sequence[Write],
    *,
    head: int,
    versions: Mapping[str, int],
    known: Mapping[uuid.UUID, Known],
    checkpoints: Mapping[str, int],
    receipts: Mapping[tuple[str, str], Receipt] | None = None,
) -> BatchPlan:
    """Decide every queued write in order. `versions`, `known`, `checkpoints` and
    `receipts` are the stored state for everything `referenced(writes)` and
    `receipt_slots(writes)` name (missing = none)."""
    plan = BatchPlan(head=head)
    versions = dict(versions)
    known = dict(known)
    tracking = dict(checkpoints)
    taken = dict(receipts or {})
    # Ids written twice in one batch (a retry racing its original) are rare; only for
    # those must a planned row be remembered as "known".
    ids = [e.event_id for w in writes for a in w.appends for e in a.events]
    repeated = set() if len(set(ids)) == len(ids) else {i for i, n in Counter(ids).items() if n > 1}
    for write in writes:
        try:
            if write.receipt is not None and (stored := taken.get(write.receipt.slot)) is not None:
                raise ReceiptTaken(stored)
            results, rows = _plan_write(write, plan.head, versions, known, tracking)
        except (WrongExpectedVersion, DuplicateEventId, AlreadyProcessed, ReceiptTaken) as error:
            plan.outcomes.append(Outcome(error=error))
            continue
        for row in rows:
            versions[row.stream_id] = row.version
            if row.event.event_id in repeated:
                known[row.event.event_id] = Known.of(row.position, row.stream_id, row.version, row.event)
        if rows:
            plan.head = rows[-1].position
        plan.rows.extend(rows)
        if write.checkpoint is not None:
            tracking[write.checkpoint.name] = write.checkpoint.position
            plan.checkpoints[write.checkpoint.name] = write.checkpoint.position
        if write.receipt is not None:
            receipt = replace(write.receipt, position=max((r.last_position for r in results), default=0))
            taken[receipt.slot] = receipt
            plan.receipts.append(receipt)
        plan.outcomes.append(Outcome(results=results))
    return plan


def _plan_write(
    write: Write,
    head: int,
    versions: dict[str, int],
    known: dict[uuid.UUID, Known],
    tracking: dict[str, int],
) -> tuple[list[AppendResult], list[Row]]:
    if write.checkpoint is not None:
        current = tracking.get(write.checkpoint.name, 0)
        if write.checkpoint.position <= current:
            raise AlreadyProcessed(write.checkpoint.name, write.checkpoint.position, current)
    results: list[AppendResult] = []
    rows: list[Row] = []
    local_versions: dict[str, int] = {}
    position = head
    for request in write.appends:
        retry = _as_retry(request, known)
        if retry is not None:
            results.append(retry)
            continue
        current = local_versions.get(request.stream_id, versions.get(request.stream_id, 0))
        expected = request.expected_version
        if expected != ExpectedVersion.ANY and expected != current:
            raise WrongExpectedVersion(request.stream_id, expected, current)
        positions = []
        for offset, event in enumerate(request.events, start=1):
            position += 1
            rows.append(Row(position, request.stream_id, current + offset, event))
            positions.append(position)
        new_version = current + len(request.events)
        local_versions[request.stream_id] = new_version
        results.append(AppendResult(request.stream_id, tuple(positions), current + 1, new_version))
    return results, rows


def _as_retry(request: AppendRequest, known: Mapping[uuid.UUID, Known]) -> AppendResult | None:
    """The original result if `request` repeats an append already stored; None if it is
    new; DuplicateEventId if it reuses ids for anything else."""
    if not known:
        return None
    matches = [known.get(e.event_id) for e in request.events]
    if not any(m is not None for m in matches):
        return None
    for event, match in zip(request.events, matches, strict=True):
        if match is None:
            raise DuplicateEventId(str(event.event_id), "the same write also holds new ids; a retry must repeat a write exactly")
        if not match.same_content(event, request.stream_id):
            raise DuplicateEventId(str(event.event_id), f"stored in {match.stream_id!r} at version {match.version} with other content")
    stored = [m for m in matches if m is not None]
    for before, after in zip(stored, stored[1:]):
        if after.version != before.version + 1:
            raise DuplicateEventId(str(request.events[0].event_id), "the ids were stored by different writes")
    return AppendResult(
        request.stream_id,
        tuple(m.position for m in stored),
        stored[0].version,
        stored[-1].version,
        duplicate=True,
    )
