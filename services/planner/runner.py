"""The planner's I/O shell: read the log, call `plan`, commit outputs with the checkpoint.

Exactly once, by construction:
- inputs are read from the store in global order (the store's tail, woken by NOTIFY),
  only from the categories the planner reads (`engine.INPUT_CATEGORIES`);
- the outputs of a run of inputs and the checkpoint after its last input commit in one
  transaction (`EventStore.commit`), so a crash leaves either both or neither;
- output event ids derive from the input's event id (uuid5), and `plan` is
  deterministic, so even two planners racing on the same log write the same events once:
  the loser gets `AlreadyProcessed` (its state is the same fold) and moves on, or finds
  some of its outputs recorded already and records the rest (`_commit`).

Leader and standby: with a `SessionLock` (what `convoy planner` runs with), the planner
plans only while it holds its checkpoint's advisory lock; a standby waits for it and, once
it has it, rebuilds from the checkpoint and follows. Losing the lock's session stops the
planning at once (the run is cancelled); idempotent outputs make the moment two processes
may both plan harmless.

Partitioned (`PlannerSettings.partition`, services.partitions): the planner plans only
its applications' inputs (and every input about none), emits only its applications'
outputs and keeps its own checkpoint, lock and version stream. Output ids do not depend
on the partitioning (`output_events`), so the record per application is the same whether
one planner or N wrote it, and a new layout's planner starts at the previous layout's
checkpoints (`adopted_checkpoint`).

On start, and after any failure, the state is rebuilt by folding the inputs up to the
checkpoint (outputs discarded: they are already recorded) — `plan` mutates its state, so
a batch that failed half way cannot be undone in memory, only refolded. With a snapshot
store the rebuild starts from the newest snapshot of this checkpoint name and planner
version at a position P ≤ the checkpoint (services.planner.snapshots) and folds only
(P, checkpoint]; new snapshots are captured between committed batches, where the state
is consistent, and written by a background task (eventstore.snapshots).

An input `plan` raises on is rejected, not retried: the planner records
PlannerInputRejected (position, planner version, error) with its checkpoint at that input,
refolds its state without it (plan mutated the state half way) and goes on — retrying
would replay the same input into the same bug forever and halt every application. The
rebuild skips recorded rejections the same way, and one an older input meets during a
rebuild (a new planner version) is recorded and skipped too.

Timers: `plan` schedules them as events and keeps the pending ones in its state; the
timer shell here appends TimerFired when the injected clock says one is due. The
firing's event id derives from the timer id, so a timer fires once however often the
shell restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from eventstore import snapshots
from eventstore.codec import EventRegistry
from eventstore.errors import ConvoyError, DuplicateEventId, Unavailable, UnknownEventType
from eventstore.sessionlock import LockLost, SessionLock
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import (
    AlreadyProcessed,
    AppendRequest,
    Checkpoint,
    EventStore,
    NewEvent,
    RecordedEvent,
    read_batches,
)
from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.planner.clock import Clock
from services.planner.engine import INPUT_CATEGORIES, PLANNER_ACTOR, Input, Output, timer_stream
from services.planner import snapshots as planner_snapshots
from services.planner.model import PlannerState
from services.planner.partitions import WHOLE, Partition, application_of, partition_names
from services.planner.versions import CURRENT, Engine, record_start, rejections, version_stream

log = structlog.get_logger("convoy.planner")

OUTPUT_NAMESPACE: Final = uuid.UUID("5f0c5f43-0b7b-4c7e-9d0a-7c3f2f1e9a10")
TIMER_NAMESPACE: Final = uuid.UUID("0e7d8e1c-6a51-4d5e-8c1b-3b6f0d9b2a44")


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    name: str = "planner"
    """The checkpoint's name: one per planner of an instance (`partition.name`)."""
    partition: Partition = WHOLE
    """The applications this planner plans (services.planner.partitions)."""

    def __post_init__(self) -> None:
        if self.name == WHOLE.name and not self.partition.whole:
            object.__setattr__(self, "name", self.partition.name)  # a partition never shares the whole's checkpoint
    max_inputs_per_commit: int = 1000
    max_outputs_per_commit: int = 4000
    read_batch: int = 5000
    queue_size: int = 20000


