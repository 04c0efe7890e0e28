"""`evolve(state, event) -> state`: how each recorded fact changes the catalog.

Every event type in events.proto has a handler here, and a message of any other type
raises `UnknownEventType`, so a new event cannot be silently ignored by the catalog (a
test checks the table covers events.proto). Events arrive upcast to their current
layout (`eventstore.codec`), so no handler branches on schema versions.

Folding is total and lenient about references: the log is the truth, and with several
API processes appending to different streams, an event can name something a racing
event just removed (an approval for a release whose service was deleted). Such an event
changes nothing rather than failing replay. Deleting an application or a service takes
what belongs to it along (its services, releases, resources, paused convergences), so
the catalog never holds orphans whatever order the races committed in.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import Message

from eventstore.errors import UnknownEventType
from schemas.convoy.v1 import events_pb2, resources_pb2
from services.api.domain.commands import StreamEvent, clean
from services.api.domain.state import (
    Rejection,
    ReleaseRecord,
    RuntimeRecord,
    SecretRecord,
    ServiceReleases,
    State,
    TokenRecord,
    frozen,
    with_item,
    without,
)

_APP_SCOPE = resources_pb2.RESOURCE_SCOPE_APPLICATION


def evolve(state: State, event: Message) -> State:
    """The catalog after `event`. Raises `UnknownEventType` for a message that is not a
    current Convoy event."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise UnknownEventType(
            f"{event.DESCRIPTOR.full_name} is not a current Convoy event; the catalog cannot fold it "
            "(decode stored events with eventstore.codec so old layouts are upcast first)"
        )
    return handler(state, event)


def fold(state: State, events: Iterable[Message | StreamEvent]) -> State:
    """`evolve` over events (or over a `Decision`'s `StreamEvent`s), in order."""
    for item in events:
        state = evolve(state, item.event if isinstance(item, StreamEvent) else item)
    return state


# -- applications and services -------------------------------------------------------


def _application_declared(state: State, application: resources_pb2.Application) -> State:
    app = clean(application)
    channels = {c.name for c in app.release_channels}
    paused = {k: v for k, v in state.paused_convergences.items() if k[0] != app.name or not k[2] or k[2] in channels}
    return dataclasses.replace(
        state, applications=with_item(state.applications, app.name, app), paused_convergences=frozen(paused)
    )


def _application_created(state: State, event: events_pb2.ApplicationCreated) -> State:
    return _application_declared(state, event.application)


def _application_updated(state: State, event: events_pb2.ApplicationUpdated) -> State:
    return _application_declared(state, event.application)


def _application_deleted(state: State, event: events_pb2.ApplicationDeleted) -> State:
    name = event.name
    return dataclasses.replace(
        state,
        applications=without(state.applications, name),
        services=frozen({k: v for k, v in state.services.items() if k[0] != name}),
        releases=frozen({k: v for k, v in state.releases.items() if k[0] != name}),
        paused_convergences=frozen({k: v for k, v in state.paused_convergences.items() if k[0] != name}),
        resources=frozen({k: v for k, v in state.resources.items() if not (k[0] == _APP_SCOPE and k[1] == name)}),
    )


def _service_configured(state: State, event: events_pb2.ServiceConfigured) -> State:
    service = clean(event.service)
    if service.application not in state.applications:
        return state
    return dataclasses.replace(state, services=with_item(state.services, (service.application, service.name), service))


def _service_deleted(state: State, event: events_pb2.ServiceDeleted) -> State:
    key = (event.application, event.name)
    return dataclasses.replace(
        state,
        services=without(state.services, key),
        releases=without(state.releases, key),
        paused_convergences=frozen({k: v for k, v in state.paused_convergences.items() if k[:2] != key}),
    )


# -- runtimes ---------------------------------------------------------------------------


