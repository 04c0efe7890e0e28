"""ApplyService and DeleteService.

A service is declared whole, like an application: applying the recorded configuration
again changes nothing. Everything it refers to must resolve within its application —
overrides name the application's channels, and every resource it uses must be visible to
it: infrastructure resources are visible to all applications, an application's own
resources only to that application (its own shadows an infrastructure one of the same
name). Using another application's resource is refused with a message that says how to
share it. A new service's name must start with a letter (it names a Kubernetes Service);
services already in the log keep theirs, and still apply.
"""

from __future__ import annotations

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
import services.resourceenv as resourceenv
from services.api.domain import follow, streams
from services.api.domain.commands import Command, Decision, clean
from services.api.domain.errors import InvalidArgument, NotFound, Problems
from services.api.domain.programs import check_program
from services.api.domain.state import State
from services.api.domain.validation import (
    MAX_DESCRIPTION,
    MAX_VALUE,
    check_duration,
    check_env,
    check_identifier,
    check_name,
    check_new_service_name,
    check_text,
    duplicates,
    listing,
    q,
)


def apply_service(state: State, request: api_pb2.ApplyServiceRequest, command: Command) -> Decision:
    if not request.HasField("service"):
        raise InvalidArgument.at("service", "required: the complete service declaration")
    service = clean(request.service)
    problems = Problems()
    check_name(problems, "service.application", service.application, what="application name")
    if check_name(problems, "service.name", service.name, what="service name"):
        if (service.application, service.name) not in state.services:
            check_new_service_name(problems, "service.name", service.name)
    _check_shape(problems, service)
    follow.check_shape(problems, service)
    problems.raise_if_any()

    application = state.applications.get(service.application)
    if application is None:
        raise NotFound(
            f"service.application: application {q(service.application)} does not exist; apply it first"
        )
    _check_references(problems, service, application, state)
    follow.check_references(problems, service, state)
    problems.raise_if_any()

    existing = state.services.get((service.application, service.name))
    if existing == service:
        return Decision.unchanged()
    event = events_pb2.ServiceConfigured(service=service, created=existing is None)
    return Decision.of(streams.service(service.application, service.name), event)


def delete_service(state: State, request: api_pb2.DeleteServiceRequest, command: Command) -> Decision:
    problems = Problems()
    check_name(problems, "application", request.application, what="application name")
    check_name(problems, "name", request.name, what="service name")
    problems.raise_if_any()
    if (request.application, request.name) not in state.services:
        raise NotFound(f"service {q(request.name)} of application {q(request.application)} does not exist")
    event = events_pb2.ServiceDeleted(application=request.application, name=request.name)
    return Decision.of(streams.service(request.application, request.name), event)


def _check_shape(problems: Problems, service: resources_pb2.Service) -> None:
    """Rules that need nothing but the declaration itself."""
    if not service.programs:
        problems.add("service.programs", "declare at least one program (an image or a command to run)")
    several = len(service.programs) > 1
    for i, program in enumerate(service.programs):
        check_program(problems, f"service.programs[{i}]", program, named=several)
    for name in duplicates(p.name for p in service.programs if p.name):
        problems.add("service.programs", f"program name {q(name)} is used twice")
    _check_shared_ports(problems, service)
    if service.replicas < 0:
        problems.add("service.replicas", "must be 0 or more")
    check_duration(problems, "service", service, "progress_deadline")
    for i, parameter in enumerate(service.parameters):
        at = f"service.parameters[{i}]"
        check_identifier(problems, f"{at}.name", parameter.name, what="parameter name")
        check_text(problems, f"{at}.description", parameter.description, limit=MAX_DESCRIPTION)
        if parameter.required and parameter.default:
            problems.add(
                f"{at}.default",
                "a required parameter has no default (every deploy must set it); remove the default "
                "or make the parameter optional",
            )
        if len(parameter.default) > MAX_VALUE:
            problems.add(f"{at}.default", f"is longer than {MAX_VALUE} characters")
    for name in duplicates(p.name for p in service.parameters):
        problems.add("service.parameters", f"parameter {q(name)} is declared twice")
    for i, name in enumerate(service.resources):
        check_name(problems, f"service.resources[{i}]", name, what="resource name")
    for name in duplicates(service.resources):
        problems.add("service.resources", f"resource {q(name)} is listed twice")
    for i, mapping in enumerate(service.resource_env):
        at = f"service.resource_env[{i}]"
        check_env(problems, f"{at}.env", {mapping.env: ""})
        check_name(problems, f"{at}.resource", mapping.resource, what="resource name")
        if not mapping.attribute or len(mapping.attribute) > 253:
            problems.add(f"{at}.attribute", "required: the attribute's name (at most 253 characters)")


def _check_shared_ports(problems: Problems, service: resources_pb2.Service) -> None:
    """A service's programs share one network (one Pod, one Kubernetes Service; one host for the
    local runtime): two programs cannot serve the same port, nor give two ports one name."""
    names = [name for program in service.programs for name in {p.name for p in program.ports if p.name}]
    for name in duplicates(names):
        problems.add(
            "service.programs",
            f"port name {q(name)} is declared by two programs; the ports of a service need distinct names",
        )
    ports = [
        number for program in service.programs
        for number in {f"{p.port}/{(p.protocol or 'TCP').upper()}" for p in program.ports}
    ]
    for number in duplicates(ports):
        problems.add("service.programs", f"port {number} is declared by two programs; a service serves each port once")


def _check_references(
    problems: Problems, service: resources_pb2.Service, application: resources_pb2.Application, state: State
) -> None:
    """Rules that resolve names against the application and the catalog."""
    channels = {c.name for c in application.release_channels}
    declared = {p.name for p in service.parameters}
    for i, override in enumerate(service.overrides):
        at = f"service.overrides[{i}]"
        if override.channel not in channels:
            problems.add(
                f"{at}.channel",
                f"{q(override.channel)} is not a channel of application {q(service.application)}; use one of: "
                f"{listing(channels)}",
            )
        if override.replicas < 0:
            problems.add(f"{at}.replicas", "must be 0 (no override) or more")
        check_env(problems, f"{at}.env", override.env)
        for key in sorted(override.parameters):
            if key not in declared:
                problems.add(
                    f"{at}.parameters[{q(key)}]",
                    f"parameter {q(key)} is not declared by the service; declare it in service.parameters "
                    f"(declared: {listing(declared)})",
                )
    for name in duplicates(o.channel for o in service.overrides):
        problems.add("service.overrides", f"channel {q(name)} is overridden twice; merge the overrides")
    for i, name in enumerate(service.resources):
        if state.visible_resource(service.application, name) is not None:
            continue
        owners = sorted(
            app for (scope, app, linked) in state.resources
            if scope == resources_pb2.RESOURCE_SCOPE_APPLICATION and linked == name
        )
        if owners:
            problems.add(
                f"service.resources[{i}]",
                f"resource {q(name)} belongs to application {q(owners[0])} and is not visible to "
                f"{q(service.application)}; link it to {q(service.application)} or at infrastructure level",
            )
        else:
            problems.add(
                f"service.resources[{i}]",
                f"resource {q(name)} is not linked; link it (LinkResource) to application "
                f"{q(service.application)} or at infrastructure level",
            )
    env = resourceenv.environment(service, lambda app, name: resourceenv.visible(state.resources, app, name))
    for at, message in env.problems:  # (visibility is reported above, with how to fix it)
        problems.add(at, message)
    for at, message in resourceenv.clashes_with_programs(service, env.names, env.sources):
        problems.add(at, message)
