"""Read methods: answers computed from the projected catalog, never from the log directly.

Each query is a plain function of (State, request) so it reads one consistent snapshot
(a State is immutable) and is trivial to test. The handler layer has already waited
for `min_position` when the request carries one. Lists are sorted by their natural key
and paginated with `services.api.paging`; releases list in creation order, which is
also their key. Secrets and their hashes never leave through a query.

The runtime reads also tell what the answering process last heard from each runtime's
agent (`RuntimeState.agent`, from the heartbeats ingest keeps in memory): an
`AgentLookup` passed in where the server is composed (`with_agents`). Reads `as_of` a
past position leave it out — a heartbeat is now, not then.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.domain import NotFound, State
from services.api.domain.errors import Problems
from services.api.domain.state import RuntimeRecord, TokenRecord
from services.api.domain.tokens import ROLES_BY_NAME
from services.api.domain.validation import check_name, q
from services.api.paging import paginate

if TYPE_CHECKING:
    from services.api.ingest import HeartbeatSeen

AgentLookup = Callable[[str], "api_pb2.RuntimeState.Agent | None"]
"""What this process last heard from a runtime's agent (None: no heartbeat)."""

_INFRA = resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE
_APP = resources_pb2.RESOURCE_SCOPE_APPLICATION


def _names(**fields: str) -> None:
    problems = Problems()
    for field, value in fields.items():
        check_name(problems, field, value, what=f"{field} name" if field != "name" else "name")
    problems.raise_if_any()


def _copy(message: Message) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _application(state: State, name: str) -> resources_pb2.Application:
    found = state.applications.get(name)
    if found is None:
        raise NotFound(f"application {q(name)} does not exist")
    return found


def get_application(state: State, request: api_pb2.GetApplicationRequest) -> resources_pb2.Application:
    _names(name=request.name)
    return _copy(_application(state, request.name))


def list_applications(state: State, request: api_pb2.ListApplicationsRequest) -> api_pb2.ListApplicationsResponse:
    page, token = paginate(list(state.applications.values()), lambda a: (a.name,), request.page, "applications")
    return api_pb2.ListApplicationsResponse(applications=page, next_page_token=token)


def get_service(state: State, request: api_pb2.GetServiceRequest) -> resources_pb2.Service:
    _names(application=request.application, name=request.name)
    _application(state, request.application)
    found = state.services.get((request.application, request.name))
    if found is None:
        raise NotFound(f"service {q(request.name)} of application {q(request.application)} does not exist")
    return _copy(found)


def list_services(state: State, request: api_pb2.ListServicesRequest) -> api_pb2.ListServicesResponse:
    _names(application=request.application)
    _application(state, request.application)
    owned = [s for (app, _), s in state.services.items() if app == request.application]
    page, token = paginate(owned, lambda s: (s.name,), request.page, f"services/{request.application}")
    return api_pb2.ListServicesResponse(services=page, next_page_token=token)


def no_agents(_runtime: str) -> None:
    """The AgentLookup of a process that hears no heartbeats."""
    return None


def agent_state(seen: HeartbeatSeen | None, *, now: float) -> api_pb2.RuntimeState.Agent | None:
    """A heartbeat as the API tells it, `now` being `time.monotonic()`."""
    if seen is None:
        return None
    agent = api_pb2.RuntimeState.Agent(
        connected=seen.connected(now),
        agent_id=seen.agent_id,
        workloads=seen.workloads,
        runtime_availability=seen.runtime_availability,  # type: ignore[arg-type]
        runtime_error=seen.runtime_error,
    )
    agent.last_seen.FromDatetime(seen.received_at)
    agent.last_seen_ago.FromTimedelta(timedelta(seconds=round(seen.age(now), 3)))
    if seen.runtime_unavailable_since is not None:
        agent.runtime_unavailable_since.FromDatetime(seen.runtime_unavailable_since)
    return agent


def _runtime_state(record: RuntimeRecord, agents: AgentLookup) -> api_pb2.RuntimeState:
    answer = api_pb2.RuntimeState(
        runtime=record.runtime,
        paused=record.paused,
        pause_reason=record.pause_reason,
        credential_generation=record.credential_generation,
    )
    agent = agents(record.runtime.name)
    if agent is not None:
        answer.agent.CopyFrom(agent)
    return answer


def get_runtime(
    state: State, request: api_pb2.GetRuntimeRequest, agents: AgentLookup = no_agents
) -> api_pb2.RuntimeState:
    _names(name=request.name)
    found = state.runtimes.get(request.name)
    if found is None:
        raise NotFound(f"runtime {q(request.name)} does not exist")
    return _runtime_state(found, no_agents if request.HasField("as_of") else agents)