def _runtime_declared(state: State, runtime: resources_pb2.Runtime) -> State:
    declared = clean(runtime)
    old = state.runtimes.get(declared.name)
    record = RuntimeRecord(declared) if old is None else dataclasses.replace(old, runtime=declared)
    return dataclasses.replace(state, runtimes=with_item(state.runtimes, declared.name, record))


def _runtime_registered(state: State, event: events_pb2.RuntimeRegistered) -> State:
    return _runtime_declared(state, event.runtime)


def _runtime_updated(state: State, event: events_pb2.RuntimeUpdated) -> State:
    return _runtime_declared(state, event.runtime)


def _with_runtime(state: State, name: str, change: Callable[[RuntimeRecord], RuntimeRecord]) -> State:
    old = state.runtimes.get(name)
    if old is None:
        return state
    return dataclasses.replace(state, runtimes=with_item(state.runtimes, name, change(old)))


def _runtime_labelled(state: State, event: events_pb2.RuntimeLabelled) -> State:
    def relabel(record: RuntimeRecord) -> RuntimeRecord:
        runtime = clean(record.runtime)
        runtime.labels.clear()
        runtime.labels.update(event.labels)
        return dataclasses.replace(record, runtime=runtime)

    return _with_runtime(state, event.name, relabel)


def _runtime_paused(state: State, event: events_pb2.RuntimePaused) -> State:
    return _with_runtime(state, event.name, lambda r: dataclasses.replace(r, paused=True, pause_reason=event.reason))


def _runtime_resumed(state: State, event: events_pb2.RuntimeResumed) -> State:
    return _with_runtime(state, event.name, lambda r: dataclasses.replace(r, paused=False, pause_reason=""))


def _runtime_deregistered(state: State, event: events_pb2.RuntimeDeregistered) -> State:
    return dataclasses.replace(state, runtimes=without(state.runtimes, event.name))


def _agent_credential_issued(state: State, event: events_pb2.AgentCredentialIssued) -> State:
    return _with_runtime(
        state,
        event.runtime,
        lambda r: dataclasses.replace(
            r,
            credential_generation=event.generation,
            credential_id=event.credential_id,
            credential_sha256=event.secret_sha256,
        ),
    )


# -- protections and resources ------------------------------------------------------------


def _protection_configured(state: State, event: events_pb2.ProtectionConfigured) -> State:
    protection = clean(event.protection)
    return dataclasses.replace(state, protections=with_item(state.protections, protection.name, protection))


def _protection_deleted(state: State, event: events_pb2.ProtectionDeleted) -> State:
    return dataclasses.replace(state, protections=without(state.protections, event.name))


def _resource_key(scope: int, application: str, name: str) -> tuple[int, str, str]:
    return (scope, application if scope == _APP_SCOPE else "", name)


def _resource_linked(state: State, event: events_pb2.ResourceLinked) -> State:
    resource = clean(event.resource)
    if resource.scope == _APP_SCOPE and resource.application not in state.applications:
        return state
    key = _resource_key(resource.scope, resource.application, resource.name)
    return dataclasses.replace(state, resources=with_item(state.resources, key, resource))


def _resource_unlinked(state: State, event: events_pb2.ResourceUnlinked) -> State:
    key = _resource_key(event.scope, event.application, event.name)
    return dataclasses.replace(state, resources=without(state.resources, key))


def _registry_configured(state: State, event: events_pb2.RegistryConfigured) -> State:
    registry = clean(event.registry)
    return dataclasses.replace(state, registries=with_item(state.registries, registry.name, registry))


def _registry_deleted(state: State, event: events_pb2.RegistryDeleted) -> State:
    return dataclasses.replace(state, registries=without(state.registries, event.name))


# -- releases -------------------------------------------------------------------------------