@dataclass(slots=True)
class PlannerStats:
    inputs: int = 0
    outputs: int = 0
    commits: int = 0
    restarts: int = 0
    timers_fired: int = 0
    skipped: int = 0
    rejected: int = 0
    """Inputs `plan` raised on, recorded as rejected and skipped."""
    elsewhere: int = 0
    """Inputs about applications another partition plans (read, not planned)."""


Converged = Callable[[str, str, str, float], None]
"""Told (application, service, channel, seconds) when a channel converges to a release:
the seconds from its ReleaseCreated to the input that made it converge, both recorded
times from the log — no clock is read (metrics: `convoy_convergence_duration_seconds`)."""


def convergences(state: PlannerState, cause: Input, outputs: Sequence[Output]) -> list[tuple[str, str, str, float]]:
    """The channels that `outputs` (planned for `cause`) report CONVERGED, with durations."""
    found = []
    for out in outputs:
        m = out.message
        if (
            isinstance(m, events_pb2.InstanceStatusChanged)
            and not m.target.runtime
            and m.new_status == convergence_pb2.INSTANCE_STATUS_CONVERGED
        ):
            release = state.catalog.releases.get(m.release_id)
            if release is not None:
                seconds = (cause.recorded_at - release.created_at).total_seconds()
                found.append((m.application, m.service, m.channel, max(0.0, seconds)))
    return found


def to_input(registry: EventRegistry, recorded: RecordedEvent) -> Input | None:
    """The planner's view of a stored event; None for one this build cannot read (skipped
    the same way on every replay, so decisions stay reproducible)."""
    try:
        decoded = registry.decode(recorded)
    except (UnknownEventType, ConvoyError) as error:
        log.warning("planner skips an event it cannot read", position=recorded.position, error=str(error))
        return None
    # asyncpg hands back its own UUID subclass; events take plain uuid.UUID.
    return Input(
        decoded.message, recorded.position, _uuid(recorded.event_id), recorded.actor, recorded.recorded_at,
        recorded.stream_id,
    )


def _uuid(value: uuid.UUID) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(bytes=value.bytes)


PER_STREAM_IDS_SINCE: Final = 4
"""The planner version from which an input every partition reads numbers its outputs
per stream (the replay check numbers older versions' outputs as they did)."""


def output_events(
    registry: EventRegistry, cause: Input, outputs: Sequence[Output], correlation: uuid.UUID | None,
    *, version: int = PER_STREAM_IDS_SINCE,
) -> list[tuple[str, NewEvent]]:
    """The events of `outputs`, with ids that are the same however the planner is
    partitioned: an input about one application has all its outputs in the one partition
    that owns it, numbered in order (`<input id>/<i>`, as ever); an input every partition
    reads (a runtime paused) has its outputs split among partitions, so they are numbered
    within their stream (`<input id>/<stream>/<j>`; every output stream names one
    application), which no other partition writes."""
    per_stream = version >= PER_STREAM_IDS_SINCE and application_of(cause.message, cause.stream_id) is None
    seen: dict[str, int] = {}
    events = []
    cause_id = str(cause.event_id)  # once per input, not per output (uuid.UUID.__str__ is Python)
    correlation_id = _uuid(correlation) if correlation else cause.event_id
    for i, out in enumerate(outputs):
        j = seen[out.stream_id] = seen.get(out.stream_id, -1) + 1
        name = f"{cause_id}/{out.stream_id}/{j}" if per_stream else f"{cause_id}/{i}"
        events.append((
            out.stream_id,
            registry.encode(
                out.message,
                actor=PLANNER_ACTOR,
                event_id=_output_id(name),
                causation_id=cause.event_id,
                correlation_id=correlation_id,
            ),
        ))
    return events


