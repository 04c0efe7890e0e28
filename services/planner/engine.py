"""`plan(state, event) -> (state, events)`: the convergence engine.

One state machine per (service, channel) — the convergence — and one per runtime binding
of it — the target — with the lifecycle of DESIGN.md: PENDING → WAITING_PRECONDITIONS →
WAITING_APPROVAL → DEPLOYING → VERIFYING → CONVERGED, and FAILED, ROLLING_BACK,
ROLLED_BACK, PAUSED, REPLACED. Every status change is an InstanceStatusChanged event
with the old status, the new one and a reason a person can act on.

Pure and deterministic: no I/O, no clock, no randomness. "Now" is the recorded time of
the input (the firing time for a TimerFired); ids are derived from the state (intent
ids from target and generation, timer ids from a counter), so replaying the same inputs
from position 0 reproduces every output exactly — `services.planner.replay` checks it.
The planner ignores its own outputs when it meets them in the log: it already applied
them to its state when it emitted them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple
from uuid import UUID

from google.protobuf.message import Message

from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
from services.planner import checks, gates
from services.planner.catalog import ReleaseRecord, fold_catalog
from services.planner.model import (
    CONVERGED,
    DEPLOYING,
    FAILED,
    PAUSED,
    PENDING,
    REPLACED,
    ROLLED_BACK,
    ROLLING_BACK,
    TERMINAL,
    VERIFYING,
    WAITING_APPROVAL,
    WAITING_PRECONDITIONS,
    Convergence,
    PendingTimer,
    PlannerState,
    TargetState,
)
from services.planner.render import RenderError, default_namespace, render, spec_hash

O = convergence_pb2
DEFAULT_PROGRESS_DEADLINE = timedelta(minutes=10)
"""How long a target may take to become healthy when the service sets no deadline
(Kubernetes' own default progressDeadlineSeconds)."""

DEADLINE_GRACE = timedelta(seconds=15)

PLANNER_ACTOR = "planner"

PLANNER_VERSION: Final = 4
"""The version of the decisions `plan` makes. Bump it with any change that makes `plan`
decide differently, or word a reason differently, for the same inputs: the runner records
the version it starts with, so `convoy replay --check` can tell what an upgrade changed
from a real difference.

2: a target with no verdict past its progress deadline waits, named in the reason, instead
of failing; its deadline runs from its agent's RECEIVED. Approvals count once per
principal as services.principals compares them (`bob`, `bob ` and `bоb` are one), and
never the deployer's own when the approval excludes the deployer.

3: the planner reads resources; a rendered spec carries the attributes of the service's
resources as environment (secret ones as references), and a release whose resources
cannot be rendered fails its channel with the reason instead of deploying.

4: timer ids are counted per application (`tmr/<app>/<n>/<purpose>`), not across the
instance, so a planner partitioned by application (services.planner.partitions) schedules
exactly the timers one planner would; a TimerFired of a version-3 timer (`tmr-<n>-<purpose>`)
still finds its timer (by its stream and firing time), so a log written before the upgrade
folds the same."""

INPUT_CATEGORIES = ("app", "service", "runtime", "protection", "resource", "release", "observation", "timer", "gate")
"""Stream categories the planner reads: declarations (resources included: render reads
their attributes), human decisions, agents' observations, fired timers and the gatekeeper's
polls — not its own outputs, tokens or secrets."""


class Input(NamedTuple):
    """A recorded event as the planner sees it. (Input and Output are named tuples, not
    frozen dataclasses: one of each per event, and a frozen dataclass's `__init__` costs
    a `object.__setattr__` per field.)"""

    message: Message
    position: int
    event_id: UUID
    actor: str
    recorded_at: datetime
    stream_id: str = ""
    """Where it was recorded (only a version-3 TimerFired needs it: see `_legacy_timer`)."""


class Output(NamedTuple):
    stream_id: str
    message: Message


def intent_stream(runtime: str, namespace: str, app: str, service: str) -> str:
    return f"intent/{runtime}/{namespace}/{app}/{service}"


def convergence_stream(app: str, service: str, channel: str) -> str:
    return f"convergence/{app}/{service}/{channel}"


def timer_stream(app: str, service: str, channel: str) -> str:
    return f"timer/{app}/{service}/{channel}"


def gate_stream(app: str, service: str, channel: str) -> str:
    return f"gate/{app}/{service}/{channel}"


def plan(state: PlannerState, event: Input) -> tuple[PlannerState, list[Output]]:
    """Fold one input into the state; return it with the events the planner decides."""
    run = _Run(state, event)
    message = event.message
    if fold_catalog(state.catalog, message, actor=event.actor, at=event.recorded_at):
        _after_catalog_change(run, message)
    else:
        handler = _HANDLERS.get(type(message))
        if handler is not None:
            handler(run, message)
    state.position = event.position
    return state, run.outputs


@dataclass(slots=True)
class _Run:
    """One `plan` call: the state, the input, the clock reading and what was emitted."""

    state: PlannerState
    event: Input
    outputs: list[Output] = field(default_factory=list)
    specs: dict[tuple[str, str], tuple[convergence_pb2.WorkloadSpec, str]] = field(default_factory=dict)
    now: datetime = field(init=False)

    def __post_init__(self) -> None:
        message = self.event.message
        if isinstance(message, events_pb2.TimerFired) and message.HasField("fired_at"):
            self.now = message.fired_at.ToDatetime(tzinfo=self.event.recorded_at.tzinfo)
        elif isinstance(message, events_pb2.ExternalApprovalPolled) and message.HasField("polled_at"):
            self.now = message.polled_at.ToDatetime(tzinfo=self.event.recorded_at.tzinfo)
        else:
            self.now = self.event.recorded_at

    def emit(self, stream_id: str, message: Message) -> None:
        self.outputs.append(Output(stream_id, message))


# -- status changes ------------------------------------------------------------------


def _set_status(run: _Run, conv: Convergence, status: int, reason: str) -> None:
    if conv.status == status and conv.reason == reason:
        return
    event = events_pb2.InstanceStatusChanged(
        application=conv.application,
        service=conv.service,
        channel=conv.channel,
        release_id=conv.release_id,
        version=conv.version,
        old_status=conv.status or PENDING,  # type: ignore[arg-type]
        new_status=status,  # type: ignore[arg-type]
        reason=reason,
        rollback_release_id=conv.rollback_to if status in (ROLLING_BACK, ROLLED_BACK) else "",
    )
    conv.status, conv.reason = status, reason
    run.emit(convergence_stream(*conv.key), event)


def _set_target_status(run: _Run, conv: Convergence, target: TargetState, status: int, reason: str) -> None:
    if target.status == status:
        return
    event = events_pb2.InstanceStatusChanged(
        application=conv.application,
        service=conv.service,
        channel=conv.channel,
        target=O.Target(runtime=target.runtime, namespace=target.namespace),
        release_id=target.release_id,
        version=_version(run, target.release_id),
        old_status=target.status,  # type: ignore[arg-type]
        new_status=status,  # type: ignore[arg-type]
        reason=reason,
        rollback_release_id=target.release_id if target.rollback else "",
    )
    target.status = status
    run.emit(convergence_stream(*conv.key), event)


def _version(run: _Run, release_id: str) -> str:
    record = run.state.catalog.releases.get(release_id)
    return record.release.version if record is not None else ""


# -- timers --------------------------------------------------------------------------


def _schedule(run: _Run, conv: Convergence, purpose: str, fire_at: datetime) -> None:
    """Ask to be woken at `fire_at`. An earlier timer for the same purpose stays (it
    fires, the state is re-evaluated, and a later one is scheduled then if needed)."""
    current = run.state.timers.get(conv.timers.get(purpose, ""))
    if current is not None and current.fire_at <= fire_at:
        return
    if current is not None:
        del run.state.timers[current.timer_id]
    seq = run.state.timer_seqs.get(conv.application, 0) + 1
    run.state.timer_seqs[conv.application] = seq
    timer_id = f"tmr/{conv.application}/{seq}/{purpose}"
    run.state.add_timer(PendingTimer(timer_id, fire_at, conv.key, purpose))
    conv.timers[purpose] = timer_id
    event = events_pb2.TimerScheduled(
        timer_id=timer_id,
        purpose=purpose,
        application=conv.application,
        service=conv.service,
        channel=conv.channel,
        release_id=conv.release_id,
    )
    event.fire_at.FromDatetime(fire_at)
    run.emit(convergence_stream(*conv.key), event)


def _cancel_timers(run: _Run, conv: Convergence, *purposes: str) -> None:
    for purpose in purposes or tuple(conv.timers):
        timer_id = conv.timers.pop(purpose, None)
        if timer_id is not None:
            run.state.timers.pop(timer_id, None)


# -- targets and intents -------------------------------------------------------------


def _sync_targets(run: _Run, conv: Convergence) -> None:
    """Targets follow the channel's runtime bindings; a binding that went away gets a
    DELETE intent (pruning) if anything was deployed there."""
    channel = run.state.catalog.channel(conv.application, conv.channel)
    wanted = (
        [(b.runtime, b.namespace or default_namespace(conv.application, conv.channel)) for b in channel.runtimes]
        if channel is not None
        else []
    )
    for key in [k for k in conv.targets if k not in wanted]:
        _delete_target(run, conv, conv.targets.pop(key))
    for runtime, namespace in wanted:
        if (runtime, namespace) not in conv.targets:
            conv.targets[(runtime, namespace)] = TargetState(runtime, namespace)


def _delete_target(run: _Run, conv: Convergence, target: TargetState) -> None:
    if not target.generation:
        return
    key = (target.runtime, target.namespace, conv.application, conv.service)
    generation = run.state.generations.get(key, 0) + 1
    run.state.generations[key] = generation
    run.emit(
        intent_stream(*key),
        events_pb2.IntentIssued(
            intent_id=f"int-{conv.application}.{conv.service}.{target.runtime}.{target.namespace}.{generation}",
            target=O.Target(runtime=target.runtime, namespace=target.namespace),
            action=O.INTENT_ACTION_DELETE,
            spec=O.WorkloadSpec(application=conv.application, service=conv.service, channel=conv.channel),
            generation=generation,
        ),
    )


def _spec(run: _Run, record: ReleaseRecord, channel: str) -> tuple[convergence_pb2.WorkloadSpec, str]:
    """The release rendered for the channel with the catalog as it is now (once per input).
    Raises RenderError."""
    cache_key = (record.release.id, channel)
    if cache_key not in run.specs:
        spec = render(record.release, channel, run.state.catalog.resource)
        run.specs[cache_key] = (spec, spec_hash(spec))
    return run.specs[cache_key]


def _render_problem(run: _Run, record: ReleaseRecord, channel: str) -> str | None:
    try:
        _spec(run, record, channel)
    except RenderError as e:
        return str(e)
    return None


def _issue(run: _Run, conv: Convergence, target: TargetState, record: ReleaseRecord, *, rollback: bool) -> None:
    spec, digest = _spec(run, record, conv.channel)
    key = (target.runtime, target.namespace, conv.application, conv.service)
    generation = run.state.generations.get(key, 0) + 1
    run.state.generations[key] = generation
    intent_id = f"int-{conv.application}.{conv.service}.{target.runtime}.{target.namespace}.{generation}"
    run.emit(
        intent_stream(*key),
        events_pb2.IntentIssued(
            intent_id=intent_id,
            target=O.Target(runtime=target.runtime, namespace=target.namespace),
            action=O.INTENT_ACTION_APPLY,
            spec=spec,
            spec_hash=digest,
            generation=generation,
            rollback=rollback,
            repair_drift=record.release.config.self_heal,
        ),
    )
    target.generation, target.intent_id, target.release_id = generation, intent_id, record.release.id
    target.rollback, target.issued_at, target.received_at, target.healthy = rollback, run.now, None, False
    target.overdue = False
    target.observed_kind, target.observed_reason, target.observed_message = 0, "", ""
    if rollback:
        _set_target_status(run, conv, target, ROLLING_BACK, f"restoring {record.release.version}")
    else:
        _set_target_status(run, conv, target, DEPLOYING, f"intent {intent_id} issued")


def _on_release(target: TargetState, release_id: str, *, rollback: bool | None = None) -> bool:
    return target.generation > 0 and target.release_id == release_id and (rollback is None or target.rollback == rollback)


def _failure_text(target: TargetState) -> str:
    when = f" at {gates.hhmm(target.observed_at)}" if target.observed_at else ""
    # The agent's message can be long (a runtime's output): its first lines say what failed.
    lines = [line.strip() for line in (target.observed_message or target.observed_reason or "failed").splitlines()]
    detail = " — ".join(line for line in lines if line)[:240]
    reason = target.observed_reason.replace("_", " ") if target.observed_reason else "failure"
    return f"{reason} on runtime {target.runtime}{when} ({detail})"


def _deadline(run: _Run, record: ReleaseRecord) -> timedelta:
    """How long a target may go without a verdict before the planner says so: the
    service's progress deadline plus a grace for the agent's own report.

    Never a failure: the verdict on a workload's progress is the agent's, measured where
    the workload runs (Kubernetes' progressDeadlineSeconds, the local and exec runtimes'
    own deadlines from their apply). A target with no verdict is one whose agent has not
    taken the intent, cannot reach its runtime, or cannot reach the bus — Convoy's faults
    or the infrastructure's, never the release's (DESIGN.md): failing it would roll back
    a release that may be healthy. So the planner names the overdue target and waits; the
    verdict that comes later decides."""
    config = record.release.config
    if config.HasField("progress_deadline") and config.progress_deadline.ToTimedelta() > timedelta(0):
        return config.progress_deadline.ToTimedelta() + DEADLINE_GRACE
    return DEFAULT_PROGRESS_DEADLINE + DEADLINE_GRACE


def _waiting_since(target: TargetState) -> datetime:
    """When the target's wait for a verdict began: when its agent took the intent
    (RECEIVED), or, until it has, when the intent was issued."""
    since = target.received_at or target.issued_at
    assert since is not None
    return since


def _overdue_text(overdue: list[TargetState], deadline: timedelta) -> str:
    first = min(overdue, key=_waiting_since)
    others = f" (and {len(overdue) - 1} more runtime(s))" if len(overdue) > 1 else ""
    if first.received_at is None:
        return (
            f"runtime {first.runtime}'s agent has not taken the intent issued at {gates.hhmm(first.issued_at)}{others}: "
            "is the agent running and connected? (not a failure: the release waits)"
        )
    return (
        f"no verdict from runtime {first.runtime} within {_duration(deadline)} of its agent taking the intent at "
        f"{gates.hhmm(first.received_at)}{others}: is the agent connected? (not a failure: the release waits)"
    )


# -- checks --------------------------------------------------------------------------


def _enter_stage(run: _Run, conv: Convergence, channel: resources_pb2.ReleaseChannel, stage: int) -> None:
    if conv.stage == stage:
        return
    conv.stage = stage
    _close_gates(run, conv, f"{checks.stage_name(stage)} started")
    requests = checks.start_stage(conv, channel, stage, run.state.catalog, run.now)
    if requests or conv.checks_requested:
        _request_checks(run, conv, requests)
    for state in checks.open_gates(conv):
        assert state.gate is not None
        run.emit(gate_stream(*conv.key), state.gate.request)


def _stop_checks(run: _Run, conv: Convergence, reason: str = "") -> None:
    _close_gates(run, conv, reason or "checks stopped")
    conv.checks.clear()
    conv.stage = 0
    if conv.checks_requested:
        _request_checks(run, conv, [])
    _cancel_timers(run, conv, "soak", "check_delay", "gate")


def _close_gates(run: _Run, conv: Convergence, reason: str) -> None:
    """Tell the gatekeeper to stop polling the gates nobody waits for any more."""
    for state in checks.open_gates(conv):
        run.emit(
            gate_stream(*conv.key),
            events_pb2.ExternalApprovalClosed(
                check_id=state.check_id,
                application=conv.application,
                service=conv.service,
                channel=conv.channel,
                release_id=conv.release_id,
                reason=reason,
            ),
        )


def _request_checks(run: _Run, conv: Convergence, requests: list[convergence_pb2.CheckRequest]) -> None:
    for target in conv.targets.values():
        run.emit(
            intent_stream(target.runtime, target.namespace, conv.application, conv.service),
            events_pb2.ChecksRequested(
                target=O.Target(runtime=target.runtime, namespace=target.namespace),
                application=conv.application,
                service=conv.service,
                channel=conv.channel,
                release_id=conv.release_id,
                checks=requests,
            ),
        )
    conv.checks_requested = bool(requests)


def _stage(run: _Run, conv: Convergence, record: ReleaseRecord) -> checks.StageResult:
    result = checks.evaluate(conv, conv.targets.values(), record, run.now)
    if result.delay_until is not None:
        _schedule(run, conv, "check_delay", result.delay_until)
    if result.soak_until is not None:
        _schedule(run, conv, "soak", result.soak_until)
    if result.gate_until is not None:
        _schedule(run, conv, "gate", result.gate_until)
    return result


# -- the convergence state machine ---------------------------------------------------


def _advance_service(run: _Run, app: str, service: str) -> None:
    """Step every channel of the service until nothing changes: one channel converging
    can satisfy another's "channel stable" precondition."""
    for _ in range(16):
        changed = False
        for conv in run.state.convergences_of(app, service):
            for _ in range(16):  # settle this channel before its siblings look at it
                before = (conv.status, conv.reason, conv.release_id, len(run.outputs))
                _step(run, conv)
                if before == (conv.status, conv.reason, conv.release_id, len(run.outputs)):
                    break
                changed = True
        if not changed:
            return


def _step(run: _Run, conv: Convergence) -> None:
    catalog = run.state.catalog
    if not conv.release_id or conv.status in TERMINAL:
        if conv.status == CONVERGED:
            _cover_new_targets(run, conv)
        return
    record = catalog.releases.get(conv.release_id)
    channel = catalog.channel(conv.application, conv.channel)
    if record is None or channel is None or (conv.application, conv.service) not in catalog.services:
        return
    paused = catalog.pause_reason(conv.application, conv.service, conv.channel)
    if conv.status == PAUSED:
        if paused is None:
            _set_status(run, conv, conv.paused_from, "resumed")
        return
    if paused is not None:
        conv.paused_from = conv.status
        _set_status(run, conv, PAUSED, f"paused: {paused}")
        return
    if conv.status == ROLLING_BACK:
        _step_rollback(run, conv)
    elif conv.status in (PENDING, WAITING_PRECONDITIONS, WAITING_APPROVAL):
        _step_gates(run, conv, record, channel)
    elif conv.status == DEPLOYING:
        _step_deploying(run, conv, record, channel)
    elif conv.status == VERIFYING:
        _step_verifying(run, conv, record)


def _step_gates(run: _Run, conv: Convergence, record: ReleaseRecord, channel: resources_pb2.ReleaseChannel) -> None:
    gate = gates.evaluate(run.state, conv, record, channel, run.now)
    if gate.window_opens is not None:
        _schedule(run, conv, "window", gate.window_opens)
    if gate.status == FAILED:
        _fail(run, conv, gate.reason)
        return
    if gate.status == WAITING_PRECONDITIONS:
        _set_status(run, conv, WAITING_PRECONDITIONS, gate.reason)
        return
    _cancel_timers(run, conv, "window")
    # Preconditions hold: pre-approval protections run while approvals are collected.
    _enter_stage(run, conv, channel, resources_pb2.LIFECYCLE_PRE_APPROVAL)
    result = _stage(run, conv, record)
    if result.failure:
        _fail(run, conv, result.failure)
        return
    if gate.status == WAITING_APPROVAL or not result.passed:
        waiting = "; ".join(r for r in (gate.reason if gate.status == WAITING_APPROVAL else "", result.waiting) if r)
        _set_status(run, conv, WAITING_APPROVAL, waiting)
        return
    if conv.stage == resources_pb2.LIFECYCLE_PRE_APPROVAL:
        _enter_stage(run, conv, channel, resources_pb2.LIFECYCLE_POST_APPROVAL)
        result = _stage(run, conv, record)
        if result.failure:
            _fail(run, conv, result.failure)
            return
    if not result.passed:
        _set_status(run, conv, WAITING_APPROVAL, f"approved; {result.waiting}")
        return
    _enter_stage(run, conv, channel, resources_pb2.LIFECYCLE_DEPLOYMENT)
    _set_status(run, conv, DEPLOYING, _deploying_text(conv, channel))


def _deploying_text(conv: Convergence, channel: resources_pb2.ReleaseChannel) -> str:
    limit = f" ({channel.max_concurrent_runtimes} at a time)" if channel.max_concurrent_runtimes else ""
    return f"deploying {conv.version} to {len(conv.targets)} runtime(s){limit}"


def _step_deploying(run: _Run, conv: Convergence, record: ReleaseRecord, channel: resources_pb2.ReleaseChannel) -> None:
    # One pass over the targets (a fleet channel has dozens and every report steps it).
    release_id = conv.release_id
    in_flight: list[TargetState] = []
    todo: list[TargetState] = []
    for target in conv.targets.values():
        if target.generation > 0 and target.release_id == release_id and not target.rollback:
            if target.observed_kind == O.OBSERVATION_KIND_FAILED:
                _set_target_status(run, conv, target, FAILED, _failure_text(target))
                _fail(run, conv, _failure_text(target))
                return
            if not target.healthy:
                in_flight.append(target)
        else:
            todo.append(target)
    done = not todo and not in_flight
    deadline = _deadline(run, record)
    free = (channel.max_concurrent_runtimes or len(conv.targets)) - len(in_flight)
    waiting_on_pause = []
    problem = _render_problem(run, record, conv.channel) if todo and free > 0 else None
    if problem is not None:
        _fail(run, conv, problem)
        return
    for target in todo:
        if run.state.catalog.runtime_paused(target.runtime):
            waiting_on_pause.append(target.runtime)
            continue
        if free <= 0:
            break
        _issue(run, conv, target, record, rollback=False)
        in_flight.append(target)
        free -= 1
    overdue = []
    for target in in_flight:
        target.overdue = _waiting_since(target) + deadline <= run.now
        if target.overdue:
            overdue.append(target)
    due = [_waiting_since(t) + deadline for t in in_flight if _waiting_since(t) + deadline > run.now]
    if due:
        _schedule(run, conv, "deadline", min(due))
    result = _stage(run, conv, record)
    if result.failure:
        _fail(run, conv, result.failure)
        return
    if done and result.passed:
        # Verify in the same step: a channel with nothing to verify goes straight to
        # CONVERGED, one with a soak shows VERIFYING with what it waits for.
        _cancel_timers(run, conv, "deadline")
        _enter_stage(run, conv, channel, resources_pb2.LIFECYCLE_POST_DEPLOYMENT)
        _step_verifying(run, conv, record)
        return
    notes = [_deploying_text(conv, channel)]
    if waiting_on_pause:
        notes.append("waiting for paused runtime(s) " + ", ".join(sorted(set(waiting_on_pause))))
    if overdue:
        notes.append(_overdue_text(overdue, deadline))
    _set_status(run, conv, DEPLOYING, "; ".join(notes))


def _step_verifying(run: _Run, conv: Convergence, record: ReleaseRecord) -> None:
    for target in conv.targets.values():
        if target.observed_kind == O.OBSERVATION_KIND_FAILED and _on_release(target, conv.release_id):
            _set_target_status(run, conv, target, FAILED, _failure_text(target))
            _fail(run, conv, _failure_text(target))
            return
    result = _stage(run, conv, record)
    if result.failure:
        _fail(run, conv, result.failure)
        return
    if not result.passed:
        _set_status(run, conv, VERIFYING, result.waiting)
        return
    _stop_checks(run, conv, "converged")
    _cancel_timers(run, conv)
    conv.converged_release_id = conv.release_id
    conv.history.append(conv.release_id)
    for target in conv.targets.values():
        _set_target_status(run, conv, target, CONVERGED, f"{conv.version} converged")
    _set_status(run, conv, CONVERGED, f"{conv.version} converged on {len(conv.targets)} runtime(s)")


def _cover_new_targets(run: _Run, conv: Convergence) -> None:
    """A runtime bound to a converged channel gets the converged release."""
    record = run.state.catalog.releases.get(conv.converged_release_id)
    if record is None:
        return
    for target in conv.targets.values():
        if target.generation == 0 and not run.state.catalog.runtime_paused(target.runtime):
            problem = _render_problem(run, record, conv.channel)
            if problem is not None:
                _set_target_status(run, conv, target, FAILED, problem)
                continue
            _issue(run, conv, target, record, rollback=False)


def _fail(run: _Run, conv: Convergence, reason: str) -> None:
    _stop_checks(run, conv, reason)
    _cancel_timers(run, conv)
    _set_status(run, conv, FAILED, reason)
    deployed = any(_on_release(t, conv.release_id) for t in conv.targets.values())
    service = run.state.catalog.services.get((conv.application, conv.service))
    previous = conv.converged_release_id
    if not deployed or not previous or previous == conv.release_id or service is None:
        return
    if not run.state.catalog.auto_rollback(service, [t.runtime for t in conv.targets.values()]):
        return
    _start_rollback(run, conv, previous, f"automatic rollback to {_version(run, previous)}: {reason}")


def _start_rollback(run: _Run, conv: Convergence, release_id: str, reason: str) -> None:
    _stop_checks(run, conv, reason)
    _cancel_timers(run, conv)
    conv.rollback_to = release_id
    _set_status(run, conv, ROLLING_BACK, reason)
    _step_rollback(run, conv)


def _step_rollback(run: _Run, conv: Convergence) -> None:
    """Fast and parallel: every target at once, protections skipped."""
    record = run.state.catalog.releases.get(conv.rollback_to)
    if record is None:
        return
    targets = list(conv.targets.values())
    for target in targets:
        if _on_release(target, conv.rollback_to, rollback=True) and target.observed_kind == O.OBSERVATION_KIND_FAILED:
            _set_target_status(run, conv, target, FAILED, _failure_text(target))
            conv.rollback_to = ""
            _set_status(run, conv, FAILED, f"rollback failed: {_failure_text(target)}")
            return
    pending = [t for t in targets if t.release_id != conv.rollback_to and not run.state.catalog.runtime_paused(t.runtime)]
    problem = _render_problem(run, record, conv.channel) if pending else None
    if problem is not None:
        conv.rollback_to = ""
        _set_status(run, conv, FAILED, f"rollback failed: {problem}")
        return
    for target in pending:
        _issue(run, conv, target, record, rollback=True)
    if all(t.release_id == conv.rollback_to and t.healthy for t in targets):
        for target in targets:
            _set_target_status(run, conv, target, ROLLED_BACK, f"restored {record.release.version}")
        conv.converged_release_id = conv.rollback_to
        conv.history.append(conv.rollback_to)
        reason = conv.reason.split(": ", 1)[-1] if conv.reason.startswith("automatic rollback") else conv.reason
        _set_status(run, conv, ROLLED_BACK, f"rolled back to {record.release.version}: {reason}")


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# -- inputs --------------------------------------------------------------------------


def _after_catalog_change(run: _Run, message: Message) -> None:
    state = run.state
    if isinstance(message, events_pb2.ApplicationCreated | events_pb2.ApplicationUpdated):
        app = message.application.name
        channels = {c.name for c in message.application.release_channels}
        for key, conv in list(state.convergences.items()):
            if key[0] != app:
                continue
            if key[2] not in channels:
                _drop_convergence(run, conv)
            else:
                _sync_targets(run, conv)
        for service in {k[1] for k in state.convergences if k[0] == app}:
            _advance_service(run, app, service)
    elif isinstance(message, events_pb2.ApplicationDeleted):
        for key, conv in list(state.convergences.items()):
            if key[0] == message.name:
                _drop_convergence(run, conv)
    elif isinstance(message, events_pb2.ServiceDeleted):
        for conv in state.convergences_of(message.application, message.name):
            _drop_convergence(run, conv)
    elif isinstance(message, events_pb2.RuntimePaused | events_pb2.RuntimeResumed | events_pb2.RuntimeDeregistered):
        services = {(k[0], k[1]) for k, c in state.convergences.items() if any(t[0] == message.name for t in c.targets)}
        for app, service in sorted(services):
            _advance_service(run, app, service)
    elif isinstance(message, events_pb2.ReleaseCreated):
        _release_created(run, message.release)
    elif isinstance(message, events_pb2.ApprovalGranted | events_pb2.ApprovalRejected | events_pb2.BypassGranted):
        _advance_service(run, message.application, message.service)
    elif isinstance(message, events_pb2.ConvergencePaused | events_pb2.ConvergenceResumed):
        _advance_service(run, message.application, message.service)


def _drop_convergence(run: _Run, conv: Convergence) -> None:
    for target in conv.targets.values():
        _delete_target(run, conv, target)
    _cancel_timers(run, conv)
    run.state.drop_convergence(conv)


def _release_created(run: _Run, release: resources_pb2.Release) -> None:
    application = run.state.catalog.applications.get(release.application)
    if application is None or (release.application, release.service) not in run.state.catalog.services:
        return
    for channel in application.release_channels:
        key = (release.application, release.service, channel.name)
        conv = run.state.convergences.get(key)
        if conv is None:
            conv = run.state.add_convergence(Convergence(*key))
        elif conv.release_id and conv.status not in TERMINAL:
            _stop_checks(run, conv, f"replaced by {release.version}")
            _cancel_timers(run, conv)
            _set_status(run, conv, REPLACED, f"replaced by {release.version}")
        else:
            _stop_checks(run, conv)
        conv.release_id, conv.version = release.id, release.version
        conv.status, conv.reason, conv.rollback_to, conv.paused_from = PENDING, "", "", 0
        _sync_targets(run, conv)
    _advance_service(run, release.application, release.service)


def _rollback_requested(run: _Run, message: events_pb2.RollbackRequested) -> None:
    state = run.state
    wanted = set(message.channels)
    requested_by = f"rollback requested by {run.event.actor}" + (f": {message.reason}" if message.reason else "")
    for conv in state.convergences_of(message.application, message.service):
        if wanted and conv.channel not in wanted:
            continue
        target = message.target_release_id
        if not target:
            current_done = conv.status == CONVERGED and conv.converged_release_id == conv.release_id
            history = conv.history[:-1] if current_done else conv.history
            target = next((r for r in reversed(history) if r != conv.release_id), "")
        if not target or target not in state.catalog.releases:
            continue
        _start_rollback(run, conv, target, f"{requested_by} (to {_version(run, target)})")
    _advance_service(run, message.application, message.service)


def _observation(run: _Run, message: events_pb2.ObservationRecorded) -> None:
    obs = message.observation
    conv = run.state.convergences.get((obs.application, obs.service, obs.channel))
    if conv is None:
        conv = next(
            (c for c in run.state.convergences_of(obs.application, obs.service) if (obs.runtime, obs.namespace) in c.targets),
            None,
        )
    if conv is None:
        return
    target = conv.targets.get((obs.runtime, obs.namespace))
    if target is None or obs.generation != target.generation:
        return  # about an older intent, or a target no longer bound: stale
    kind = obs.kind
    at = obs.observed_at.ToDatetime(tzinfo=run.now.tzinfo) if obs.HasField("observed_at") else run.now
    if kind in (O.OBSERVATION_KIND_CHECK_PASSED, O.OBSERVATION_KIND_CHECK_FAILED):
        checks.record_result(
            conv, obs.check_id, target.key, kind == O.OBSERVATION_KIND_CHECK_PASSED, obs.message or obs.reason, run.now
        )
    elif kind in (O.OBSERVATION_KIND_HEALTHY, O.OBSERVATION_KIND_FAILED, O.OBSERVATION_KIND_PROGRESSING):
        if target.observed_at is not None and at < target.observed_at:
            return  # ingested out of order (ingest runs workers in parallel): older news
        target.observed_kind, target.observed_reason, target.observed_message = kind, obs.reason, obs.message
        target.observed_at = at
        target.healthy = kind == O.OBSERVATION_KIND_HEALTHY
        if target.healthy and target.status == DEPLOYING:
            _set_target_status(run, conv, target, CONVERGED, f"{_version(run, target.release_id)} healthy")
    elif kind in (O.OBSERVATION_KIND_RECEIVED, O.OBSERVATION_KIND_APPLIED):
        if target.received_at is not None:
            return
        target.received_at = run.now  # the control plane's clock: agents' clocks may be off
        if not target.overdue:
            return  # nothing to decide; the deadline timer re-reads the target when it fires
    else:
        return  # DRIFTED / DELETED: nothing to decide
    _advance_service(run, conv.application, conv.service)


def _gate_polled(run: _Run, message: events_pb2.ExternalApprovalPolled) -> None:
    conv = run.state.convergences.get((message.application, message.service, message.channel))
    if conv is None or conv.status in TERMINAL:
        return
    if checks.record_poll(conv, message, run.now):
        _advance_service(run, conv.application, conv.service)


def _timer_fired(run: _Run, message: events_pb2.TimerFired) -> None:
    pending = run.state.timers.pop(message.timer_id, None) or _legacy_timer(run, message)
    if pending is None:
        return  # cancelled, or fired before (a duplicate)
    conv = run.state.convergences.get(pending.key)
    if conv is None or conv.timers.get(pending.purpose) != pending.timer_id:
        return
    del conv.timers[pending.purpose]
    _advance_service(run, conv.application, conv.service)


_LEGACY_TIMER = re.compile(r"tmr-[0-9]+-(?P<purpose>[a-z_]+)")


def _legacy_timer(run: _Run, message: events_pb2.TimerFired) -> PendingTimer | None:
    """The pending timer a version-3 TimerFired (`tmr-<n>-<purpose>`, numbered across the
    instance) fired: the one of its stream's convergence with that purpose and firing time.
    Popped from the state like any fired timer; None when there is none (a duplicate)."""
    match = _LEGACY_TIMER.fullmatch(message.timer_id)
    parts = run.event.stream_id.split("/")
    if match is None or len(parts) != 4 or parts[0] != "timer" or not message.HasField("fire_at"):
        return None
    conv = run.state.convergences.get((parts[1], parts[2], parts[3]))
    timer_id = conv.timers.get(match["purpose"], "") if conv is not None else ""
    pending = run.state.timers.get(timer_id)
    if pending is None or pending.fire_at != message.fire_at.ToDatetime(tzinfo=pending.fire_at.tzinfo):
        return None
    del run.state.timers[timer_id]
    return pending


_HANDLERS: dict[type[Message], Callable[[_Run, Any], None]] = {
    events_pb2.RollbackRequested: _rollback_requested,
    events_pb2.ObservationRecorded: _observation,
    events_pb2.TimerFired: _timer_fired,
    events_pb2.ExternalApprovalPolled: _gate_polled,
}
