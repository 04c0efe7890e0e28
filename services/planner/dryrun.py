"""Dry-run plans: what a command would make the planner do, recording nothing.

The hypothetical events (for a deploy, the ReleaseCreated the API's `decide` produced
without appending it) are folded onto a copy of the planner's state, and the copy is
played forward as if every agent reported healthy and every check passed at once:
timers for windows, check delays and soaks fire when due on a simulated clock. What
needs a person — an approval — stops that channel, and the plan says so. The result is
the ordered list of intents the command would produce and every place it would wait.
Deadline timers never fire here: in a dry run nothing is slow.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf.message import Message

from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.planner.engine import Input, Output, plan
from services.planner.model import PlannerState, status_name

_SIMULATED = uuid.UUID("00000000-0000-0000-0000-00000000d27a")
_WAITS = {
    convergence_pb2.INSTANCE_STATUS_WAITING_PRECONDITIONS: "wait",
    convergence_pb2.INSTANCE_STATUS_WAITING_APPROVAL: "wait",
    convergence_pb2.INSTANCE_STATUS_VERIFYING: "verify",
    convergence_pb2.INSTANCE_STATUS_PAUSED: "wait",
    convergence_pb2.INSTANCE_STATUS_CONVERGED: "converged",
    convergence_pb2.INSTANCE_STATUS_FAILED: "fail",
    convergence_pb2.INSTANCE_STATUS_REPLACED: "replace",
    convergence_pb2.INSTANCE_STATUS_ROLLING_BACK: "rollback",
    convergence_pb2.INSTANCE_STATUS_ROLLED_BACK: "rolled-back",
}


@dataclass(frozen=True, slots=True)
class Step:
    after: timedelta
    """Simulated time since the command (soaks and windows move it)."""
    channel: str
    action: str
    """"deploy", "delete", "wait", "verify", "converged", "fail", "replace", "rollback"."""
    runtime: str
    detail: str


def simulate(
    state: PlannerState,
    commands: Sequence[Message],
    *,
    now: datetime,
    actor: str,
    max_rounds: int = 200,
) -> list[Step]:
    """The plan for `commands` on top of `state` (which is not modified)."""
    world = copy.deepcopy(state)
    clock = now
    position = world.position
    steps: list[Step] = []
    seq = 0

    def feed(message: Message, who: str) -> list[Output]:
        nonlocal position, seq
        position += 1
        seq += 1
        _, out = plan(world, Input(message, position, uuid.uuid5(_SIMULATED, str(seq)), who, clock))
        for item in out:
            _describe(item, clock - now, steps)
        return out

    pending: list[Output] = []
    for command in commands:
        pending += feed(command, actor)
    for _ in range(max_rounds):
        produced: list[Output] = []
        for item in pending:
            m = item.message
            if isinstance(m, events_pb2.IntentIssued) and m.action == convergence_pb2.INTENT_ACTION_APPLY:
                produced += feed(_report(m, clock), f"agent:{m.target.runtime}")
        for conv in list(world.convergences.values()):
            for check in list(conv.checks.values()):
                if check.done or check.agent_health:
                    continue
                for target in list(conv.targets.values()):
                    if check.results.get(target.key, (False, ""))[0]:
                        continue
                    produced += feed(_check_passed(conv.key, target.key, target.generation, check.check_id, clock),
                                     f"agent:{target.runtime}")
        pending = produced
        if pending:
            continue
        due = sorted((t for t in world.timers.values() if t.purpose != "deadline"), key=lambda t: (t.fire_at, t.timer_id))
        if not due:
            break
        timer = due[0]
        clock = max(clock, timer.fire_at)
        fired = events_pb2.TimerFired(timer_id=timer.timer_id)
        fired.fire_at.FromDatetime(timer.fire_at)
        fired.fired_at.FromDatetime(clock)
        pending = feed(fired, "planner") or [Output("", fired)]
    return steps


def _report(intent: events_pb2.IntentIssued, at: datetime) -> events_pb2.ObservationRecorded:
    obs = convergence_pb2.Observation(
        observation_id=f"dry-{intent.intent_id}",
        runtime=intent.target.runtime,
        namespace=intent.target.namespace,
        application=intent.spec.application,
        service=intent.spec.service,
        channel=intent.spec.channel,
        intent_id=intent.intent_id,
        generation=intent.generation,
        kind=convergence_pb2.OBSERVATION_KIND_HEALTHY,
    )
    obs.observed_at.FromDatetime(at)
    return events_pb2.ObservationRecorded(observation=obs)


def _check_passed(
    key: tuple[str, str, str], target: tuple[str, str], generation: int, check_id: str, at: datetime
) -> events_pb2.ObservationRecorded:
    obs = convergence_pb2.Observation(
        observation_id=f"dry-{check_id}-{target[0]}", runtime=target[0], namespace=target[1], application=key[0],
        service=key[1], channel=key[2], generation=generation, check_id=check_id,
        kind=convergence_pb2.OBSERVATION_KIND_CHECK_PASSED,
    )
    obs.observed_at.FromDatetime(at)
    return events_pb2.ObservationRecorded(observation=obs)


def _describe(item: Output, after: timedelta, steps: list[Step]) -> None:
    m = item.message
    if isinstance(m, events_pb2.IntentIssued):
        if m.action == convergence_pb2.INTENT_ACTION_DELETE:
            steps.append(Step(after, m.spec.channel, "delete", m.target.runtime, f"remove from {m.target.namespace}"))
        else:
            what = "roll back to" if m.rollback else "deploy"
            steps.append(Step(after, m.spec.channel, "deploy", m.target.runtime,
                              f"{what} {m.spec.version} in {m.target.namespace} (generation {m.generation})"))
    elif isinstance(m, events_pb2.InstanceStatusChanged) and not m.target.runtime:
        action = _WAITS.get(m.new_status)
        if action is not None:
            steps.append(Step(after, m.channel, action, "", f"{status_name(m.new_status)}: {m.reason}"))
