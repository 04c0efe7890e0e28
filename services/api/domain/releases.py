"""Deploy and Rollback: creating an immutable release, and asking to go back to one.

A release freezes what will run: the service's configuration at deploy time, with the
requested image and parameter values applied, under a version label that is unique per
service (redeploying "v2" is refused rather than silently meaning something else). The
release id is minted by the shell. Which channels a release reaches, in which order and
behind which protections, is the planner's business; so is what "the last converged
release" is for a rollback without a target.
"""

from __future__ import annotations

import re
from typing import Final

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import images, streams
from services.api.domain.commands import Command, Decision, clean
from services.api.domain.errors import AlreadyExists, BadCommandContext, InvalidArgument, Problems
from services.api.domain.programs import check_image
from services.api.domain.state import State
from services.api.domain.targets import existing_channel, existing_service, resolve_release
from services.api.domain.validation import MAX_REASON, MAX_VALUE, check_text, duplicates, listing, q

_VERSION: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def deploy(state: State, request: api_pb2.DeployRequest, command: Command) -> Decision:
    service = existing_service(state, request.application, request.service)
    problems = Problems()
    if not request.version:
        problems.add("version", "required: a label for this version, e.g. \"v2\" or a commit hash")
    elif _VERSION.fullmatch(request.version) is None:
        problems.add(
            "version",
            f"{q(request.version)} is not a valid version: letters, digits, '.', '_', '+', '-', "
            "starting with a letter or digit, at most 128 characters",
        )
    if request.image:
        if len(service.programs) != 1:
            problems.add(
                "image",
                f"service {request.application}/{request.service} has {len(service.programs)} programs "
                f"({listing(p.name for p in service.programs)}); `image` only replaces the image of a "
                "single-program service — set each program's image with ApplyService instead",
            )
        else:
            check_image(problems, "image", request.image)
    parameters = _parameter_values(problems, service, dict(request.parameters))
    problems.raise_if_any()

    history = state.releases_of(request.application, request.service)
    if history.with_version(request.version) is not None:
        raise AlreadyExists(
            f"version: service {request.application}/{request.service} already has a release {q(request.version)}; "
            "versions are unique per service — deploy it under a new version"
        )
    release_id = command.minted.release_id
    if not release_id or len(release_id) > 200 or release_id in history.by_id:
        raise BadCommandContext("Deploy needs a fresh Minted.release_id (use Minted.fresh())")

    config = release_config(service, request)
    pins = images.pin(state, config, parameters, command.images)
    release = resources_pb2.Release(
        id=release_id,
        application=request.application,
        service=request.service,
        version=request.version,
        config=config,
        parameters=parameters,
        created_by=command.actor,
        images=pins,
    )
    stream = streams.releases(request.application, request.service)
    return Decision.of(stream, events_pb2.ReleaseCreated(release=release), clean(release))


def release_config(service: resources_pb2.Service, request: api_pb2.DeployRequest) -> resources_pb2.Service:
    """The configuration a Deploy freezes: the service's, with the requested image."""
    config = clean(service)
    if request.image and len(config.programs) == 1:
        config.programs[0].image = request.image
    return config


def deploy_images(state: State, request: api_pb2.DeployRequest) -> list[images.Wanted]:
    """The registry images a Deploy would pin (what the shell resolves before deciding);
    empty when the request is refused anyway (decide says why)."""
    service = state.services.get((request.application, request.service))
    if service is None:
        return []
    parameters = {p.name: request.parameters.get(p.name) or p.default for p in service.parameters}
    try:
        return [w for w in images.wanted(state, release_config(service, request), parameters) if w.reference.digest is None]
    except InvalidArgument:
        return []


def _parameter_values(problems: Problems, service: resources_pb2.Service, given: dict[str, str]) -> dict[str, str]:
    """Declared defaults overlaid with the given values; unknown or missing ones reported."""
    declared = {p.name: p for p in service.parameters}
    for name in sorted(given):
        if name not in declared:
            problems.add(
                f"parameters[{q(name)}]",
                f"service {service.application}/{service.name} declares no parameter {q(name)}; "
                f"declared: {listing(declared)}",
            )
        elif len(given[name]) > MAX_VALUE:
            problems.add(f"parameters[{q(name)}]", f"is longer than {MAX_VALUE} characters")
    for name, parameter in declared.items():
        if parameter.required and not given.get(name):
            problems.add(f"parameters[{q(name)}]", f"required parameter {q(name)} is missing; set a value")
    return {name: given.get(name) or parameter.default for name, parameter in declared.items()}


def rollback(state: State, request: api_pb2.RollbackRequest, command: Command) -> Decision:
    existing_service(state, request.application, request.service)
    problems = Problems()
    check_text(problems, "reason", request.reason, limit=MAX_REASON, required=True)
    for name in duplicates(request.channels):
        problems.add("channels", f"channel {q(name)} is listed twice")
    problems.raise_if_any()
    for i, channel in enumerate(request.channels):
        existing_channel(state, request.application, channel, field=f"channels[{i}]")
    resolve_release(state, request.application, request.service, request.target_release_id, field="target_release_id")
    event = events_pb2.RollbackRequested(
        application=request.application,
        service=request.service,
        channels=list(request.channels),
        target_release_id=request.target_release_id,
        reason=request.reason,
    )
    return Decision.of(streams.releases(request.application, request.service), event)
