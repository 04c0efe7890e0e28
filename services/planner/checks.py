"""Protections at lifecycle stages: which checks a stage runs and whether it passed.

A channel attaches protections at stages (pre-approval, post-approval, deployment,
post-deployment). Entering a stage starts one `CheckState` per attachment; HTTP-probe and
command checks are run by the agents of the channel's targets (the planner asks with
ChecksRequested and reads CHECK_PASSED / CHECK_FAILED observations back), agent-health
checks are judged from the agents' health reports, and external approvals (change-ticket
gates) from the gatekeeper's recorded polls (services/planner/tickets.py: passed, failed
terminally, or timed out). A check waits `delay`, then must pass
on every target for `duration` (the soak). A failure either fails the convergence
(FAILURE_BEHAVIOR_FAIL) or restarts the wait (BLOCK). Bypassed protections
(`protection:<name>`) pass at once. Pure: time is the recorded moment passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2
from services.planner import tickets
from services.planner.catalog import Catalog, ReleaseRecord
from services.planner.model import CheckState, Convergence, TargetState

FAIL = resources_pb2.FAILURE_BEHAVIOR_FAIL


def stage_name(stage: int) -> str:
    return resources_pb2.Lifecycle.Name(stage).removeprefix("LIFECYCLE_").lower().replace("_", "-")


def check_id(conv: Convergence, protection: str, stage: int) -> str:
    return f"chk-{conv.release_id}.{conv.channel}.{protection}.{stage_name(stage)}"


def start_stage(
    conv: Convergence, channel: resources_pb2.ReleaseChannel, stage: int, catalog: Catalog, now: datetime
) -> list[convergence_pb2.CheckRequest]:
    """Replace the convergence's checks with this stage's; return the check requests the
    agents must run (empty when the stage has only agent-health checks or none)."""
    conv.checks.clear()
    requests = []
    for attachment in channel.protections:
        if stage not in attachment.lifecycle:
            continue
        protection = catalog.protections.get(attachment.protection)
        kind = protection.WhichOneof("check") if protection is not None else None
        state = CheckState(
            check_id=check_id(conv, attachment.protection, stage),
            protection=attachment.protection,
            stage=stage,
            fail_on_error=attachment.failure_behavior == FAIL,
            delay=attachment.delay.ToTimedelta().total_seconds(),
            duration=attachment.duration.ToTimedelta().total_seconds(),
            agent_health=kind in (None, "agent_health"),
            started_at=now,
        )
        if protection is not None and kind == "external_approval":
            state.gate = tickets.progress_for(
                events_pb2.ExternalApprovalRequested(
                    check_id=state.check_id,
                    protection=attachment.protection,
                    application=conv.application,
                    service=conv.service,
                    channel=conv.channel,
                    release_id=conv.release_id,
                    version=conv.version,
                    approval=protection.external_approval,
                    parameters=dict(attachment.parameters),
                )
            )
        conv.checks[state.check_id] = state
        if protection is not None and kind in ("http_probe", "command"):
            request = convergence_pb2.CheckRequest(
                check_id=state.check_id,
                protection=attachment.protection,
                lifecycle=stage,  # type: ignore[arg-type]
                parameters=dict(attachment.parameters),
            )
            if kind == "http_probe":
                request.http_probe.CopyFrom(protection.http_probe)
            else:
                request.command.CopyFrom(protection.command)
            if protection.HasField("interval"):
                request.interval.CopyFrom(protection.interval)
            requests.append(request)
    return requests


def record_poll(conv: Convergence, poll: events_pb2.ExternalApprovalPolled, at: datetime) -> bool:
    """Note one of the gatekeeper's polls; False when its gate is not active here (stale,
    another release's) or the poll was folded before."""
    state = conv.checks.get(poll.check_id)
    if state is None or state.gate is None or state.done or poll.release_id != conv.release_id:
        return False
    return tickets.record_poll(state.gate, poll, at)


