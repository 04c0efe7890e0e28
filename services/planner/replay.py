"""Replay equivalence: rebuild the planner from position 0 and compare with the record.

The planner's promise (DESIGN.md) is that it is a pure function of the log. This check
holds it to that: it folds every input again, derives the events each one must produce
(with the same deterministic ids the runner uses), and compares them one by one with the
events the planner recorded — same stream, type and bytes — reporting each difference
with the input that caused it. It then compares the replayed state with the state the
record implies: each convergence's and target's last recorded status, and each
workload's last intent generation. `convoy replay --check` prints the report.

Differences on inputs an older planner version decided (services.planner.versions) are
reported apart, as what the upgrade changed: they do not fail the check.

Inputs the record says were rejected (PlannerInputRejected: `plan` raised) are planned on
a copy of the state, which must raise again, and then skipped, as the runner skips them;
an input `plan` raises on that the record did not reject is a difference, and ends the
replay there (the state it left is not to be trusted).

A log written by N partitioned planners (services.planner.partitions) is checked the same
way, by one unpartitioned replay: the engine decides each application alone and output
ids do not depend on the partitioning, so one planner must produce exactly what the N
recorded. The replay goes up to the lowest of their checkpoints (`names`: the current
layout) and reads the version histories and rejections of every planner that wrote the log
(an earlier layout's too) together.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventstore.codec import EventRegistry
from eventstore.types import EventStore, RecordedEvent, read_batches
from schemas.convoy.v1 import events_pb2
from services.planner.engine import INPUT_CATEGORIES, PLANNER_ACTOR
from services.planner.model import PlannerState, status_name
from services.planner.runner import output_events, planner_names, to_input
from services.planner.versions import CURRENT, Engine, VersionHistory, history, rejections

OUTPUT_CATEGORIES = ("intent", "convergence", "gate")


@dataclass(frozen=True, slots=True)
class Difference:
    position: int
    """The input's position (0 for a recorded output no input explains)."""
    input_type: str
    what: str


@dataclass(slots=True)
class ReplayReport:
    checkpoint: int
    inputs: int = 0
    outputs: int = 0
    differences: list[Difference] = field(default_factory=list)
    upgraded: list[Difference] = field(default_factory=list)
    """Differences on inputs decided by an older planner version: what an upgrade changed."""
    version: int = CURRENT.version
    versions: VersionHistory = field(default_factory=VersionHistory)
    state: PlannerState = field(default_factory=PlannerState)

    @property
    def ok(self) -> bool:
        return not self.differences


async def _read(store: EventStore, categories: tuple[str, ...], upto: int | None) -> list[RecordedEvent]:
    return [event async for batch in read_batches(store, upto=upto, categories=categories) for event in batch]


