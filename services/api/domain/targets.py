"""Resolving what a release-level command names: a service, a channel, a release.

Deploy, approve, reject, bypass, pause, resume and roll back all start the same way —
the named service must exist, a named channel must be one of its application's, and a
release id (or, when empty, the service's latest release) must be one of that service's
releases. Doing it in one place keeps the error messages identical across commands.
"""

from __future__ import annotations

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import FailedPrecondition, NotFound, Problems
from services.api.domain.state import ReleaseRecord, State, find_channel
from services.api.domain.validation import check_name, listing, q


def existing_service(state: State, app: str, service: str) -> resources_pb2.Service:
    problems = Problems()
    check_name(problems, "application", app, what="application name")
    check_name(problems, "service", service, what="service name")
    problems.raise_if_any()
    found = state.services.get((app, service))
    if found is None:
        if app not in state.applications:
            raise NotFound(f"application {q(app)} does not exist")
        raise NotFound(
            f"service {q(service)} of application {q(app)} does not exist; services: "
            f"{listing(state.services_of(app))}"
        )
    return found


def existing_channel(state: State, app: str, channel: str, *, field: str = "channel") -> resources_pb2.ReleaseChannel:
    problems = Problems()
    check_name(problems, field, channel, what="channel name")
    problems.raise_if_any()
    application = state.applications[app]
    found = find_channel(application, channel)
    if found is None:
        raise NotFound(
            f"{field}: application {q(app)} has no channel {q(channel)}; channels: "
            f"{listing(c.name for c in application.release_channels)}"
        )
    return found


def resolve_release(
    state: State, app: str, service: str, release_id: str, *, field: str = "release_id"
) -> ReleaseRecord:
    """The named release of the service, or its latest when `release_id` is empty."""
    history = state.releases_of(app, service)
    if not release_id:
        latest = history.latest
        if latest is None:
            raise FailedPrecondition(f"service {app}/{service} has no releases yet; deploy one first")
        return latest
    record = history.by_id.get(release_id)
    if record is None:
        raise NotFound(f"{field}: release {q(release_id)} is not a release of service {app}/{service}")
    return record
