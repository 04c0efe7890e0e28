"""Approvals inbox: every release, in every application, that waits for a person.

One list across the fleet (kargo #5345: the prompt must not depend on the path taken to
it), each item with the same approve/reject dialog the application and release pages
offer, and the planner's reason for waiting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import application as application_view
from services.api.ui.views import common


@dataclass(frozen=True, slots=True)
class Waiting:
    application: str
    service: str
    channel: str
    release_id: str
    version: str
    running: str
    since: str
    reason: str
    approval: str


def waiting(
    applications: Sequence[resources_pb2.Application], converged: Mapping[str, Sequence[api_pb2.ChannelConvergence]]
) -> list[Waiting]:
    out: list[Waiting] = []
    for app in sorted(applications, key=lambda a: a.name):
        names = {c.name: application_view.approval_names(c) for c in app.release_channels}
        for c in converged.get(app.name, ()):
            if c.status not in present.WAITING_FOR_A_PERSON:
                continue
            approvals = names.get(c.channel, [])
            out.append(
                Waiting(
                    application=app.name,
                    service=c.service,
                    channel=c.channel,
                    release_id=c.release_id,
                    version=c.version,
                    running=c.running_version,
                    since=present.when(c.updated_at),
                    reason=present.short(c.reason, 160),
                    approval=common.only_approval(approvals),
                )
            )
    return out


async def load(client: UiClient, query: Mapping[str, str]) -> common.Page:
    apps = await common.applications(client)
    converged, position = await common.fleet_convergence(client, apps)
    items = waiting(apps, converged)
    return common.Page("approvals.html", "Approvals", {"items": items}, position)