def open_gates(conv: Convergence) -> list[CheckState]:
    """Gates whose answer the planner still waits for (the gatekeeper polls them)."""
    return [s for s in conv.checks.values() if s.gate is not None and not s.gate.decided]


def record_result(
    conv: Convergence, check: str, target: tuple[str, str], passed: bool, message: str, at: datetime
) -> bool:
    """Note one agent's check result; False when the check is not active (stale) or
    the result came before the check's delay was over (it does not count)."""
    state = conv.checks.get(check)
    if state is None or state.done or at < state.started_at + timedelta(seconds=state.delay):
        return False
    state.results[target] = (passed, message)
    return True


@dataclass(frozen=True, slots=True)
class StageResult:
    passed: bool
    failure: str = ""
    """Set when a FAIL-behaviour check failed: why, for the convergence's reason."""
    waiting: str = ""
    delay_until: datetime | None = None
    """When a check's delay is over (its results start to count)."""
    soak_until: datetime | None = None
    """When a passing check's soak is over."""
    gate_until: datetime | None = None
    """When a change-ticket gate times out (if no poll decides it first)."""


def evaluate(
    conv: Convergence, targets: Iterable[TargetState], record: ReleaseRecord, now: datetime
) -> StageResult:
    targets = list(targets)
    waiting: list[str] = []
    delays: list[datetime] = []
    soaks: list[datetime] = []
    gates: list[datetime] = []
    for state in conv.checks.values():
        if state.done:
            continue
        if (conv.channel, f"protection:{state.protection}") in record.bypasses:
            state.done = True
            continue
        if state.gate is not None:
            verdict = tickets.evaluate(state.protection, state.gate, now)
            if verdict.failure:
                return StageResult(False, failure=verdict.failure)
            if verdict.passed:
                state.done = True
                continue
            waiting.append(verdict.waiting)
            if verdict.wake_at is not None:
                gates.append(verdict.wake_at)
            continue
        ready_at = state.started_at + timedelta(seconds=state.delay)
        if now < ready_at:
            waiting.append(f"{state.protection}: first check at {ready_at:%H:%M:%S}")
            delays.append(ready_at)
            continue
        failed, missing = _failures(state, targets)
        if failed:
            state.passing_since = None
            where, message = failed[0]
            text = f"protection {state.protection} failed on runtime {where}" + (f" ({message})" if message else "")
            if state.fail_on_error:
                return StageResult(False, failure=text)
            waiting.append(f"{text}; waiting for it to pass")
            continue
        if missing:
            waiting.append(f"{state.protection}: waiting for results from {', '.join(missing)}")
            continue
        if state.passing_since is None:
            state.passing_since = max(now, ready_at)
        soak_end = state.passing_since + timedelta(seconds=state.duration)
        if now >= soak_end:
            state.done = True
            continue
        waiting.append(f"{state.protection}: soak ends at {soak_end:%H:%M:%S} UTC")
        soaks.append(soak_end)
    if waiting:
        return StageResult(
            False,
            waiting="; ".join(waiting),
            delay_until=min(delays, default=None),
            soak_until=min(soaks, default=None),
            gate_until=min(gates, default=None),
        )
    return StageResult(True)


def _failures(state: CheckState, targets: list[TargetState]) -> tuple[list[tuple[str, str]], list[str]]:
    failed: list[tuple[str, str]] = []
    missing: list[str] = []
    for target in targets:
        if state.agent_health:
            if target.observed_kind == convergence_pb2.OBSERVATION_KIND_FAILED:
                failed.append((target.runtime, target.observed_reason or target.observed_message))
            elif not target.healthy:
                missing.append(target.runtime)
            continue
        result = state.results.get(target.key)
        if result is None:
            missing.append(target.runtime)
        elif not result[0]:
            failed.append((target.runtime, result[1]))
    return failed, missing