async def replay_check(
    store: EventStore,
    registry: EventRegistry,
    *,
    checkpoint_name: str = "planner",
    names: Sequence[str] | None = None,
    max_differences: int = 200,
    engine: Engine = CURRENT,
) -> ReplayReport:
    """`names`: the checkpoints of the planners that wrote the log (a partitioned
    layout's, `partitions.partition_names(N)`); default `checkpoint_name` alone."""
    names = list(names or [checkpoint_name])
    checkpoint = min([await store.checkpoint(name) for name in names])
    writers = list(dict.fromkeys([*names, *await planner_names(store, registry)]))
    versions = merged([(await history(store, registry, name))[0] for name in writers])
    report = ReplayReport(checkpoint=checkpoint, version=engine.version, versions=versions)
    rejected = {p: r for name in writers for p, r in (await rejections(store, registry, name)).items()}
    recorded: dict[uuid.UUID, RecordedEvent] = {}
    for event in await _read(store, OUTPUT_CATEGORIES, None):
        if event.actor == PLANNER_ACTOR:
            recorded[event.event_id] = event
    explained: set[uuid.UUID] = set()

    def differ(position: int, input_type: str, what: str) -> None:
        found = report.differences if position == 0 or versions.at(position) == engine.version else report.upgraded
        if len(found) < max_differences:
            found.append(Difference(position, input_type, what))

    state = PlannerState()
    inputs: dict[uuid.UUID, int] = {}
    for event in await _read(store, INPUT_CATEGORIES, checkpoint):
        inputs[event.event_id] = event.position
        item = to_input(registry, event)
        if item is None:
            continue
        report.inputs += 1
        if event.position in rejected:
            try:
                engine.plan(copy.deepcopy(state), item)
            except Exception:  # noqa: BLE001 - rejected again, as recorded
                pass
            else:
                differ(event.position, event.type, "the record rejected this input, but the replay plans it")
            continue
        try:
            _, outputs = engine.plan(state, item)
        except Exception as error:  # noqa: BLE001 - a difference; the state is not to be trusted after it
            differ(event.position, event.type, f"plan raises on this input ({type(error).__name__}: {error}) and the "
                                               "record did not reject it; the replay stops here")
            report.state = state
            return report
        decided_by = versions.at(event.position)
        for stream_id, expected in output_events(registry, item, outputs, event.correlation_id, version=decided_by):
            report.outputs += 1
            explained.add(expected.event_id)
            actual = recorded.get(expected.event_id)
            short = expected.type.rsplit(".", 1)[-1]
            if actual is None:
                differ(event.position, event.type, f"missing {short} on {stream_id} (expected event {expected.event_id})")
            elif (actual.stream_id, actual.type, actual.data) != (stream_id, expected.type, expected.data):
                differ(
                    event.position,
                    event.type,
                    f"event {expected.event_id} at position {actual.position} differs: recorded "
                    f"{actual.type.rsplit('.', 1)[-1]} on {actual.stream_id}, replay gives {short} on {stream_id}"
                    + (" (same type and stream, different content)" if actual.type == expected.type else ""),
                )
    for event_id, actual in recorded.items():
        # Outputs caused by inputs after the checkpoint belong to a planner still running.
        if event_id not in explained and (actual.causation_id is None or actual.causation_id in inputs):
            cause = inputs.get(actual.causation_id, 0) if actual.causation_id else 0
            differ(cause, "", f"recorded {actual.type.rsplit('.', 1)[-1]} at position {actual.position} (caused by "
                          f"{actual.causation_id}) is not produced by the replay")
    report.state = state
    _compare_state(registry, state, [recorded[i] for i in explained if i in recorded], inputs, differ)
    return report


def merged(histories: Sequence[VersionHistory]) -> VersionHistory:
    """One history from those of several planners (partitions) over the same log."""
    if len(histories) == 1:
        return histories[0]
    starts: list[tuple[int, int]] = sorted({(s, v) for h in histories for s, v in zip(h.starts, h.versions, strict=True)})
    kept: list[tuple[int, int]] = []
    for start, version in starts:
        if not kept or kept[-1][1] != version:
            kept.append((start, version))
    first = min((h.first for h in histories), default=VersionHistory().first)
    return VersionHistory(first, tuple(s for s, _ in kept), tuple(v for _, v in kept))


def _compare_state(
    registry: EventRegistry,
    state: PlannerState,
    outputs: list[RecordedEvent],
    inputs: dict[uuid.UUID, int],
    report: Callable[[int, str, str], None],
) -> None:
    """Last recorded status and generation against the replayed state; a difference is
    reported at the position of the input that caused the recorded value."""
    statuses: dict[tuple[str, ...], tuple[int, int]] = {}
    generations: dict[tuple[str, str, str, str], tuple[int, int]] = {}
    for event in sorted(outputs, key=lambda e: e.position):
        message = registry.decode(event).message
        cause = inputs.get(event.causation_id, 0) if event.causation_id else 0
        if isinstance(message, events_pb2.InstanceStatusChanged):
            key = (message.application, message.service, message.channel, message.target.runtime, message.target.namespace)
            statuses[key] = (message.new_status, cause)
        elif isinstance(message, events_pb2.IntentIssued):
            spec = message.spec
            generations[(message.target.runtime, message.target.namespace, spec.application, spec.service)] = (
                message.generation, cause,
            )
    for key, (status, cause) in statuses.items():
        conv = state.convergences.get(key[:3])
        if conv is None:
            continue  # dropped since (application or service deleted)
        if key[3]:
            target = conv.targets.get((key[3], key[4]))
            actual = target.status if target is not None else None
        else:
            actual = conv.status
        if actual is not None and actual != status:
            report(cause, "", f"state of {'/'.join(k for k in key if k)}: record says {status_name(status)}, replay has {status_name(actual)}")
    for key, (generation, cause) in generations.items():
        if state.generations.get(key, 0) != generation:
            report(cause, "", f"generation of {'/'.join(key)}: record says {generation}, replay has {state.generations.get(key, 0)}")
