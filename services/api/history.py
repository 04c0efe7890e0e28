"""Reads "as of" a past point of the log: where every release stood, and why, back then.

Audits ask what the record said at 14:05 yesterday — before the incident, before the
rollback — not only what it says now: where each release was (GetConvergence, Why) and
what was declared (every catalog query takes `as_of` too). The live read models fold the log forward and
forget; an as-of read folds the same events again, from position 0 up to the asked
position, into fresh read models (the catalog `State`, the convergence view, stream
versions), with the same fold the live projection uses, so the past answer is exactly
what the live read model answered when it stood there. A time is turned into the last
position recorded at or before it.

A fold costs one pass over the log up to that point, so the last few are kept (an
auditor pages through one moment; `why` and `status` ask for the same one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from eventstore.codec import EventRegistry
from eventstore.types import EventStore, read_batches
from schemas.convoy.v1 import api_pb2
from services.api.convergence import ConvergenceView
from services.api.domain import State
from services.api.errors import invalid
from services.api.projection import fold_recorded

READ_BATCH = 5000
KEPT = 4


@dataclass(slots=True)
class Snapshot:
    """The read models as they stood at `position` (recorded at `at`)."""

    position: int
    at: datetime | None
    state: State = field(default_factory=State)
    view: ConvergenceView = field(default_factory=ConvergenceView)
    versions: Mapping[str, int] = field(default_factory=dict)


class History:
    def __init__(self, *, store: EventStore, registry: EventRegistry, kept: int = KEPT) -> None:
        self._store = store
        self._registry = registry
        self._kept = kept
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self._skipped: set[str] = set()

    async def position(self, as_of: api_pb2.AsOf, field_name: str = "as_of") -> tuple[int, datetime | None]:
        """The position `as_of` names, and the time it stands for (the asked time, or
        None for a position: then the time of the event there)."""
        has_time = as_of.HasField("time")
        if has_time and as_of.position:
            raise invalid(field_name, "set either position or time, not both")
        if has_time:
            try:
                when = as_of.time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                raise invalid(f"{field_name}.time", "is not a valid time") from None
            return await self._store.position_at(when), when
        if as_of.position <= 0:
            raise invalid(f"{field_name}.position", "must be a position of the log (1 or more), or set time instead")
        head = await self._store.head()
        if as_of.position > head:
            raise invalid(f"{field_name}.position", f"{as_of.position} is beyond the last recorded position ({head})")
        return as_of.position, None

    async def at(self, as_of: api_pb2.AsOf, field_name: str = "as_of") -> Snapshot:
        position, when = await self.position(as_of, field_name)
        snapshot = self._snapshots.get(position)
        if snapshot is None:
            snapshot = await self._fold(position)
            self._snapshots[position] = snapshot
            while len(self._snapshots) > self._kept:
                self._snapshots.popitem(last=False)
        else:
            self._snapshots.move_to_end(position)
        if when is not None:
            return Snapshot(position, when, snapshot.state, snapshot.view, snapshot.versions)
        return snapshot

    async def _fold(self, position: int) -> Snapshot:
        snapshot = Snapshot(position, None)
        versions: dict[str, int] = {}
        observers = [snapshot.view.fold]
        async for batch in read_batches(self._store, upto=position, batch=READ_BATCH):
            for recorded in batch:
                snapshot.state = fold_recorded(self._registry, snapshot.state, recorded, observers, self._skipped)
                versions[recorded.stream_id] = recorded.version
                snapshot.at = recorded.recorded_at
        snapshot.versions = versions
        return snapshot
