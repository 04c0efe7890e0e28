"""Which planner version decided which inputs.

Replay equivalence is a promise per planner version: an upgrade that words a reason
differently, or decides differently, changes what a replay of old inputs produces. So
that `convoy replay --check` can still hold the planner to its word after an upgrade,
every planner records `PlannerVersionStarted` on `planner/<checkpoint name>` when it starts
with a version other than the last one recorded — with its checkpoint, the last input the
previous version decided. The replay check then replays everything with today's
planner and sets apart the differences on inputs an older version decided.

Run one planner version at a time: during a rolling upgrade two versions racing on one
checkpoint would each decide some inputs, and the record could not say which.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from eventstore.codec import EventRegistry
from eventstore.errors import WrongExpectedVersion
from eventstore.types import EventStore
from schemas.convoy.v1 import events_pb2
from services.planner.engine import PLANNER_ACTOR, PLANNER_VERSION, Input, Output, plan
from services.planner.model import PlannerState

log = structlog.get_logger("convoy.planner")

PlanFunction = Callable[[PlannerState, Input], tuple[PlannerState, list[Output]]]


@dataclass(frozen=True, slots=True)
class Engine:
    """A planner version and the `plan` that is it: what the runner and the replay check
    fold with (tests compose an older engine to stand for a previous release)."""

    version: int
    plan: PlanFunction


CURRENT: Final = Engine(PLANNER_VERSION, plan)

LEGACY_VERSION = 1
"""The version that decided inputs before any version was recorded."""


def version_stream(checkpoint_name: str) -> str:
    return f"planner/{checkpoint_name}"


@dataclass(frozen=True, slots=True)
class VersionHistory:
    """Planner versions over the log: `starts[i]` is the last input position decided by
    the version before `versions[i]`."""

    first: int = LEGACY_VERSION
    starts: tuple[int, ...] = ()
    versions: tuple[int, ...] = field(default=())

    def at(self, position: int) -> int:
        """The version that decided the input at `position`."""
        i = bisect.bisect_left(self.starts, position)  # segments whose start is < position
        return self.versions[i - 1] if i else self.first

    @property
    def latest(self) -> int:
        return self.versions[-1] if self.versions else 0


async def history(store: EventStore, registry: EventRegistry, checkpoint_name: str) -> tuple[VersionHistory, int]:
    """The recorded history and the version stream's version (for a conditional append)."""
    recorded = await store.read_stream(version_stream(checkpoint_name))
    starts: list[int] = []
    versions: list[int] = []
    first = 0
    for event in recorded:
        message = registry.decode(event).message
        if not isinstance(message, events_pb2.PlannerVersionStarted):
            continue
        if not versions:
            first = message.previous_version
        starts.append(message.after_position)
        versions.append(message.version)
    return VersionHistory(first or LEGACY_VERSION, tuple(starts), tuple(versions)), len(recorded)


async def rejections(
    store: EventStore, registry: EventRegistry, checkpoint_name: str
) -> dict[int, events_pb2.PlannerInputRejected]:
    """The inputs recorded as rejected (`plan` raised on them), by position."""
    found: dict[int, events_pb2.PlannerInputRejected] = {}
    for event in await store.read_stream(version_stream(checkpoint_name)):
        message = registry.decode(event).message
        if isinstance(message, events_pb2.PlannerInputRejected):
            found[message.position] = message
    return found


async def record_start(
    store: EventStore, registry: EventRegistry, checkpoint_name: str, version: int, checkpoint: int
) -> bool:
    """Record that `version` decides the inputs after `checkpoint`, unless it is already
    the last recorded version. True when something was recorded."""
    while True:
        known, stream_version = await history(store, registry, checkpoint_name)
        if known.latest == version:
            return False
        previous = known.latest or (LEGACY_VERSION if checkpoint else 0)
        started = events_pb2.PlannerVersionStarted(version=version, previous_version=previous, after_position=checkpoint)
        try:
            await store.append(
                version_stream(checkpoint_name),
                [registry.encode(started, actor=PLANNER_ACTOR)],
                expected_version=stream_version,
            )
        except WrongExpectedVersion:
            continue  # another planner recorded first: look again
        log.info("planner version recorded", version=version, previous=previous, after_position=checkpoint)
        return True
