"""The API's read model: the catalog `State` folded from the log, kept current by tailing.

Commands are decided against this state and queries read it, so it must be exactly the
fold of the log up to a known position — `position` — with the version of every stream
it has seen (the expected versions the next command appends with). It lives in memory
and keeps no tracking checkpoint in PostgreSQL. A start folds the whole log — or, given a
snapshot store, loads the newest snapshot this build may use (services.api.snapshots:
the catalog, the stream versions and the convergence view after position P) and folds
only (P, head]. Snapshots are a cache checked against their fold version and checksum
(eventstore.snapshots); one that does not match is logged and ignored, never trusted,
and the fold starts from 0. New ones are taken every N events by a background task.

One supervised task tails the store (woken by NOTIFY) and folds events in global order;
`wait_for(position)` lets a caller wait — with a deadline — until a write is visible
(read-your-writes) and `wait_beyond` lets a Watch stream sleep until something new
commits. Events of other categories (observations, intents, the planner's) that this build
cannot read are logged once per type and skipped: commands never depend on them.

An event of the catalog's own streams that cannot be folded — undecodable, a type a newer
build wrote, or one `evolve` raises on — is never skipped: every later command would be
decided on a state that lacks it. The projection stops at the position before it
(`broken`): writes are refused with a retryable error that names the event, readiness
says so, reads keep answering as of that position, and `fold_failures` counts it. A
restart with a build that folds it goes on from there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import structlog
from google.protobuf.message import Message

from eventstore import snapshots
from eventstore.codec import EventRegistry
from eventstore.errors import Unavailable, UnknownEventType
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import EventStore, RecordedEvent
from services.api import snapshots as api_snapshots
from services.api.convergence import ConvergenceView
from services.api.domain import State, evolve

log = structlog.get_logger("convoy.api.projection")


Observer = Callable[[RecordedEvent, Message], None]


CATALOG_CATEGORIES: Final = frozenset({"app", "service", "runtime", "protection", "resource", "release", "token", "secret", "keyring"})
"""The stream categories of the catalog's own events (services.api.domain.streams)."""


class FoldFailed(Unavailable):
    """The read model cannot fold a catalog event; it stays at the position before it."""

    def __init__(self, recorded: RecordedEvent, error: BaseException) -> None:
        self.position = recorded.position
        self.event_type = recorded.type
        super().__init__(
            f"the API's read model cannot fold the event at position {recorded.position} ({recorded.type} on "
            f"{recorded.stream_id}: {type(error).__name__}: {error}); commands are refused until it can (usually: "
            f"run a Convoy version that knows this event); reads answer as of position {recorded.position - 1}"
        )


def fold_recorded(
    registry: EventRegistry, state: State, recorded: RecordedEvent, observers: Sequence[Observer], skipped: set[str]
) -> State:
    """Fold one recorded event into the catalog and hand it to `observers` (other read
    models folded in the same order). A catalog event that cannot be folded raises
    FoldFailed; any other event this build cannot read is logged (once per type, in
    `skipped`) and skipped."""
    catalog = recorded.category in CATALOG_CATEGORIES
    try:
        message = registry.decode(recorded).message
        state = evolve(state, message)
        for observe in observers:
            observe(recorded, message)
    except UnknownEventType as error:
        if catalog:
            raise FoldFailed(recorded, error) from error
        if recorded.type not in skipped:
            skipped.add(recorded.type)
            log.info("projection skips events of a type", type=recorded.type, why="not a catalog event")
    except Exception as error:  # noqa: BLE001 - decided below: stop at a catalog event, else skip
        if catalog:
            raise FoldFailed(recorded, error) from error
        log.error("projection skipped an event it cannot read", position=recorded.position, error=describe(error))
    return state