_OUTPUT_NAMESPACE_BYTES: Final = OUTPUT_NAMESPACE.bytes


def _output_id(name: str) -> uuid.UUID:
    """`uuid.uuid5(OUTPUT_NAMESPACE, name)`, without recomputing the namespace's bytes per
    output (the planner derives one id per output: ~5 -> ~3.5 µs)."""
    digest = hashlib.sha1(_OUTPUT_NAMESPACE_BYTES + name.encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


def group(events: Sequence[tuple[str, NewEvent]]) -> list[AppendRequest]:
    """One append per stream, streams in order of first appearance, events in order."""
    by_stream: dict[str, list[NewEvent]] = {}
    for stream_id, event in events:
        by_stream.setdefault(stream_id, []).append(event)
    return [AppendRequest(stream_id, tuple(events)) for stream_id, events in by_stream.items()]


MAX_ERROR: Final = 2000


class InputRejected(Exception):
    """`plan` raised on an input: the state it left is not to be trusted."""

    def __init__(self, recorded: RecordedEvent, item: Input, error: Exception) -> None:
        super().__init__(f"planning the input at position {recorded.position} failed: {type(error).__name__}: {error}")
        self.recorded, self.item, self.error = recorded, item, error


def rejection(
    registry: EventRegistry, failed: InputRejected, *, version: int, checkpoint_name: str = "planner"
) -> tuple[events_pb2.PlannerInputRejected, NewEvent]:
    """The PlannerInputRejected of a failed input; its id derives from the input's (and,
    partitioned, the checkpoint's: two partitions may reject one shared input), so it is
    recorded once however often it is met."""
    recorded, item = failed.recorded, failed.item
    application, service = subject_of(item.message)
    message = events_pb2.PlannerInputRejected(
        position=recorded.position,
        event_id=str(item.event_id),
        event_type=recorded.type,
        planner_version=version,
        error=f"{type(failed.error).__name__}: {failed.error}"[:MAX_ERROR],
        application=application,
        service=service,
        actor=recorded.actor,
    )
    return message, registry.encode(
        message,
        actor=PLANNER_ACTOR,
        event_id=uuid.uuid5(
            OUTPUT_NAMESPACE,
            f"{item.event_id}/rejected" + ("" if checkpoint_name == "planner" else f"/{checkpoint_name}"),
        ),
        causation_id=item.event_id,
        correlation_id=_uuid(recorded.correlation_id) if recorded.correlation_id else item.event_id,
    )


def subject_of(message: object) -> tuple[str, str]:
    """(application, service) an input is about, where it says (else empty strings)."""
    for inner in ("release", "service", "observation"):
        nested = getattr(message, inner, None)
        if nested is not None and hasattr(nested, "application"):
            return nested.application, getattr(nested, "service", "") or getattr(nested, "name", "")
    return getattr(message, "application", "") or "", getattr(message, "service", "") or ""


Rejecting = Callable[[InputRejected], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """Where `rebuild` may start from: the snapshots of one checkpoint name."""

    store: snapshots.SnapshotStore
    name: str


@dataclass(slots=True)
class RebuildReport:
    loaded_from: int = 0
    """The snapshot position the fold started after (0: the log's start)."""
    folded: int = 0
    """Inputs read and planned after it (the last attempt's)."""


async def rebuild(
    store: EventStore,
    registry: EventRegistry,
    *,
    upto: int,
    batch: int = 5000,
    engine: Engine = CURRENT,
    rejected: frozenset[int] = frozenset(),
    on_rejected: Rejecting | None = None,
    partition: Partition = WHOLE,
    snapshot: SnapshotSource | None = None,
    report: RebuildReport | None = None,
) -> PlannerState:
    """The state after folding every input up to position `upto` (outputs discarded),
    skipping the `rejected` positions. An input `plan` raises on is skipped too — the
    fold starts again without it, and `on_rejected` is told (to record it). With a
    `snapshot` source the fold starts from the newest usable snapshot at or before `upto`."""
    skip = set(rejected)
    report = report if report is not None else RebuildReport()
    start: tuple[int, bytes] | None = None
    decoded: PlannerState | None = None
    if snapshot is not None:
        found = await snapshots.load(
            snapshot.store, name=snapshot.name, kind=planner_snapshots.KIND,
            fold_version=planner_snapshots.fold_version(engine.version, registry), upto=upto,
            decode=lambda payload, position: (planner_snapshots.restore(payload, position), payload),
        )
        if found is not None:
            decoded, payload = found[1]  # type: ignore[misc]
            start = (found[0], payload)
    while True:
        # plan mutates the state: an attempt after a rejection decodes the snapshot afresh.
        after = start[0] if start is not None else 0
        if decoded is not None:
            state, decoded = decoded, None
        else:
            state = planner_snapshots.restore(start[1], after) if start is not None else PlannerState()
        report.loaded_from, report.folded = after, 0
        try:
            async for events in read_batches(store, after=after, upto=upto, categories=INPUT_CATEGORIES, batch=batch):
                for recorded in events:
                    report.folded += 1
                    if recorded.position in skip:
                        continue
                    item = to_input(registry, recorded)
                    if item is None or not partition.takes(item.message, item.stream_id):
                        continue
                    try:
                        engine.plan(state, item)
                    except Exception as error:  # noqa: BLE001 - a rejected input: refold without it
                        raise InputRejected(recorded, item, error) from error
        except InputRejected as failed:
            log.error("an input fails to plan during the rebuild; refolding without it", error=str(failed))
            skip.add(failed.recorded.position)
            if on_rejected is not None:
                await on_rejected(failed)
            continue
        state.position = upto
        return state


class Planner:
    """The planner process: a supervised fold of the log plus the timer shell."""

    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        clock: Clock,
        settings: PlannerSettings | None = None,
        on_converged: Converged | None = None,
        engine: Engine = CURRENT,
        lock: SessionLock | None = None,
        snapshot_store: snapshots.SnapshotStore | None = None,
        snapshot_policy: snapshots.SnapshotPolicy | None = None,
    ) -> None:
        """`snapshot_store`: where the state's snapshots are loaded from and taken to, keyed
        by the checkpoint name (None: every start folds from position 0)."""
        self._snapshot_store = snapshot_store
        self.snapshotter = (
            snapshots.Snapshotter(
                store=snapshot_store, name=(settings or PlannerSettings()).name, kind=planner_snapshots.KIND,
                fold_version=planner_snapshots.fold_version(engine.version, registry),
                policy=snapshot_policy or snapshots.SnapshotPolicy(),
            )
            if snapshot_store is not None
            else None
        )
        self.rebuilt = RebuildReport()
        """How the last rebuild went (from which snapshot, how many inputs it folded)."""
        self.store = store
        self.lock = lock
        """Held while planning (leader/standby); None: plan without one (tests, `convoy up`)."""
        self.role = "starting" if lock is not None else "leading"
        """"standby" (waiting for the lock), "leading" (holds it, or runs without one)."""
        self.standing_by = asyncio.Event()
        """Set once this planner found another holding the lock."""
        self.engine = engine
        self.on_converged = on_converged
        self.registry = registry
        self.clock = clock
        self.settings = settings or PlannerSettings()
        self.stats = PlannerStats()
        self.state = PlannerState()
        self.ready = asyncio.Event()
        """Set once the state is rebuilt and the planner follows the log."""
        self._timers_changed = asyncio.Event()
        self._fired: set[str] = set()
        self.rejections: list[events_pb2.PlannerInputRejected] = []
        """Inputs rejected so far (from the record, then as they happen), oldest first."""
        self._task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.snapshotter is not None:
            await self.snapshotter.start()
        self._task = asyncio.create_task(self._supervise(), name=f"planner:{self.settings.name}")
        self._timer_task = asyncio.create_task(self._fire_timers(), name=f"planner-timers:{self.settings.name}")

    async def stop(self) -> None:
        await stop_task(self._timer_task)
        await stop_task(self._task)
        self._task = self._timer_task = None
        if self.snapshotter is not None:
            await self.snapshotter.stop()

    async def __aenter__(self) -> Planner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the fold ----------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                await (self._lead() if self.lock is not None else self._run())
            except asyncio.CancelledError:
                raise
            except InputRejected as failed:
                # Recorded; the state plan left behind is refolded without that input.
                self.ready.clear()
                log.info("refolding without the rejected input", position=failed.recorded.position)
            except LockLost as error:
                self.ready.clear()
                self.stats.restarts += 1
                log.warning("planner stands down; waiting for the lock again", detail=str(error))
            except DuplicateEventId as error:
                # Another planner committed part of these inputs' outputs (the same events:
                # ids derive from inputs): refold from the checkpoint and go on.
                self.ready.clear()
                self.stats.restarts += 1
                log.info("another planner is ahead; refolding from the checkpoint", detail=str(error))
            except Unavailable as error:  # the store is down or failing over: expected, no traceback
                self.ready.clear()
                self.stats.restarts += 1
                delay = backoff.next()
                log.warning("store unavailable; rebuilding from the log", error=str(error), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
            except Exception as error:  # rebuild and go on: the log is the truth
                self.ready.clear()
                self.stats.restarts += 1
                delay = backoff.next()
                log.error("planner failed; rebuilding from the log", error=describe(error), retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _lead(self) -> None:
        """Stand by for the lock; holding it, plan until the lock's session is lost."""
        assert self.lock is not None
        self.role = "standby"

        def waiting() -> None:
            self.standing_by.set()

        async with self.lock.hold(on_waiting=waiting) as lost:
            self.role = "leading"
            log.info("planner leads", planner=self.settings.name, session=self.lock.session_pid)
            run = asyncio.create_task(self._run(), name=f"planner-run:{self.settings.name}")
            watch = asyncio.create_task(lost.wait(), name=f"planner-lease:{self.settings.name}")
            try:
                await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
                if run.done():
                    run.result()  # re-raise why the run ended
                raise LockLost(f"planner {self.settings.name!r} lost its lock's session; it stopped planning")
            finally:
                self.ready.clear()
                self.role = "standby"
                await stop_task(run)
                await stop_task(watch)

    async def _run(self) -> None:
        checkpoint = await self.store.checkpoint(self.settings.name) or await adopted_checkpoint(
            self.store, self.registry, self.settings.name
        )
        await record_start(self.store, self.registry, self.settings.name, self.engine.version, checkpoint)
        known = await rejections(self.store, self.registry, self.settings.name)
        self.rejections = [known[p] for p in sorted(known)]
        self.state = await rebuild(
            self.store, self.registry, upto=checkpoint, batch=self.settings.read_batch, engine=self.engine,
            rejected=frozenset(known), on_rejected=self._record_rejection, partition=self.settings.partition,
            snapshot=SnapshotSource(self._snapshot_store, self.settings.name) if self._snapshot_store else None,
            report=self.rebuilt,
        )
        self._offer_snapshot(based_on=self.rebuilt.loaded_from)
        self._timers_changed.set()
        self.ready.set()
        log.info("planner following the log", checkpoint=checkpoint, timers=len(self.state.timers))
        queue: asyncio.Queue[RecordedEvent] = asyncio.Queue(self.settings.queue_size)
        feeder = asyncio.create_task(self._feed(queue, checkpoint), name=f"planner-tail:{self.settings.name}")
        try:
            while True:
                if feeder.done():
                    feeder.result()  # re-raise why the tail ended
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < self.settings.max_inputs_per_commit:
                    batch.append(queue.get_nowait())
                await self._handle(batch)
                self._offer_snapshot()
        finally:
            await stop_task(feeder)

    def _offer_snapshot(self, based_on: int | None = None) -> None:
        """Between committed batches (or right after a rebuild) the state is the fold of
        the inputs up to its position: the one moment a snapshot may copy it."""
        if self.snapshotter is None:
            return
        if based_on is not None:
            self.snapshotter.based_on(based_on)
        state = self.state
        self.snapshotter.offer(state.position, lambda: planner_snapshots.capture(state))

    async def _feed(self, queue: asyncio.Queue[RecordedEvent], after: int) -> None:
        async for recorded in self.store.tail(after=after, categories=INPUT_CATEGORIES, batch_size=self.settings.read_batch):
            await queue.put(recorded)

    async def _handle(self, batch: list[RecordedEvent]) -> None:
        pending: list[tuple[str, NewEvent]] = []
        converged: list[tuple[str, str, str, float]] = []
        last = 0
        for recorded in batch:
            item = to_input(self.registry, recorded)
            if item is None:
                self.stats.skipped += 1
            elif not self.settings.partition.takes(item.message, item.stream_id):
                self.stats.elsewhere += 1
            else:
                try:
                    _, outputs = self.engine.plan(self.state, item)
                except Exception as error:  # noqa: BLE001 - rejected: recorded, then refolded without it
                    # plan() logs nothing, so the input's correlation id is bound only
                    # where a line is about it (binding per input costs ~3.5 µs).
                    with structlog.contextvars.bound_contextvars(correlation_id=str(recorded.correlation_id or recorded.event_id)):
                        log.error("planning an input failed; rejecting it", position=recorded.position,
                                  type=recorded.type, error=describe(error))
                    if last:
                        await self._commit(pending, last, converged)  # the inputs decided before it
                    failed = InputRejected(recorded, item, error)
                    await self._record_rejection(failed, checkpoint=True)
                    raise failed from error
                if not self.settings.partition.whole:
                    outputs = self._own(outputs)
                pending += output_events(self.registry, item, outputs, recorded.correlation_id)
                if self.on_converged is not None:
                    converged += convergences(self.state, item, outputs)
            last = recorded.position
            self.stats.inputs += 1
            if len(pending) >= self.settings.max_outputs_per_commit:
                await self._commit(pending, last, converged)
                pending, converged = [], []
                last = 0
        if last:
            await self._commit(pending, last, converged)
        self._timers_changed.set()

    async def _record_rejection(self, failed: InputRejected, *, checkpoint: bool = False) -> None:
        """Record a rejected input — with the checkpoint at it when met while following the
        log (exactly once with the rest of the record), without when met in a rebuild
        (the checkpoint is past it already)."""
        message, event = rejection(
            self.registry, failed, version=self.engine.version, checkpoint_name=self.settings.name
        )
        if checkpoint:
            # Met while following: a refold without the input comes next. Not ready from
            # before the rejection shows until that refold is done, so nobody sees "ready,
            # with the rejection" while the state plan left half-mutated is still in place.
            self.ready.clear()
        mark = Checkpoint(self.settings.name, failed.recorded.position) if checkpoint else None
        try:
            await self.store.commit([AppendRequest(version_stream(self.settings.name), (event,))], checkpoint=mark)
        except (AlreadyProcessed, DuplicateEventId):
            pass  # another planner recorded it (the same event: its id derives from the input)
        self.stats.rejected += 1
        self.rejections.append(message)

    async def _commit(
        self, events: list[tuple[str, NewEvent]], position: int, converged: Sequence[tuple[str, str, str, float]] = ()
    ) -> None:
        mark = Checkpoint(self.settings.name, position)
        try:
            try:
                await self.store.commit(group(events), checkpoint=mark)
            except DuplicateEventId:
                # Some are recorded already, by a planner that decided these inputs before
                # (another partition layout, a leader that just lost its lock): the same
                # events, ids derived from inputs. One append per event, each recorded one
                # is a retry the store recognises and the rest are added; different content
                # under a known id still fails.
                log.info("some outputs are recorded already; recording the rest", position=position)
                await self.store.commit([AppendRequest(stream, (event,)) for stream, event in events], checkpoint=mark)
        except AlreadyProcessed:
            log.info("another planner already committed these inputs", position=position)
            return
        self.stats.commits += 1
        self.stats.outputs += len(events)
        if self.on_converged is not None:
            for found in converged:  # told once committed: a refold after a failure does not repeat it
                self.on_converged(*found)

    def _own(self, outputs: list[Output]) -> list[Output]:
        """The outputs about this partition's applications (a guard: the engine, fed only
        this partition's applications, emits no other)."""
        own = [out for out in outputs if self.settings.partition.owns_output(out.message)]
        if len(own) != len(outputs):
            log.error("planner dropped outputs about another partition's applications",
                      planner=self.settings.name, dropped=len(outputs) - len(own))
        return own

    # -- the timer shell ---------------------------------------------------------

    async def _fire_timers(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            await self.ready.wait()
            self._timers_changed.clear()
            self._fired = {t for t in self._fired if t in self.state.timers}
            due = self.state.next_timer(skip=self._fired)
            await self.clock.wait_until(due.fire_at if due else None, self._timers_changed)
            if due is None or self.clock.now() < due.fire_at or due.timer_id not in self.state.timers:
                continue
            if not self.ready.is_set():
                continue  # stood down (lost the lock) or refolding: the leader fires it
            try:
                await self._fire(due.timer_id, due.key, due.fire_at)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = backoff.next()
                log.warning("could not record a fired timer; retrying", timer=due.timer_id, error=describe(error))
                await asyncio.sleep(delay)

    async def _fire(self, timer_id: str, key: tuple[str, str, str], fire_at: object) -> None:
        event = events_pb2.TimerFired(timer_id=timer_id)
        event.fire_at.FromDatetime(fire_at)  # type: ignore[arg-type]
        event.fired_at.FromDatetime(self.clock.now())
        new = self.registry.encode(event, actor=PLANNER_ACTOR, event_id=uuid.uuid5(TIMER_NAMESPACE, timer_id))
        try:
            await self.store.append(timer_stream(*key), [new])
        except DuplicateEventId:
            pass  # fired before (with another firing time): once is enough
        self._fired.add(timer_id)
        self.stats.timers_fired += 1


async def adopted_checkpoint(store: EventStore, registry: EventRegistry, name: str) -> int:
    """Where a planner with no checkpoint yet starts: at the lowest checkpoint of the
    planners of other partition layouts that ran before (every input up to it was decided
    for every application), else 0. Inputs some of them decided after it are decided again:
    the outputs already recorded are recognised (`Planner._commit`)."""
    layout = set(_layout_of(name))
    others = [n for n in await planner_names(store, registry) if n not in layout]
    if not others:
        return 0
    adopted = min([await store.checkpoint(n) for n in others])
    if adopted:
        log.info("planner starts at the previous partition layout's checkpoint", planner=name, checkpoint=adopted,
                 previous=sorted(others))
    return adopted


def _layout_of(name: str) -> list[str]:
    """The checkpoint names of the layout `name` belongs to (`planner-0-of-2` -> both of 2)."""
    parts = name.rsplit("-", 3)
    if len(parts) == 4 and parts[2] == "of" and parts[1].isdigit() and parts[3].isdigit() and int(parts[3]) > 0:
        return partition_names(int(parts[3]))
    return [name]


async def planner_names(store: EventStore, registry: EventRegistry) -> list[str]:
    """The checkpoint names of every planner that ever started on this log (each records
    PlannerVersionStarted on `planner/<name>`), in order of first start."""
    names: dict[str, None] = {}
    async for events in read_batches(store, categories=("planner",)):
        for recorded in events:
            names.setdefault(recorded.stream_id.split("/", 1)[1], None)
    return list(names)