def list_runtimes(
    state: State, request: api_pb2.ListRuntimesRequest, agents: AgentLookup = no_agents
) -> api_pb2.ListRuntimesResponse:
    page, token = paginate(list(state.runtimes.values()), lambda r: (r.runtime.name,), request.page, "runtimes")
    heard = no_agents if request.HasField("as_of") else agents
    return api_pb2.ListRuntimesResponse(runtimes=[_runtime_state(r, heard) for r in page], next_page_token=token)


def list_protections(state: State, request: api_pb2.ListProtectionsRequest) -> api_pb2.ListProtectionsResponse:
    page, token = paginate(list(state.protections.values()), lambda p: (p.name,), request.page, "protections")
    return api_pb2.ListProtectionsResponse(protections=page, next_page_token=token)


def list_registries(state: State, request: api_pb2.ListRegistriesRequest) -> api_pb2.ListRegistriesResponse:
    page, token = paginate(list(state.registries.values()), lambda r: (r.name,), request.page, "registries")
    return api_pb2.ListRegistriesResponse(registries=page, next_page_token=token)


def list_resources(state: State, request: api_pb2.ListResourcesRequest) -> api_pb2.ListResourcesResponse:
    """Infrastructure resources, or what one application sees: its own resources plus
    the infrastructure ones it does not shadow with its own of the same name."""
    app = request.application
    if not app:
        visible = [r for (scope, _, _), r in state.resources.items() if scope == _INFRA]
    else:
        _names(application=app)
        _application(state, app)
        own = {name: r for (scope, owner, name), r in state.resources.items() if scope == _APP and owner == app}
        infra = [r for (scope, _, name), r in state.resources.items() if scope == _INFRA and name not in own]
        visible = [*own.values(), *infra]
    page, token = paginate(visible, lambda r: (r.scope, r.name), request.page, f"resources/{app}")
    return api_pb2.ListResourcesResponse(resources=page, next_page_token=token)


def list_releases(state: State, request: api_pb2.ListReleasesRequest) -> api_pb2.ListReleasesResponse:
    _names(application=request.application, service=request.service)
    _application(state, request.application)
    if (request.application, request.service) not in state.services:
        raise NotFound(f"service {q(request.service)} of application {q(request.application)} does not exist")
    history = state.releases_of(request.application, request.service)
    indexed = [(i, history.by_id[rid].release) for i, rid in enumerate(history.order)]
    page, token = paginate(
        indexed, lambda item: (item[0],), request.page, f"releases/{request.application}/{request.service}"
    )
    return api_pb2.ListReleasesResponse(releases=[r for _, r in page], next_page_token=token)


def _token_info(t: TokenRecord) -> api_pb2.TokenInfo:
    info = api_pb2.TokenInfo(
        token_id=t.token_id,
        name=t.name,
        role=ROLES_BY_NAME.get(t.role, 0),
        revoked=t.revoked,
        scope=resources_pb2.TokenScope(applications=list(t.scope_applications), channels=list(t.scope_channels)),
        owner=t.principal,
    )
    if t.expires_at is not None:
        info.expires_at.FromDatetime(t.expires_at)
    return info


def list_tokens(state: State, request: api_pb2.ListTokensRequest) -> api_pb2.ListTokensResponse:
    page, token = paginate(list(state.tokens.values()), lambda t: (t.token_id,), request.page, "tokens")
    return api_pb2.ListTokensResponse(
        tokens=[
            _token_info(t)
            for t in page
        ],
        next_page_token=token,
    )


QUERIES: Final[dict[str, Callable[[State, Any], Message]]] = {
    "GetApplication": get_application,
    "ListApplications": list_applications,
    "GetService": get_service,
    "ListServices": list_services,
    "GetRuntime": get_runtime,
    "ListRuntimes": list_runtimes,
    "ListProtections": list_protections,
    "ListRegistries": list_registries,
    "ListResources": list_resources,
    "ListReleases": list_releases,
    "ListTokens": list_tokens,
}
"""Read methods answered from the catalog, by method name (events are in `events`)."""


def with_agents(agents: AgentLookup) -> dict[str, Callable[[State, Any], Message]]:
    """QUERIES, with the runtime reads telling what `agents` heard from each agent."""
    return {
        **QUERIES,
        "GetRuntime": functools.partial(get_runtime, agents=agents),
        "ListRuntimes": functools.partial(list_runtimes, agents=agents),
    }


def min_position(request: Message) -> int:
    """The position a read must see: `min_position` or `page.min_position`, if any."""
    fields = request.DESCRIPTOR.fields_by_name
    if "min_position" in fields:
        return int(getattr(request, "min_position"))
    if "page" in fields:
        return int(getattr(request, "page").min_position)
    return 0
