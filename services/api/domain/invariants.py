"""What must hold for every catalog `decide` lets the log reach.

`decide` enforces these one command at a time; this module states them over a whole
`State`, so property tests can check them after any sequence of commands and an
operator tool can audit a replayed catalog. Each violation is a sentence naming the
offending thing; an empty list means the catalog is consistent.
"""

from __future__ import annotations

from schemas.convoy.v1 import resources_pb2
from services.api.domain.channels import manual_approvals, precondition_cycle, stable_dependencies
from services.api.domain.state import State, find_channel


def catalog_violations(state: State) -> list[str]:
    found: list[str] = []
    found += _application_violations(state)
    found += _service_violations(state)
    found += _resource_violations(state)
    found += _release_violations(state)
    return found


def _application_violations(state: State) -> list[str]:
    found: list[str] = []
    for name, app in sorted(state.applications.items()):
        channels = [c.name for c in app.release_channels]
        if len(set(channels)) != len(channels):
            found.append(f"application {name}: duplicate channel names {channels}")
        for channel in app.release_channels:
            where = f"{name}/{channel.name}"
            for binding in channel.runtimes:
                if binding.runtime not in state.runtimes:
                    found.append(f"channel {where} binds unregistered runtime {binding.runtime!r}")
            for dependency in stable_dependencies(channel):
                if dependency not in channels or dependency == channel.name:
                    found.append(f"channel {where} waits for {dependency!r}, not another channel of {name}")
            for attachment in channel.protections:
                if attachment.protection not in state.protections:
                    found.append(f"channel {where} attaches undefined protection {attachment.protection!r}")
            approvals = [a.name for a in manual_approvals(channel)]
            if len(set(approvals)) != len(approvals):
                found.append(f"channel {where} has duplicate approval names {approvals}")
        cycle = precondition_cycle({c.name: stable_dependencies(c) for c in app.release_channels})
        if cycle is not None:
            found.append(f"application {name}: channel_stable cycle {' -> '.join(cycle)}")
    return found


def _service_violations(state: State) -> list[str]:
    found: list[str] = []
    for (app_name, name), service in sorted(state.services.items()):
        where = f"service {app_name}/{name}"
        app = state.applications.get(app_name)
        if app is None:
            found.append(f"{where} belongs to missing application {app_name!r}")
            continue
        for override in service.overrides:
            if find_channel(app, override.channel) is None:
                found.append(f"{where} overrides unknown channel {override.channel!r}")
        for resource in service.resources:
            if state.visible_resource(app_name, resource) is None:
                found.append(f"{where} uses resource {resource!r}, which it cannot see")
    return found


def _resource_violations(state: State) -> list[str]:
    found: list[str] = []
    for (scope, app, name), resource in sorted(state.resources.items()):
        if resource.name != name or resource.scope != scope:
            found.append(f"resource {name!r} is stored under the wrong key")
        if scope == resources_pb2.RESOURCE_SCOPE_APPLICATION and app not in state.applications:
            found.append(f"resource {name!r} belongs to missing application {app!r}")
        if scope == resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE and (app or resource.application):
            found.append(f"infrastructure resource {name!r} names application {resource.application!r}")
    return found


def _release_violations(state: State) -> list[str]:
    found: list[str] = []
    for (app, service), history in sorted(state.releases.items()):
        if (app, service) not in state.services:
            found.append(f"releases kept for missing service {app}/{service}")
        versions = [history.by_id[i].release.version for i in history.order]
        if len(set(versions)) != len(versions) or set(history.order) != set(history.by_id):
            found.append(f"service {app}/{service} has duplicate release versions or ids")
    for app, service, channel in sorted(state.paused_convergences):
        application = state.applications.get(app)
        if (app, service) not in state.services or application is None:
            found.append(f"paused convergence for missing service {app}/{service}")
        elif channel and find_channel(application, channel) is None:
            found.append(f"paused convergence of {app}/{service} in unknown channel {channel!r}")
    return found