def _release_created(state: State, event: events_pb2.ReleaseCreated) -> State:
    release = clean(event.release)
    key = (release.application, release.service)
    if key not in state.services:
        return state
    history = state.releases_of(*key)
    if release.id in history.by_id:
        return state
    history = ServiceReleases(
        by_id=with_item(history.by_id, release.id, ReleaseRecord(release)), order=(*history.order, release.id)
    )
    return dataclasses.replace(state, releases=with_item(state.releases, key, history))


def _with_release(
    state: State, app: str, service: str, release_id: str, change: Callable[[ReleaseRecord], ReleaseRecord]
) -> State:
    history = state.releases_of(app, service)
    old = history.by_id.get(release_id)
    if old is None:
        return state
    history = dataclasses.replace(history, by_id=with_item(history.by_id, release_id, change(old)))
    return dataclasses.replace(state, releases=with_item(state.releases, (app, service), history))


def _approval_granted(state: State, event: events_pb2.ApprovalGranted) -> State:
    key = (event.channel, event.approval)

    def grant(record: ReleaseRecord) -> ReleaseRecord:
        approvers = record.approvals.get(key, ())
        if event.approver in approvers:
            return record
        return dataclasses.replace(record, approvals=with_item(record.approvals, key, (*approvers, event.approver)))

    return _with_release(state, event.application, event.service, event.release_id, grant)


def _approval_rejected(state: State, event: events_pb2.ApprovalRejected) -> State:
    key = (event.channel, event.approval)

    def reject(record: ReleaseRecord) -> ReleaseRecord:
        rejections = (*record.rejections.get(key, ()), Rejection(event.approver, event.reason))
        return dataclasses.replace(record, rejections=with_item(record.rejections, key, rejections))

    return _with_release(state, event.application, event.service, event.release_id, reject)


def _bypass_granted(state: State, event: events_pb2.BypassGranted) -> State:
    key = (event.channel, event.target)

    def bypass(record: ReleaseRecord) -> ReleaseRecord:
        if key in record.bypasses:
            return record
        return dataclasses.replace(record, bypasses=with_item(record.bypasses, key, event.reason))

    return _with_release(state, event.application, event.service, event.release_id, bypass)


def _rollback_requested(state: State, event: events_pb2.RollbackRequested) -> State:
    # A rollback is an instruction to the planner (which knows what converged where);
    # the catalog's declarations do not change.
    return state


# -- convergence and tokens -------------------------------------------------------------------


def _convergence_paused(state: State, event: events_pb2.ConvergencePaused) -> State:
    if (event.application, event.service) not in state.services:
        return state
    key = (event.application, event.service, event.channel)
    return dataclasses.replace(state, paused_convergences=with_item(state.paused_convergences, key, event.reason))


def _convergence_resumed(state: State, event: events_pb2.ConvergenceResumed) -> State:
    service = (event.application, event.service)
    if not event.channel:  # resuming every channel clears per-channel pauses too
        remaining = {k: v for k, v in state.paused_convergences.items() if k[:2] != service}
        return dataclasses.replace(state, paused_convergences=frozen(remaining))
    key = (event.application, event.service, event.channel)
    return dataclasses.replace(state, paused_convergences=without(state.paused_convergences, key))


def _token_created(state: State, event: events_pb2.TokenCreated) -> State:
    token = TokenRecord(
        event.token_id,
        event.name,
        event.role,
        event.secret_sha256,
        secret_hmac=event.secret_hmac,
        expires_at=event.expires_at.ToDatetime(tzinfo=UTC) if event.HasField("expires_at") else None,
        scope_applications=tuple(event.scope.applications),
        scope_channels=tuple(event.scope.channels),
        owner=event.owner,
    )
    return dataclasses.replace(state, tokens=with_item(state.tokens, event.token_id, token))


def _token_revoked(state: State, event: events_pb2.TokenRevoked) -> State:
    old = state.tokens.get(event.token_id)
    if old is None or old.revoked:
        return state
    token = dataclasses.replace(old, revoked=True, revoke_reason=event.reason)
    return dataclasses.replace(state, tokens=with_item(state.tokens, event.token_id, token))


