"""Reads several views share: the whole catalog, walked page by page through the API."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.paging import MAX_PAGE_SIZE
from services.api.ui import present
from services.api.ui.client import UiClient


@dataclass(frozen=True, slots=True)
class Page:
    """What a view hands its template: the template's name, a title and plain data."""

    template: str
    title: str
    data: Mapping[str, Any] = field(default_factory=dict)
    position: int = 0
    """The log position the page shows (its live stream continues from here)."""


async def applications(client: UiClient) -> list[resources_pb2.Application]:
    out: list[resources_pb2.Application] = []
    token = ""
    while True:
        answer = await client.read(
            "ListApplications", api_pb2.ListApplicationsRequest(page=api_pb2.PageRequest(page_size=MAX_PAGE_SIZE, page_token=token))
        )
        assert isinstance(answer, api_pb2.ListApplicationsResponse)
        out.extend(answer.applications)
        token = answer.next_page_token
        if not token:
            return out


async def services(client: UiClient, application: str) -> list[resources_pb2.Service]:
    out: list[resources_pb2.Service] = []
    token = ""
    while True:
        answer = await client.read(
            "ListServices",
            api_pb2.ListServicesRequest(
                application=application, page=api_pb2.PageRequest(page_size=MAX_PAGE_SIZE, page_token=token)
            ),
        )
        assert isinstance(answer, api_pb2.ListServicesResponse)
        out.extend(answer.services)
        token = answer.next_page_token
        if not token:
            return out


async def convergence(client: UiClient, application: str, service: str = "") -> api_pb2.GetConvergenceResponse:
    answer = await client.read("GetConvergence", api_pb2.GetConvergenceRequest(application=application, service=service))
    assert isinstance(answer, api_pb2.GetConvergenceResponse)
    return answer


async def fleet_convergence(
    client: UiClient, apps: list[resources_pb2.Application]
) -> tuple[dict[str, list[api_pb2.ChannelConvergence]], int]:
    """Every application's convergence, and the position of the last answer."""
    converged: dict[str, list[api_pb2.ChannelConvergence]] = {}
    position = client.api.position
    for app in apps:
        answer = await convergence(client, app.name)
        converged[app.name] = list(answer.channels)
        position = answer.position
    return converged, position


def only_approval(names: list[str]) -> str:
    """The approval the dialog names: the channel's only manual approval, else "" (the API
    then asks which)."""
    return names[0] if len(names) == 1 else ""


def countdowns(why: api_pb2.Explanation | None, now: datetime, live: bool) -> dict[str, int | None]:
    """Seconds left of the soak and until the deploy window opens, for a live page."""
    if why is None or not live:
        return {"soak_left": None, "window_in": None}
    return {
        "soak_left": present.seconds_until(why.soak_ends_at, now),
        "window_in": present.seconds_until(why.window_opens_at, now),
    }


def payload(event: api_pb2.Event) -> dict[str, Any]:
    """An event's payload as a dict ({} when this build could not read it)."""
    if not event.json:
        return {}
    try:
        value = json.loads(event.json)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def short_type(event_type: str) -> str:
    return event_type.rsplit(".", 1)[-1]


def pipeline(application: resources_pb2.Application) -> list[resources_pb2.ReleaseChannel]:
    """The channels in promotion order: a channel after every channel it waits for
    (channelStable preconditions), otherwise as declared."""
    by_name = {c.name: c for c in application.release_channels}
    after: dict[str, set[str]] = {
        c.name: {p.channel_stable.channel for p in c.preconditions if p.WhichOneof("kind") == "channel_stable"} & set(by_name)
        for c in application.release_channels
    }
    ordered: list[resources_pb2.ReleaseChannel] = []
    placed: set[str] = set()
    while len(ordered) < len(by_name):
        ready = [c for c in application.release_channels if c.name not in placed and after[c.name] <= placed]
        if not ready:  # a cycle the domain should have refused: keep the declared order
            ready = [c for c in application.release_channels if c.name not in placed]
        for channel in ready:
            ordered.append(channel)
            placed.add(channel.name)
    return ordered
