"""The planner's state: one convergence per (service, channel), one target per runtime
binding of it, the timers it is waiting for.

`plan` mutates and returns this state (it is the accumulator of a fold over the log):
copying fifty thousand targets per event would cost more than the planning. Callers
that need the state before an event — the dry run — take a `copy.deepcopy` first.
Everything here is plain data; the rules live in engine.py, gates.py and checks.py.
"""

from __future__ import annotations

import heapq
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from schemas.convoy.v1 import convergence_pb2
from services.planner.catalog import Catalog
from services.planner.tickets import GateProgress

S = convergence_pb2
PENDING: Final = S.INSTANCE_STATUS_PENDING
WAITING_PRECONDITIONS: Final = S.INSTANCE_STATUS_WAITING_PRECONDITIONS
WAITING_APPROVAL: Final = S.INSTANCE_STATUS_WAITING_APPROVAL
DEPLOYING: Final = S.INSTANCE_STATUS_DEPLOYING
VERIFYING: Final = S.INSTANCE_STATUS_VERIFYING
CONVERGED: Final = S.INSTANCE_STATUS_CONVERGED
FAILED: Final = S.INSTANCE_STATUS_FAILED
ROLLING_BACK: Final = S.INSTANCE_STATUS_ROLLING_BACK
ROLLED_BACK: Final = S.INSTANCE_STATUS_ROLLED_BACK
PAUSED: Final = S.INSTANCE_STATUS_PAUSED
REPLACED: Final = S.INSTANCE_STATUS_REPLACED

TERMINAL: Final = frozenset({CONVERGED, FAILED, ROLLED_BACK, REPLACED})
"""A convergence in one of these has nothing left to do until a new release or rollback."""

_BEFORE_PAUSE: Final = frozenset({PENDING, WAITING_PRECONDITIONS, WAITING_APPROVAL, DEPLOYING, VERIFYING, ROLLING_BACK})
_INTERRUPT: Final = frozenset({PAUSED, REPLACED, ROLLING_BACK, FAILED})
TRANSITIONS: Final[frozenset[tuple[int, int]]] = frozenset(
    {(PENDING, s) for s in (WAITING_PRECONDITIONS, WAITING_APPROVAL, DEPLOYING, CONVERGED, *_INTERRUPT)}
    | {(WAITING_PRECONDITIONS, s) for s in (WAITING_PRECONDITIONS, WAITING_APPROVAL, DEPLOYING, CONVERGED, *_INTERRUPT)}
    | {(WAITING_APPROVAL, s) for s in (WAITING_PRECONDITIONS, WAITING_APPROVAL, DEPLOYING, CONVERGED, *_INTERRUPT)}
    | {(DEPLOYING, s) for s in (DEPLOYING, VERIFYING, CONVERGED, *_INTERRUPT)}
    | {(VERIFYING, s) for s in (VERIFYING, CONVERGED, *_INTERRUPT)}
    | {(ROLLING_BACK, s) for s in (ROLLED_BACK, *_INTERRUPT)}
    | {(PAUSED, s) for s in (*_BEFORE_PAUSE, REPLACED, ROLLING_BACK)}
    | {(CONVERGED, ROLLING_BACK), (FAILED, ROLLING_BACK), (ROLLED_BACK, ROLLING_BACK)}
)
"""Every (old, new) status change a channel's convergence may make (a status to itself is
a change of reason). Terminal statuses leave only by a rollback; a new release starts a
new convergence at PENDING. The planner's property tests check every change against it."""

ConvergenceKey = tuple[str, str, str]
"""(application, service, channel)."""
TargetKey = tuple[str, str]
"""(runtime, namespace)."""
WorkloadKey = tuple[str, str, str, str]
"""(runtime, namespace, application, service): one intent stream, one generation counter."""


def status_name(status: int) -> str:
    return S.InstanceStatus.Name(status).removeprefix("INSTANCE_STATUS_")


@dataclass(slots=True)
class TargetState:
    runtime: str
    namespace: str
    status: int = PENDING
    generation: int = 0
    """Generation of the last intent issued here (0 = none)."""
    intent_id: str = ""
    release_id: str = ""
    """Release of the last intent issued here."""
    rollback: bool = False
    issued_at: datetime | None = None
    received_at: datetime | None = None
    """When the log recorded its agent taking the last intent (RECEIVED or APPLIED)."""
    overdue: bool = False
    """No verdict past the progress deadline (named in the convergence's reason)."""
    healthy: bool = False
    """The agent reported the last intent's workload healthy (and nothing worse since)."""
    observed_kind: int = 0
    observed_reason: str = ""
    observed_message: str = ""
    observed_at: datetime | None = None

    @property
    def key(self) -> TargetKey:
        return (self.runtime, self.namespace)


