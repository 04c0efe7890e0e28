"""Fleet: every application's services × its channels, and in each cell what runs there.

A cell says, separately, the version running in the channel (its last converged
release) with its health, and the release in flight (or the last one, when it did not
converge) with its gate in one sentence — so a v2 that failed in staging never reads as
"prod is broken" while prod runs v1 (argo-cd #1239). Filtering and paging happen here, on
the server: a page is at most `size` services however large the fleet is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.convoy.v1 import api_pb2, convergence_pb2, resources_pb2
from services.api import summaries
from services.api.errors import invalid
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import common

DEFAULT_SIZE = 200
MAX_SIZE = 1000
STATES = ("all", "in-flight", "waiting", "failing")


@dataclass(frozen=True, slots=True)
class Cell:
    channel: str
    running: str
    health: str
    health_tone: str
    flight: str
    flight_tone: str
    gate: str


@dataclass(frozen=True, slots=True)
class Row:
    application: str
    service: str
    cells: tuple[Cell, ...]

    @property
    def in_flight(self) -> bool:
        return any(c.flight and c.flight_tone in ("busy", "wait") for c in self.cells)

    @property
    def waiting(self) -> bool:
        return any(c.flight_tone == "wait" for c in self.cells)

    @property
    def failing(self) -> bool:
        return any(c.flight_tone == "bad" or c.health_tone == "bad" for c in self.cells)


@dataclass(frozen=True, slots=True)
class Group:
    application: str
    channels: tuple[str, ...]
    rows: tuple[Row, ...]


def cell(
    channel: str, found: api_pb2.ChannelConvergence | None, siblings: Sequence[api_pb2.ChannelConvergence] = ()
) -> Cell:
    """What runs in the channel, and apart from it what became of the latest release
    (services.api.summaries: the same sentence `convoy status` prints)."""
    if found is None:
        return Cell(channel, "", "", "none", "", "none", "")
    running = found.running_version
    latest_is_running = bool(found.release_id) and found.release_id == found.running_release_id
    if running:
        failing = latest_is_running and found.status in present.BAD
        health, health_tone = ("failing", "bad") if failing else ("healthy", "ok")
    else:
        health, health_tone = "", "none"
    flight = flight_tone = ""
    if found.release_id and not (latest_is_running and found.status == convergence_pb2.INSTANCE_STATUS_CONVERGED):
        if found.status != convergence_pb2.INSTANCE_STATUS_REPLACED:
            flight = present.sentence(summaries.latest(found, siblings))
            flight_tone = "none" if " not promoted" in flight else present.tone(found.status)
    return Cell(channel, running, health, health_tone, flight, flight_tone, "")


def rows(
    applications: Sequence[resources_pb2.Application],
    services: Mapping[str, Sequence[resources_pb2.Service]],
    converged: Mapping[str, Sequence[api_pb2.ChannelConvergence]],
) -> list[Row]:
    out: list[Row] = []
    for app in sorted(applications, key=lambda a: a.name):
        channels = [c.name for c in common.pipeline(app)]
        by_key = {(c.service, c.channel): c for c in converged.get(app.name, ())}
        by_service: dict[str, list[api_pb2.ChannelConvergence]] = {}
        for c in converged.get(app.name, ()):
            by_service.setdefault(c.service, []).append(c)
        for service in sorted(services.get(app.name, ()), key=lambda s: s.name):
            siblings = by_service.get(service.name, [])
            out.append(
                Row(app.name, service.name, tuple(cell(ch, by_key.get((service.name, ch)), siblings) for ch in channels))
            )
    return out


def select(all_rows: Sequence[Row], *, text: str, state: str) -> list[Row]:
    needle = text.strip().lower()
    keep = {"all": lambda r: True, "in-flight": lambda r: r.in_flight, "waiting": lambda r: r.waiting,
            "failing": lambda r: r.failing}[state]
    return [r for r in all_rows if (not needle or needle in f"{r.application}/{r.service}") and keep(r)]


def groups(page_rows: Sequence[Row], applications: Sequence[resources_pb2.Application]) -> list[Group]:
    channels = {a.name: tuple(c.name for c in common.pipeline(a)) for a in applications}
    out: list[Group] = []
    for row in page_rows:
        if not out or out[-1].application != row.application:
            out.append(Group(row.application, channels.get(row.application, ()), ()))
        last = out[-1]
        out[-1] = Group(last.application, last.channels, (*last.rows, row))
    return out


def _int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise invalid(name, f"a whole number from {lo} to {hi}")
    return int(raw)


async def load(client: UiClient, query: Mapping[str, str]) -> common.Page:
    state = query.get("state", "all") or "all"
    if state not in STATES:
        raise invalid("state", f"one of {', '.join(STATES)}")
    size = _int(query, "size", DEFAULT_SIZE, 1, MAX_SIZE)
    page = _int(query, "page", 1, 1, 10**9)
    apps = await common.applications(client)
    services = {a.name: await common.services(client, a.name) for a in apps}
    converged, position = await common.fleet_convergence(client, apps)
    chosen = select(rows(apps, services, converged), text=query.get("q", ""), state=state)
    start = (page - 1) * size
    shown = chosen[start : start + size]
    return common.Page(
        "fleet.html",
        "Fleet",
        {
            "groups": groups(shown, apps),
            "total": len(chosen),
            "page": page,
            "pages": max(1, -(-len(chosen) // size)),
            "size": size,
            "q": query.get("q", ""),
            "state": state,
            "states": STATES,
        },
        position,
    )