def _secret_set(state: State, event: events_pb2.SecretSet) -> State:
    record = SecretRecord(event.name, event.key_id, event.nonce, event.ciphertext, event.cause or "set")
    return dataclasses.replace(state, secrets=with_item(state.secrets, event.name, record))


def _secret_deleted(state: State, event: events_pb2.SecretDeleted) -> State:
    return dataclasses.replace(state, secrets=without(state.secrets, event.name))


def _secret_key_rotated(state: State, event: events_pb2.SecretKeyRotated) -> State:
    return dataclasses.replace(state, secret_key_id=event.key_id)


def _not_catalog(state: State, _event: Message) -> State:
    """Convergence facts (the planner's intents, statuses and timers, agents'
    observations) are not declarations: the catalog does not change. The API reads
    convergence status from its own view (services/api/convergence_view.py)."""
    return state


_HANDLERS: dict[type[Message], Callable[[State, Any], State]] = {
    events_pb2.ApplicationCreated: _application_created,
    events_pb2.ApplicationUpdated: _application_updated,
    events_pb2.ApplicationDeleted: _application_deleted,
    events_pb2.ServiceConfigured: _service_configured,
    events_pb2.ServiceDeleted: _service_deleted,
    events_pb2.RuntimeRegistered: _runtime_registered,
    events_pb2.RuntimeUpdated: _runtime_updated,
    events_pb2.RuntimeLabelled: _runtime_labelled,
    events_pb2.RuntimePaused: _runtime_paused,
    events_pb2.RuntimeResumed: _runtime_resumed,
    events_pb2.RuntimeDeregistered: _runtime_deregistered,
    events_pb2.AgentCredentialIssued: _agent_credential_issued,
    events_pb2.ProtectionConfigured: _protection_configured,
    events_pb2.ProtectionDeleted: _protection_deleted,
    events_pb2.ResourceLinked: _resource_linked,
    events_pb2.ResourceUnlinked: _resource_unlinked,
    events_pb2.RegistryConfigured: _registry_configured,
    events_pb2.RegistryDeleted: _registry_deleted,
    events_pb2.ReleaseCreated: _release_created,
    events_pb2.ApprovalGranted: _approval_granted,
    events_pb2.ApprovalRejected: _approval_rejected,
    events_pb2.BypassGranted: _bypass_granted,
    events_pb2.RollbackRequested: _rollback_requested,
    events_pb2.ConvergencePaused: _convergence_paused,
    events_pb2.ConvergenceResumed: _convergence_resumed,
    events_pb2.TokenCreated: _token_created,
    events_pb2.TokenRevoked: _token_revoked,
    events_pb2.SecretSet: _secret_set,
    events_pb2.SecretDeleted: _secret_deleted,
    events_pb2.SecretKeyRotated: _secret_key_rotated,
    events_pb2.IntentIssued: _not_catalog,
    events_pb2.ChecksRequested: _not_catalog,
    events_pb2.InstanceStatusChanged: _not_catalog,
    events_pb2.TimerScheduled: _not_catalog,
    events_pb2.TimerFired: _not_catalog,
    events_pb2.ObservationRecorded: _not_catalog,
    events_pb2.PlannerVersionStarted: _not_catalog,
    events_pb2.PlannerInputRejected: _not_catalog,
    events_pb2.ExternalApprovalRequested: _not_catalog,
    events_pb2.ExternalApprovalPolled: _not_catalog,
    events_pb2.ExternalApprovalClosed: _not_catalog,
    events_pb2.GitHubDeploymentCreated: _not_catalog,
    events_pb2.GitHubDeploymentStatusPosted: _not_catalog,
}

HANDLED_EVENT_TYPES: frozenset[str] = frozenset(cls.DESCRIPTOR.full_name for cls in _HANDLERS)
"""Full names of the events `evolve` folds (a test compares it with events.proto)."""
