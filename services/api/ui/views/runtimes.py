"""Runtimes: each runtime, its agent as last heard (heartbeat, workloads, whether the
runtime answers), what runs on it (the convergence view's targets) and which of those
its agent last found drifted (its latest workload observation, from the newest
`OBSERVATIONS` of the log), whether it is paused, and its agent credential's generation
and when it was issued or rotated (from the log)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import common

KINDS = {0: "unknown", 1: "kubernetes", 2: "exec"}
OBSERVATIONS = 1000
WORKLOAD_KINDS = frozenset(
    {"OBSERVATION_KIND_RECEIVED", "OBSERVATION_KIND_APPLIED", "OBSERVATION_KIND_PROGRESSING", "OBSERVATION_KIND_HEALTHY",
     "OBSERVATION_KIND_FAILED", "OBSERVATION_KIND_DRIFTED", "OBSERVATION_KIND_DELETED"}
)
"""Observations about the workload itself (not a protection check's)."""
AVAILABILITY = {0: "unknown", 1: "available", 2: "unavailable"}


@dataclass(frozen=True, slots=True)
class RuntimeRow:
    name: str
    kind: str
    labels: str
    paused: bool
    pause_reason: str
    agent: str
    agent_tone: str
    last_seen: str
    workloads: str
    availability: str
    credential: str
    runs: tuple[str, ...] = ()
    drifted: tuple[str, ...] = ()


def rows(
    runtimes: list[api_pb2.RuntimeState],
    issued: Mapping[str, str],
    now: datetime,
    runs: Mapping[str, list[str]] | None = None,
    drifted: Mapping[str, list[str]] | None = None,
) -> list[RuntimeRow]:
    runs, drifted = runs or {}, drifted or {}
    out: list[RuntimeRow] = []
    for r in sorted(runtimes, key=lambda r: r.runtime.name):
        has_agent = r.HasField("agent")
        agent = r.agent
        connected = has_agent and agent.connected
        availability = AVAILABILITY.get(int(agent.runtime_availability), "unknown") if has_agent else ""
        if has_agent and agent.runtime_error:
            availability += f": {present.short(agent.runtime_error, 80)}"
        credential = f"generation {r.credential_generation}" if r.credential_generation else "none issued"
        if r.runtime.name in issued:
            credential += f", issued {issued[r.runtime.name]}"
        out.append(
            RuntimeRow(
                name=r.runtime.name,
                kind=KINDS.get(int(r.runtime.kind), "unknown"),
                labels=", ".join(f"{k}={v}" for k, v in sorted(r.runtime.labels.items())),
                paused=r.paused,
                pause_reason=r.pause_reason,
                agent=("connected" if connected else "not heard recently") if has_agent else "no heartbeat heard",
                agent_tone="ok" if connected else "bad",
                last_seen=present.ago(agent.last_seen, now) if has_agent else "",
                workloads=str(agent.workloads) if has_agent else "",
                availability=availability,
                credential=credential,
                runs=tuple(sorted(runs.get(r.runtime.name, []))),
                drifted=tuple(sorted(drifted.get(r.runtime.name, []))),
            )
        )
    return out


def drift(answer: Message) -> dict[str, list[str]]:
    """Per runtime, the workloads whose latest workload observation (newest first) is DRIFTED."""
    assert isinstance(answer, api_pb2.ListEventsResponse)
    latest: dict[tuple[str, str, str, str], str] = {}
    for e in answer.events:
        o = common.payload(e).get("observation") or {}
        kind = str(o.get("kind", ""))
        if kind not in WORKLOAD_KINDS:
            continue
        key = (str(o.get("runtime", "")), str(o.get("namespace", "")), str(o.get("application", "")), str(o.get("service", "")))
        latest.setdefault(key, kind)
    out: dict[str, list[str]] = {}
    for (runtime, namespace, app, service), kind in latest.items():
        if kind == "OBSERVATION_KIND_DRIFTED":
            out.setdefault(runtime, []).append(f"{app}/{service} in {namespace}")
    return out


async def load(client: UiClient, query: Mapping[str, str]) -> common.Page:
    answer = await client.read("ListRuntimes", api_pb2.ListRuntimesRequest(page=api_pb2.PageRequest(page_size=1000)))
    assert isinstance(answer, api_pb2.ListRuntimesResponse)
    issued: dict[str, str] = {}
    request = api_pb2.ListEventsRequest(before_position=client.api.position + 1, limit=200, types=["AgentCredentialIssued"])
    if client.as_of is not None and client.as_of.position:
        request.before_position = client.as_of.position + 1
    events = await client.read("ListEvents", request)
    assert isinstance(events, api_pb2.ListEventsResponse)
    for e in events.events:  # newest first: the first seen per runtime is the latest
        runtime = str(common.payload(e).get("runtime", ""))
        issued.setdefault(runtime, present.when(e.recorded_at))
    runs: dict[str, list[str]] = {}
    for app in await common.applications(client):
        for c in (await common.convergence(client, app.name)).channels:
            for t in c.targets:
                if t.running_version:
                    runs.setdefault(t.runtime, []).append(f"{c.application}/{c.service} {t.running_version} ({c.channel})")
    drifted = drift(await client.read("ListEvents", api_pb2.ListEventsRequest(
        before_position=request.before_position, limit=OBSERVATIONS, types=["ObservationRecorded"])))
    return common.Page(
        "runtimes.html",
        "Runtimes",
        {"runtimes": rows(list(answer.runtimes), issued, datetime.now(UTC), runs, drifted)},
        client.api.position,
    )
