"""ApplyApplication and DeleteApplication.

Applying is declarative: the request holds the complete application, and applying
exactly what is recorded changes nothing (no event, `changed=false`), so a config repo
can be applied on every commit. An update may not pull a channel out from under a
service that still overrides it, and an application can only be deleted once it has no
services and no application-scoped resources: deleting never silently takes live
deployments or linked systems with it.
"""

from __future__ import annotations

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import streams
from services.api.domain.channels import check_channels
from services.api.domain.commands import Command, Decision, clean
from services.api.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Problems
from services.api.domain.integrations import check_github_deployments
from services.api.domain.state import State
from services.api.domain.validation import MAX_DESCRIPTION, check_labels, check_name, check_text, listing, q

APP_SCOPE = resources_pb2.RESOURCE_SCOPE_APPLICATION


def apply_application(state: State, request: api_pb2.ApplyApplicationRequest, command: Command) -> Decision:
    if not request.HasField("application"):
        raise InvalidArgument.at("application", "required: the complete application declaration")
    app = clean(request.application)
    problems = Problems()
    check_name(problems, "application.name", app.name, what="application name")
    check_text(problems, "application.description", app.description, limit=MAX_DESCRIPTION)
    check_labels(problems, "application.labels", app.labels)
    check_channels(problems, "application.release_channels", app, state)
    if app.HasField("github_deployments"):
        channels = {c.name for c in app.release_channels}
        check_github_deployments(problems, "application.github_deployments", app.github_deployments, channels)
    problems.raise_if_any()

    existing = state.applications.get(app.name)
    if existing == app:
        return Decision.unchanged()
    stream = streams.application(app.name)
    if existing is None:
        return Decision.of(stream, events_pb2.ApplicationCreated(application=app))
    channels = {c.name for c in app.release_channels}
    for service_name in state.services_of(app.name):
        service = state.services[(app.name, service_name)]
        for override in service.overrides:
            if override.channel not in channels:
                raise FailedPrecondition(
                    f"application.release_channels: channel {q(override.channel)} cannot be removed: service "
                    f"{q(service_name)} overrides it; remove that override (ApplyService) first"
                )
    return Decision.of(stream, events_pb2.ApplicationUpdated(application=app))


def delete_application(state: State, request: api_pb2.DeleteApplicationRequest, command: Command) -> Decision:
    problems = Problems()
    check_name(problems, "name", request.name, what="application name")
    problems.raise_if_any()
    if request.name not in state.applications:
        raise NotFound(f"application {q(request.name)} does not exist")
    services = state.services_of(request.name)
    if services:
        raise FailedPrecondition(
            f"application {q(request.name)} still has services ({listing(services)}); delete them first"
        )
    resources = sorted(name for (scope, app, name) in state.resources if scope == APP_SCOPE and app == request.name)
    if resources:
        raise FailedPrecondition(
            f"application {q(request.name)} still has linked resources ({listing(resources)}); unlink them first"
        )
    return Decision.of(streams.application(request.name), events_pb2.ApplicationDeleted(name=request.name))
