"""The planner's view of what teams declared: applications, services, runtimes,
protections and releases with the human decisions recorded about them.

The API folds the same events into its own catalog for validating commands; the planner
keeps this one because it needs a different shape (indexed for planning, mutable for
speed: a fleet release folds hundreds of thousands of events) and because services do
not import each other. Folding is lenient: an event naming something already gone
changes nothing, exactly as in the API's catalog, so replay never fails on a race the
log recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import services.resourceenv as resourceenv
from schemas.convoy.v1 import events_pb2, resources_pb2

ServiceKey = tuple[str, str]
"""(application, service)."""


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    at: datetime
    comment: str = ""


@dataclass(slots=True)
class ReleaseRecord:
    release: resources_pb2.Release
    created_by: str
    created_at: datetime
    approvals: dict[tuple[str, str], list[Approval]] = field(default_factory=dict)
    """Distinct approvers per (channel, approval name), in order."""
    rejections: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(approver, reason) of the first rejection per (channel, approval name)."""
    bypasses: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(actor, reason) per (channel, target): "precondition:<name>", "protection:<name>"."""


@dataclass(slots=True)
class RuntimeRecord:
    runtime: resources_pb2.Runtime
    paused: bool = False
    pause_reason: str = ""


@dataclass(slots=True)
class Catalog:
    applications: dict[str, resources_pb2.Application] = field(default_factory=dict)
    services: dict[ServiceKey, resources_pb2.Service] = field(default_factory=dict)
    runtimes: dict[str, RuntimeRecord] = field(default_factory=dict)
    protections: dict[str, resources_pb2.Protection] = field(default_factory=dict)
    releases: dict[str, ReleaseRecord] = field(default_factory=dict)
    """By release id (ids are unique across services)."""
    paused: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """Reason per paused (application, service, channel); channel "" = every channel."""
    resources: dict[tuple[int, str, str], resources_pb2.Resource] = field(default_factory=dict)
    """By (scope, application, name), as the API keeps them (services.resourceenv.visible)."""

    def resource(self, app: str, name: str) -> resources_pb2.Resource | None:
        """The resource `name` as application `app` sees it (render's lookup)."""
        return resourceenv.visible(self.resources, app, name)

    def channel(self, app: str, name: str) -> resources_pb2.ReleaseChannel | None:
        application = self.applications.get(app)
        if application is None:
            return None
        for channel in application.release_channels:
            if channel.name == name:
                return channel
        return None

    def services_of(self, app: str) -> list[str]:
        return sorted(name for (owner, name) in self.services if owner == app)

    def pause_reason(self, app: str, service: str, channel: str) -> str | None:
        """Why the convergence is paused (service-wide or this channel), or None."""
        for key in ((app, service, ""), (app, service, channel)):
            if key in self.paused:
                return self.paused[key] or "paused"
        return None

    def runtime_paused(self, name: str) -> bool:
        record = self.runtimes.get(name)
        return record is not None and record.paused

    def auto_rollback(self, service: resources_pb2.Service, runtimes: list[str]) -> bool:
        """Automatic rollback is on unless the service or one of the runtimes turned it off."""
        if service.auto_rollback_disabled:
            return False
        return not any(r in self.runtimes and self.runtimes[r].runtime.auto_rollback_disabled for r in runtimes)


def fold_catalog(catalog: Catalog, message: object, *, actor: str, at: datetime) -> bool:
    """Apply a declaration or human decision to the catalog. Returns False when the
    message is not one the catalog keeps (the engine handles it, or nobody does)."""
    if isinstance(message, events_pb2.ApplicationCreated | events_pb2.ApplicationUpdated):
        catalog.applications[message.application.name] = message.application
    elif isinstance(message, events_pb2.ApplicationDeleted):
        catalog.applications.pop(message.name, None)
        for key in [k for k in catalog.services if k[0] == message.name]:
            del catalog.services[key]
        for rkey in [k for k in catalog.resources if k[0] == resources_pb2.RESOURCE_SCOPE_APPLICATION and k[1] == message.name]:
            del catalog.resources[rkey]
    elif isinstance(message, events_pb2.ServiceConfigured):
        service = message.service
        catalog.services[(service.application, service.name)] = service
    elif isinstance(message, events_pb2.ServiceDeleted):
        catalog.services.pop((message.application, message.name), None)
    elif isinstance(message, events_pb2.RuntimeRegistered | events_pb2.RuntimeUpdated):
        record = catalog.runtimes.get(message.runtime.name)
        if record is None:
            catalog.runtimes[message.runtime.name] = RuntimeRecord(message.runtime)
        else:
            record.runtime = message.runtime
    elif isinstance(message, events_pb2.RuntimeLabelled):
        if message.name in catalog.runtimes:
            runtime = resources_pb2.Runtime()
            runtime.CopyFrom(catalog.runtimes[message.name].runtime)
            runtime.labels.clear()
            runtime.labels.update(message.labels)
            catalog.runtimes[message.name].runtime = runtime
    elif isinstance(message, events_pb2.RuntimePaused):
        if message.name in catalog.runtimes:
            catalog.runtimes[message.name].paused = True
            catalog.runtimes[message.name].pause_reason = message.reason
    elif isinstance(message, events_pb2.RuntimeResumed):
        if message.name in catalog.runtimes:
            catalog.runtimes[message.name].paused = False
            catalog.runtimes[message.name].pause_reason = ""
    elif isinstance(message, events_pb2.RuntimeDeregistered):
        catalog.runtimes.pop(message.name, None)
    elif isinstance(message, events_pb2.ProtectionConfigured):
        catalog.protections[message.protection.name] = message.protection
    elif isinstance(message, events_pb2.ProtectionDeleted):
        catalog.protections.pop(message.name, None)
    elif isinstance(message, events_pb2.ReleaseCreated):
        catalog.releases[message.release.id] = ReleaseRecord(message.release, created_by=actor, created_at=at)
    elif isinstance(message, events_pb2.ApprovalGranted):
        record = catalog.releases.get(message.release_id)
        if record is not None:
            given = record.approvals.setdefault((message.channel, message.approval), [])
            if all(a.approver != message.approver for a in given):
                given.append(Approval(message.approver, at, message.comment))
    elif isinstance(message, events_pb2.ApprovalRejected):
        record = catalog.releases.get(message.release_id)
        if record is not None:
            record.rejections.setdefault((message.channel, message.approval), (message.approver, message.reason))
    elif isinstance(message, events_pb2.BypassGranted):
        record = catalog.releases.get(message.release_id)
        if record is not None:
            record.bypasses[(message.channel, message.target)] = (actor, message.reason)
    elif isinstance(message, events_pb2.ResourceLinked):
        resource = message.resource
        if resource.scope != resources_pb2.RESOURCE_SCOPE_APPLICATION or resource.application in catalog.applications:
            catalog.resources[(resource.scope, resource.application, resource.name)] = resource
    elif isinstance(message, events_pb2.ResourceUnlinked):
        catalog.resources.pop((message.scope, message.application, message.name), None)
    elif isinstance(message, events_pb2.ConvergencePaused):
        catalog.paused[(message.application, message.service, message.channel)] = message.reason
    elif isinstance(message, events_pb2.ConvergenceResumed):
        if message.channel:
            catalog.paused.pop((message.application, message.service, message.channel), None)
        else:
            for key in [k for k in catalog.paused if k[:2] == (message.application, message.service)]:
                del catalog.paused[key]
    else:
        return False
    return True
