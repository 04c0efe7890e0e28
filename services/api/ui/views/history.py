"""History: the whole log, newest first, filtered on the server and paged from the log.

Nothing is dropped or capped (kargo #1290 keeps ten entries): a page holds `size` events
and links to the next older page by position, so any event of any age is reachable and
each has its own permalink (`/ui/events/<position>`). The log holds the planner's
decisions and the agents' observations as well as people's commands; all of them show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.convoy.v1 import api_pb2
from services.api.errors import NotFound, invalid
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import common
from services.api.ui.views import release as release_view

DEFAULT_SIZE = 50
FILTERS = ("app", "service", "channel", "actor", "type")


@dataclass(frozen=True, slots=True)
class Row:
    position: int
    kind: str
    stream: str
    actor: str
    recorded: str
    note: str


def _position(query: Mapping[str, str], name: str) -> int:
    raw = query.get(name, "")
    if not raw:
        return 0
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise invalid(name, "a log position (a whole number from 1 to 2^63-1)")
    return int(raw)


def row(event: api_pb2.Event) -> Row:
    return Row(
        event.position,
        common.short_type(event.type),
        event.stream_id,
        event.actor,
        present.when(event.recorded_at),
        release_view.note(event),
    )


async def load(client: UiClient, query: Mapping[str, str]) -> common.Page:
    shown_at = client.as_of
    before = _position(query, "before")
    if not before:
        # Now, or the page's moment in the past: the events up to it.
        before = (shown_at.position + 1) if shown_at is not None and shown_at.position else client.api.position + 1
    request = api_pb2.ListEventsRequest(
        before_position=before,
        limit=DEFAULT_SIZE,
        application=query.get("app", ""),
        service=query.get("service", ""),
        channel=query.get("channel", ""),
        actor=query.get("actor", ""),
        types=[t for t in query.get("type", "").replace(",", " ").split() if t],
    )
    if shown_at is not None and shown_at.HasField("time"):
        request.until.CopyFrom(shown_at.time)
    answer = await client.read("ListEvents", request)
    assert isinstance(answer, api_pb2.ListEventsResponse)
    return common.Page(
        "history.html",
        "History",
        {
            "rows": [row(e) for e in answer.events],
            "older": answer.last_position,
            "filters": {k: query.get(k, "") for k in FILTERS},
            "before": before,
        },
        max(before - 1, 0),
    )


async def event(client: UiClient, position: int) -> common.Page:
    answer = await client.read("ListEvents", api_pb2.ListEventsRequest(after_position=position - 1, limit=1))
    assert isinstance(answer, api_pb2.ListEventsResponse)
    if not answer.events or answer.events[0].position != position:
        raise NotFound(f"no event at position {position}")
    e = answer.events[0]
    body = common.payload(e)
    return common.Page(
        "event.html",
        f"Event {position}",
        {
            "event": e,
            "row": row(e),
            "body": json.dumps(body, indent=2, sort_keys=True) if body else "(this build cannot read the event's payload)",
        },
        client.api.position,
    )
