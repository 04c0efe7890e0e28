"""LinkResource and UnlinkResource: external things services use.

A resource (a database, a queue, a registry, a ticketing system) is linked either at
infrastructure level, where every application sees it, or to one application, which
alone sees it. Resources are unique by (scope, application, name). Linking the same
resource again with the same content records nothing; linking it with new content
records the new link. A resource a service still depends on cannot be unlinked — unless
the service would still see another resource of that name (an application resource
shadowing an infrastructure one).

Attributes reach the services that use the resource as environment (services.resourceenv:
`CONVOY_RESOURCE_<NAME>_<ATTRIBUTE>` and explicit mappings); secret attributes are
references (`SecretRef`), never values. An attribute is plain or secret, not both, and a
link whose attributes would give a service that sees it two values for one variable is
refused here, naming the service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
import services.resourceenv as resourceenv
from services.api.domain import streams
from services.api.domain.commands import Command, Decision, clean
from services.api.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Problems
from services.api.domain.secretrefs import check_refs
from services.api.domain.state import State, without
from services.api.domain.validation import MAX_VALUE, check_enum, check_labels, check_name, listing, q

SCOPES: Final[Mapping[int, str]] = {
    resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE: "RESOURCE_SCOPE_INFRASTRUCTURE",
    resources_pb2.RESOURCE_SCOPE_APPLICATION: "RESOURCE_SCOPE_APPLICATION",
}
_APP: Final = resources_pb2.RESOURCE_SCOPE_APPLICATION


def _check_scope(problems: Problems, prefix: str, scope: int, application: str) -> None:
    if not check_enum(problems, f"{prefix}scope", scope, SCOPES, required=True, what="resource scope"):
        return
    if scope == _APP:
        if not application:
            problems.add(f"{prefix}application", "required when scope is RESOURCE_SCOPE_APPLICATION")
        else:
            check_name(problems, f"{prefix}application", application, what="application name")
    elif application:
        problems.add(
            f"{prefix}application",
            "must be empty for RESOURCE_SCOPE_INFRASTRUCTURE (every application sees it); use "
            "RESOURCE_SCOPE_APPLICATION to link it to one application",
        )


def link_resource(state: State, request: api_pb2.LinkResourceRequest, command: Command) -> Decision:
    if not request.HasField("resource"):
        raise InvalidArgument.at("resource", "required: the resource to link")
    resource = clean(request.resource)
    problems = Problems()
    check_name(problems, "resource.name", resource.name, what="resource name")
    _check_scope(problems, "resource.", resource.scope, resource.application)
    if resource.kind:
        check_name(problems, "resource.kind", resource.kind, what="resource kind (e.g. database, queue)")
    check_labels(problems, "resource.attributes", {k: "" for k in resource.attributes})
    if any(len(v) > MAX_VALUE for v in resource.attributes.values()):
        problems.add("resource.attributes", f"an attribute value is longer than {MAX_VALUE} characters")
    check_labels(problems, "resource.secret_attributes", {k: "" for k in resource.secret_attributes})
    check_refs(problems, "resource.secret_attributes", resource.secret_attributes)
    for name in sorted(set(resource.attributes) & set(resource.secret_attributes)):
        problems.add(
            f"resource.secret_attributes[{q(name)}]",
            f"attribute {q(name)} is also a plain attribute; an attribute is either plain or secret",
        )
    problems.raise_if_any()
    if resource.scope == _APP and resource.application not in state.applications:
        raise NotFound(f"resource.application: application {q(resource.application)} does not exist; apply it first")
    key = (resource.scope, resource.application, resource.name)
    if state.resources.get(key) == resource:
        return Decision.unchanged()
    _check_users(dataclasses.replace(state, resources={**state.resources, key: resource}), resource)
    stream = streams.resource(resource.scope, resource.application, resource.name)
    return Decision.of(stream, events_pb2.ResourceLinked(resource=resource))


def unlink_resource(state: State, request: api_pb2.UnlinkResourceRequest, command: Command) -> Decision:
    problems = Problems()
    check_name(problems, "name", request.name, what="resource name")
    _check_scope(problems, "", request.scope, request.application)
    problems.raise_if_any()
    key = (request.scope, request.application, request.name)
    if key not in state.resources:
        where = f"application {q(request.application)}" if request.scope == _APP else "infrastructure level"
        raise NotFound(f"resource {q(request.name)} is not linked at {where}")
    after = dataclasses.replace(state, resources=without(state.resources, key))
    users = sorted(
        f"{app}/{name}"
        for (app, name), service in state.services.items()
        if request.name in service.resources and after.visible_resource(app, request.name) is None
    )
    if users:
        raise FailedPrecondition(
            f"resource {q(request.name)} is still used by services ({listing(users)}); remove it from "
            "their service.resources (ApplyService) first"
        )
    event = events_pb2.ResourceUnlinked(name=request.name, scope=request.scope, application=request.application)
    return Decision.of(streams.resource(request.scope, request.application, request.name), event)


def _check_users(after: State, resource: resources_pb2.Resource) -> None:
    """Every service that would see the new link must still get one value per variable."""
    problems = Problems()
    lookup = lambda app, name: resourceenv.visible(after.resources, app, name)  # noqa: E731
    for (app, name), service in sorted(after.services.items()):
        if resource.name not in service.resources or after.visible_resource(app, resource.name) is not resource:
            continue
        env = resourceenv.environment(service, lookup)
        found = env.problems + resourceenv.clashes_with_programs(service, env.names, env.sources)
        for _, message in found:
            problems.add("resource", f"service {app}/{name}: {message}")
    problems.raise_if_any()
