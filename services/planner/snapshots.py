"""The planner state's snapshot: `PlannerState` as one `PlannerSnapshot` message
(schemas/convoy/v1/snapshots.proto), so a planner start folds only the inputs after it.

`plan` mutates the state, so `capture` must run where the state is consistent — after a
batch of inputs was planned and committed, never while a commit is awaited — and it
copies everything (the message owns its data). `restore` builds the state back with
every mapping in the order it had: the planner's decisions iterate its dicts, so order
is part of the state. Valid only for the planner version that folded it: the fold
version is the engine version plus the event registry's types and schema versions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from eventstore.codec import EventRegistry
from eventstore.snapshots import fold_version_of, stamp, unstamp
from schemas.convoy.v1 import snapshots_pb2
from services.planner.catalog import Approval, Catalog, ReleaseRecord, RuntimeRecord
from services.planner.model import CheckState, Convergence, PendingTimer, PlannerState, TargetState
from services.planner.tickets import GateProgress

KIND: Final = "planner"
FORMAT: Final = 1
"""Bump when PlannerState gains, loses or changes a field (and this encoding with it)."""

P = snapshots_pb2
_MICRO: Final = timedelta(microseconds=1)


def fold_version(engine_version: int, registry: EventRegistry) -> str:
    return fold_version_of(f"planner-{engine_version}.state-{FORMAT}", dict(registry.versions()))


def capture(state: PlannerState) -> snapshots_pb2.PlannerSnapshot:
    out = P.PlannerSnapshot(timer_seqs=state.timer_seqs, position=state.position)
    _catalog(out.catalog, state.catalog)
    for conv in state.convergences.values():
        c = out.convergences.add(
            application=conv.application, service=conv.service, channel=conv.channel, release_id=conv.release_id,
            version=conv.version, status=conv.status, reason=conv.reason, paused_from=conv.paused_from,
            rollback_to=conv.rollback_to, converged_release_id=conv.converged_release_id, history=conv.history,
            stage=conv.stage, checks_requested=conv.checks_requested,
        )
        for t in conv.targets.values():
            target = c.targets.add(
                runtime=t.runtime, namespace=t.namespace, status=t.status, generation=t.generation,
                intent_id=t.intent_id, release_id=t.release_id, rollback=t.rollback, overdue=t.overdue,
                healthy=t.healthy, observed_kind=t.observed_kind, observed_reason=t.observed_reason,
                observed_message=t.observed_message,
            )
            stamp(target.issued_at, t.issued_at)
            stamp(target.received_at, t.received_at)
            stamp(target.observed_at, t.observed_at)
        for check in conv.checks.values():
            _check(c.checks.add(), check)
        for purpose, timer_id in conv.timers.items():
            c.timers.add(purpose=purpose, timer_id=timer_id)
    for (runtime, namespace, app, service), generation in state.generations.items():
        out.generations.add(runtime=runtime, namespace=namespace, application=app, service=service, generation=generation)
    for timer in state.timers.values():
        t = out.timers.add(
            timer_id=timer.timer_id, application=timer.key[0], service=timer.key[1], channel=timer.key[2],
            purpose=timer.purpose,
        )
        stamp(t.fire_at, timer.fire_at)
    return out


def _catalog(out: snapshots_pb2.PlannerCatalog, catalog: Catalog) -> None:
    out.applications.extend(catalog.applications.values())
    for (app, name), service in catalog.services.items():
        out.services.add(application=app, name=name, service=service)
    for r in catalog.runtimes.values():
        out.runtimes.add(runtime=r.runtime, paused=r.paused, pause_reason=r.pause_reason)
    out.protections.extend(catalog.protections.values())
    for record in catalog.releases.values():
        release = out.releases.add(release=record.release, created_by=record.created_by)
        stamp(release.created_at, record.created_at)
        for (channel, approval), given in record.approvals.items():
            for a in given:
                entry = release.approvals.add(channel=channel, approval=approval, approver=a.approver, comment=a.comment)
                stamp(entry.at, a.at)
        for (channel, approval), (approver, reason) in record.rejections.items():
            release.rejections.add(channel=channel, key=approval, first=approver, second=reason)
        for (channel, target), (actor, reason) in record.bypasses.items():
            release.bypasses.add(channel=channel, key=target, first=actor, second=reason)
    for (app, service, channel), reason in catalog.paused.items():
        out.paused.add(application=app, service=service, channel=channel, reason=reason)
    for (scope, app, name), resource in catalog.resources.items():
        out.resources.add(scope=scope, application=app, name=name, resource=resource)


def _check(out: snapshots_pb2.PlannerCheck, check: CheckState) -> None:
    out.check_id, out.protection, out.stage = check.check_id, check.protection, check.stage
    out.fail_on_error, out.delay, out.duration = check.fail_on_error, check.delay, check.duration
    out.agent_health, out.done = check.agent_health, check.done
    stamp(out.started_at, check.started_at)
    stamp(out.passing_since, check.passing_since)
    for (runtime, namespace), (passed, detail) in check.results.items():
        out.results.add(runtime=runtime, namespace=namespace, passed=passed, detail=detail)
    gate = check.gate
    if gate is not None:
        g = out.gate
        g.request.CopyFrom(gate.request)
        g.interval_us, g.timeout_us = gate.interval // _MICRO, gate.timeout // _MICRO
        g.attempts, g.outcome, g.ticket, g.detail, g.http_status = (
            gate.attempts, gate.outcome, gate.ticket, gate.detail, gate.http_status
        )
        stamp(g.first_poll_at, gate.first_poll_at)
        stamp(g.last_poll_at, gate.last_poll_at)
        stamp(g.deadline, gate.deadline)


def _required(message: object, name: str) -> object:
    value = unstamp(message, name)  # type: ignore[arg-type]
    if value is None:
        raise ValueError(f"{type(message).__name__}.{name} is missing")
    return value


def restore(payload: bytes, position: int) -> PlannerState:
    """The PlannerState a `PlannerSnapshot` payload describes (after `position`)."""
    snap = P.PlannerSnapshot()
    snap.ParseFromString(payload)
    if snap.position > position:
        raise ValueError(f"the state is after position {snap.position}, beyond its snapshot's {position}")
    state = PlannerState(catalog=_restore_catalog(snap.catalog), timer_seqs=dict(sorted(snap.timer_seqs.items())), position=snap.position)
    for c in snap.convergences:
        conv = Convergence(
            c.application, c.service, c.channel, c.release_id, c.version, c.status, c.reason, c.paused_from,
            c.rollback_to, c.converged_release_id, list(c.history), stage=c.stage, checks_requested=c.checks_requested,
        )
        for t in c.targets:
            conv.targets[(t.runtime, t.namespace)] = TargetState(
                t.runtime, t.namespace, t.status, t.generation, t.intent_id, t.release_id, t.rollback,
                unstamp(t, "issued_at"), unstamp(t, "received_at"), t.overdue, t.healthy, t.observed_kind,
                t.observed_reason, t.observed_message, unstamp(t, "observed_at"),
            )
        for k in c.checks:
            conv.checks[k.check_id] = _restore_check(k)
        conv.timers = {t.purpose: t.timer_id for t in c.timers}
        state.add_convergence(conv)
    state.generations = {(g.runtime, g.namespace, g.application, g.service): g.generation for g in snap.generations}
    for t in snap.timers:
        state.timers[t.timer_id] = PendingTimer(
            t.timer_id, _required(t, "fire_at"), (t.application, t.service, t.channel), t.purpose  # type: ignore[arg-type]
        )
    return state


def _restore_catalog(snap: snapshots_pb2.PlannerCatalog) -> Catalog:
    catalog = Catalog(
        applications={a.name: a for a in snap.applications},
        services={(s.application, s.name): s.service for s in snap.services},
        runtimes={r.runtime.name: RuntimeRecord(r.runtime, r.paused, r.pause_reason) for r in snap.runtimes},
        protections={p.name: p for p in snap.protections},
        paused={(p.application, p.service, p.channel): p.reason for p in snap.paused},
        resources={(r.scope, r.application, r.name): r.resource for r in snap.resources},
    )
    for r in snap.releases:
        record = ReleaseRecord(r.release, r.created_by, _required(r, "created_at"))  # type: ignore[arg-type]
        for a in r.approvals:
            record.approvals.setdefault((a.channel, a.approval), []).append(
                Approval(a.approver, _required(a, "at"), a.comment)  # type: ignore[arg-type]
            )
        record.rejections = {(x.channel, x.key): (x.first, x.second) for x in r.rejections}
        record.bypasses = {(x.channel, x.key): (x.first, x.second) for x in r.bypasses}
        catalog.releases[r.release.id] = record
    return catalog


def _restore_check(k: snapshots_pb2.PlannerCheck) -> CheckState:
    check = CheckState(
        k.check_id, k.protection, k.stage, k.fail_on_error, k.delay, k.duration, k.agent_health,
        _required(k, "started_at"),  # type: ignore[arg-type]
        {(r.runtime, r.namespace): (r.passed, r.detail) for r in k.results},
        unstamp(k, "passing_since"), k.done,
    )
    if k.HasField("gate"):
        g = k.gate
        request = type(g.request)()
        request.CopyFrom(g.request)
        check.gate = GateProgress(
            request=request, interval=timedelta(microseconds=g.interval_us), timeout=timedelta(microseconds=g.timeout_us),
            attempts=g.attempts, outcome=g.outcome, ticket=g.ticket, detail=g.detail, http_status=g.http_status,
            first_poll_at=unstamp(g, "first_poll_at"), last_poll_at=unstamp(g, "last_poll_at"),
            deadline=unstamp(g, "deadline"),
        )
    return check