@dataclass(slots=True)
class CheckState:
    """One protection attachment at one lifecycle stage of one convergence."""

    check_id: str
    protection: str
    stage: int
    fail_on_error: bool
    """FAILURE_BEHAVIOR_FAIL: a failed check fails the convergence; otherwise it waits."""
    delay: float
    duration: float
    agent_health: bool
    """Judged from the agents' health reports rather than a requested check."""
    started_at: datetime
    results: dict[TargetKey, tuple[bool, str]] = field(default_factory=dict)
    passing_since: datetime | None = None
    done: bool = False
    gate: GateProgress | None = None
    """Set for an external approval (a change-ticket gate the gatekeeper polls)."""


@dataclass(slots=True)
class Convergence:
    application: str
    service: str
    channel: str
    release_id: str = ""
    version: str = ""
    status: int = 0
    reason: str = ""
    paused_from: int = 0
    rollback_to: str = ""
    """While ROLLING_BACK / after ROLLED_BACK: the release being restored."""
    converged_release_id: str = ""
    """What this channel last converged to (what it runs when nothing is in flight)."""
    history: list[str] = field(default_factory=list)
    """Converged releases, oldest first (manual rollback goes to the one before)."""
    targets: dict[TargetKey, TargetState] = field(default_factory=dict)
    stage: int = 0
    """The lifecycle stage whose protections `checks` holds (0 = none started)."""
    checks: dict[str, CheckState] = field(default_factory=dict)
    checks_requested: bool = False
    """Agents were asked to run checks that have not been withdrawn yet."""
    timers: dict[str, str] = field(default_factory=dict)
    """Active timer id per purpose ("window", "soak", "deadline", "check_delay")."""

    @property
    def key(self) -> ConvergenceKey:
        return (self.application, self.service, self.channel)


@dataclass(frozen=True, slots=True)
class PendingTimer:
    timer_id: str
    fire_at: datetime
    key: ConvergenceKey
    purpose: str


@dataclass(slots=True)
class PlannerState:
    catalog: Catalog = field(default_factory=Catalog)
    convergences: dict[ConvergenceKey, Convergence] = field(default_factory=dict)
    generations: dict[WorkloadKey, int] = field(default_factory=dict)
    timers: dict[str, PendingTimer] = field(default_factory=dict)
    """Scheduled and not yet fired or cancelled: what the timer shell must fire."""
    timer_seqs: dict[str, int] = field(default_factory=dict)
    """Timers scheduled so far per application (timer ids count per application, so a
    planner partitioned by application numbers them as one planner does)."""
    position: int = 0
    """Global position of the last input folded."""

    by_service: dict[tuple[str, str], dict[str, Convergence]] = field(default_factory=dict)
    """The same convergences indexed by (application, service), channels in creation
    order: every observation steps its service's channels, and scanning all of a
    fleet's convergences for them cost more than the planning (bench/planner.py)."""
    timer_queue: list[tuple[datetime, str]] = field(default_factory=list, compare=False, repr=False)
    """(fire_at, timer_id) of every pending timer as a heap, plus entries of timers since
    fired or cancelled (dropped when they reach the top): the timer shell asks for the
    next due timer after every batch, and finding it by scanning `timers` cost O(timers)
    per batch — tens of thousands in a fleet release (bench/planner.py). Derived from
    `timers`, so not part of the state's equality; rebuilt when it is missing entries."""

    def add_timer(self, timer: PendingTimer) -> None:
        self.timers[timer.timer_id] = timer
        queue = self.timer_queue
        if len(queue) > 2 * len(self.timers) + 1024:  # mostly fired or cancelled: start afresh
            queue[:] = [(t.fire_at, t.timer_id) for t in self.timers.values()]
            heapq.heapify(queue)
        else:
            heapq.heappush(queue, (timer.fire_at, timer.timer_id))

    def next_timer(self, skip: Container[str] = ()) -> PendingTimer | None:
        """The pending timer due first (earliest `fire_at`, then timer id), leaving out
        the ids in `skip` (fired, their TimerFired not folded yet); None if none is left."""
        queue = self.timer_queue
        if len(queue) < len(self.timers):  # a state made without the queue (a copy, a load)
            queue[:] = [(t.fire_at, t.timer_id) for t in self.timers.values()]
            heapq.heapify(queue)
        skipped = []
        found = None
        while queue:
            fire_at, timer_id = queue[0]
            timer = self.timers.get(timer_id)
            if timer is None or timer.fire_at != fire_at:
                heapq.heappop(queue)  # fired or cancelled since
            elif timer_id in skip:
                skipped.append(heapq.heappop(queue))
            else:
                found = timer
                break
        for entry in skipped:
            heapq.heappush(queue, entry)
        return found

    def convergences_of(self, app: str, service: str) -> list[Convergence]:
        return list(self.by_service.get((app, service), {}).values())

    def add_convergence(self, conv: Convergence) -> Convergence:
        self.convergences[conv.key] = conv
        self.by_service.setdefault((conv.application, conv.service), {})[conv.channel] = conv
        return conv

    def drop_convergence(self, conv: Convergence) -> None:
        del self.convergences[conv.key]
        channels = self.by_service.get((conv.application, conv.service), {})
        channels.pop(conv.channel, None)
        if not channels:
            self.by_service.pop((conv.application, conv.service), None)