class Projection:
    """The catalog as of `position`. Create, `await start()`, read, `await stop()`."""

    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        start_timeout: float = 120.0,
        observers: Sequence[Observer] = (),
        convergence: ConvergenceView | None = None,
        snapshot_store: snapshots.SnapshotStore | None = None,
        snapshot_policy: snapshots.SnapshotPolicy | None = None,
        snapshot_name: str = "api",
    ) -> None:
        """`convergence`: the convergence view folded beside the catalog (snapshotted
        with it). `snapshot_store`: where snapshots are loaded from and taken to (None:
        always fold from 0). Other `observers` would miss what a snapshot holds, so with
        any, no snapshot is loaded (they are still taken)."""
        self._store = store
        self._convergence = convergence
        self._observers = (*((convergence.fold,) if convergence is not None else ()), *observers)
        self._foreign_observers = bool(observers)
        self._snapshot_store = snapshot_store
        self._snapshot_name = snapshot_name
        self._fold_version = api_snapshots.fold_version(registry)
        self.snapshotter = (
            snapshots.Snapshotter(
                store=snapshot_store, name=snapshot_name, kind=api_snapshots.KIND, fold_version=self._fold_version,
                policy=snapshot_policy or snapshots.SnapshotPolicy(),
            )
            if snapshot_store is not None and convergence is not None
            else None
        )
        self.loaded_from = 0
        """The snapshot position this start folded from (0: the whole log)."""
        self.folded = 0
        """Events folded by this process (the tail after a snapshot, or the whole log)."""
        self._registry = registry
        self._start_timeout = start_timeout
        self._state = State()
        self._position = 0
        self._versions: dict[str, int] = {}
        self._advanced = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._skipped_types: set[str] = set()
        self.broken: FoldFailed | None = None
        """Set when a catalog event could not be folded: the fold stopped before it."""
        self.fold_failures = 0

    # -- reading -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def position(self) -> int:
        return self._position

    @property
    def versions(self) -> Mapping[str, int]:
        """Stream versions as of `position` (absent = 0, no events)."""
        return self._versions

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closed

    async def wait_for(self, position: int, *, timeout: float) -> None:
        """Return once `position` is folded; raise `Unavailable` after `timeout`."""
        deadline = time.monotonic() + timeout
        while self._position < position:
            if self._closed:
                raise Unavailable("the API is shutting down")
            if self.broken is not None:
                raise self.broken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"the read model is at position {self._position} and did not reach {position} within "
                    f"{timeout:g}s; retry shortly"
                )
            await self._wait_advance(remaining)

    async def wait_beyond(self, position: int, *, timeout: float | None = None) -> bool:
        """Wait until something after `position` is folded, or until `wake()`, the
        timeout or stop; answer whether the fold is past `position` now."""
        if self._position <= position and not self._closed:
            await self._wait_advance(timeout)
        return self._position > position

    async def _wait_advance(self, timeout: float | None) -> None:
        event = self._advanced
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    # -- running -------------------------------------------------------------------

    async def start(self) -> None:
        """Start tailing and return once the fold reached the head the log had now."""
        head = await self._store.head()
        await self._load_snapshot()
        if self.snapshotter is not None:
            self.snapshotter.based_on(self._position)
            await self.snapshotter.start()
        self._task = asyncio.create_task(self._run(), name="convoy.api.projection")
        try:
            await self.wait_for(head, timeout=self._start_timeout)
        except FoldFailed:
            return  # serve reads as of the event before it; writes and readiness say why
        log.info("projection caught up", position=self._position, from_snapshot=self.loaded_from, folded=self.folded)

    async def _load_snapshot(self) -> None:
        if self._snapshot_store is None or self._convergence is None:
            return
        if self._foreign_observers:
            log.info("projection folds from 0: observers beside the convergence view would miss a snapshot's events")
            return
        found = await snapshots.load(
            self._snapshot_store, name=self._snapshot_name, kind=api_snapshots.KIND, fold_version=self._fold_version,
            upto=None, decode=api_snapshots.restore,
        )
        if found is None:
            return
        position, restored = found
        assert isinstance(restored, api_snapshots.Restored)
        self._state, self._versions = restored.state, restored.versions
        self._convergence.restore(restored.channels, restored.releases)
        self._position = self.loaded_from = position
        log.info("projection loaded a snapshot", position=position)

    def _capture(self) -> Callable[[], Message]:
        """The catalog is immutable: keep it and copy the rest (the versions, the
        convergence view's channels); the message is built off the fold."""
        assert self._convergence is not None
        state, versions, convergence = self._state, dict(self._versions), self._convergence.export()
        return lambda: api_snapshots.build(state, versions, convergence)

    async def stop(self) -> None:
        self._closed = True
        self._stopped.set()
        self._signal()
        await stop_task(self._task)
        self._task = None
        if self.snapshotter is not None:
            await self.snapshotter.stop()

    async def _run(self) -> None:
        """Tail forever; restart the tail (from where the fold is) if it fails."""
        backoff = Backoff(base=0.1, cap=5.0)
        while not self._closed:
            tail = self._store.tail(after=self._position)
            try:
                async for recorded in tail:
                    self._apply(recorded)
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except FoldFailed as failed:
                self.broken = failed
                self.fold_failures += 1
                log.error("the read model stopped: a catalog event cannot be folded", position=failed.position,
                          type=failed.event_type, error=str(failed))
                self._signal()
                await tail.aclose()  # type: ignore[attr-defined]
                await self._stopped.wait()  # reads go on as of the position before it; stop() ends this
                return
            except Exception as error:  # keep the read model alive; the tail restarts
                log.error("projection tail failed; restarting", error=describe(error))
                await asyncio.sleep(backoff.next())
            finally:
                await tail.aclose()  # type: ignore[attr-defined]

    def _apply(self, recorded: RecordedEvent) -> None:
        if recorded.position <= self._position:
            return  # a restarted tail re-delivering what is already folded
        self._state = fold_recorded(self._registry, self._state, recorded, self._observers, self._skipped_types)
        self._versions[recorded.stream_id] = recorded.version
        self._position = recorded.position
        self.folded += 1
        if self.snapshotter is not None and self.broken is None:
            self.snapshotter.offer(self._position, self._capture)
        self._signal()

    def wake(self) -> None:
        """Wake every waiter (they re-check their condition), e.g. to end streams."""
        self._signal()

    def _signal(self) -> None:
        event, self._advanced = self._advanced, asyncio.Event()
        event.set()
