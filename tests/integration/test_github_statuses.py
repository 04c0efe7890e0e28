"""GitHub deployment statuses against a local server that speaks the GitHub REST shape
(paths, headers, bodies checked as GitHub's OpenAPI describes them), with the planner
rolling a real release through staging and prod on a PostgreSQL log.

One deployment per (release, channel), statuses queued → in_progress → success in
order, none twice — also after the reporter is restarted (the log is re-read), after a
5xx (retried), and after the reporter was killed between GitHub creating a deployment
and the log recording it (it adopts the deployment instead of creating another)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.gatekeeper.github import GitHubReporter, GitHubSettings
from services.planner.clock import FakeClock
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.integration.test_planner import declarations, record, service, simulated_agents, statuses, stop

REGISTRY = convoy_registry()
TOKEN = "ghp_T0KEN-for-tests-only"
ENV = "CONVOY_TEST_GITHUB_TOKEN"
FAST = GitHubSettings(retry_base=0.01, retry_cap=0.05)
EXPECTED = {
    "staging": ["in_progress", "success"],  # no preconditions: it deploys at once
    "production": ["queued", "in_progress", "success"],  # queued while waiting for staging
}
STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"}


@dataclass
class GitHub:
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    fail_statuses: int = 0
    """Status POSTs to answer 502 before taking them."""
    hold_create: asyncio.Event | None = None
    created: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def check_headers(self, request: web.Request) -> None:
        expected = {"Accept": "application/vnd.github+json", "Authorization": f"Bearer {TOKEN}",
                    "X-GitHub-Api-Version": "2022-11-28"}
        for name, value in expected.items():
            if request.headers.get(name) != value:
                self.problems.append(f"{request.method} {request.path}: header {name} is {request.headers.get(name)!r}")
        if not request.headers.get("User-Agent"):
            self.problems.append("no User-Agent (GitHub refuses requests without one)")

    async def list_deployments(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        self.calls.append("list")
        env, ref = request.query.get("environment"), request.query.get("ref")
        found = [d for d in self.deployments.values() if d["environment"] == env and d["ref"] == ref]
        return web.json_response(found)

    async def create_deployment(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        body = await request.json()
        self.calls.append(f"create {body.get('environment')}")
        required = {"ref": str, "environment": str, "description": str, "auto_merge": bool, "required_contexts": list,
                    "transient_environment": bool, "production_environment": bool, "payload": dict}
        for name, kind in required.items():
            if not isinstance(body.get(name), kind):
                self.problems.append(f"create: {name} is {body.get(name)!r}")
        if body.get("auto_merge") is not False or body.get("required_contexts") != []:
            self.problems.append("create: auto_merge must be false and required_contexts []")
        deployment_id = 1000 + len(self.deployments)
        self.deployments[deployment_id] = {"id": deployment_id, "url": f"{self.url}/x/{deployment_id}", **body}
        self.statuses[deployment_id] = []
        if self.hold_create is not None and not self.hold_create.is_set():
            self.created.set()
            await self.hold_create.wait()  # GitHub has it; the caller never hears back
        return web.json_response(self.deployments[deployment_id], status=201)

    async def create_status(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        deployment_id = int(request.match_info["id"])
        body = await request.json()
        if deployment_id not in self.deployments:
            return web.json_response({"message": "Not Found"}, status=404)
        if self.fail_statuses > 0:
            self.fail_statuses -= 1
            return web.json_response({"message": "Server Error"}, status=502)
        if body.get("state") not in STATES:
            self.problems.append(f"status: state {body.get('state')!r}")
        if not isinstance(body.get("description", ""), str) or len(body.get("description", "")) > 140:
            self.problems.append(f"status: description {body.get('description')!r}")
        self.calls.append(f"status {self.deployments[deployment_id]['environment']} {body['state']}")
        self.statuses[deployment_id].append(body)
        return web.json_response({"id": len(self.calls), "state": body["state"]}, status=201)

    def by_environment(self) -> dict[str, list[str]]:
        return {d["environment"]: [s["state"] for s in self.statuses[i]] for i, d in self.deployments.items()}


@contextlib.asynccontextmanager
async def github() -> AsyncIterator[GitHub]:
    found = GitHub()
    app = web.Application()
    app.router.add_get("/repos/acme/shop/deployments", found.list_deployments)
    app.router.add_post("/repos/acme/shop/deployments", found.create_deployment)
    app.router.add_post("/repos/acme/shop/deployments/{id}/statuses", found.create_status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield found
    finally:
        if found.hold_create is not None:
            found.hold_create.set()
        await runner.cleanup()


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)


async def declare(store: PostgresEventStore, url: str) -> None:
    for message in declarations({"staging": ["s1"], "prod": ["p1"]}, ["web"]):
        if isinstance(message, E.ApplicationCreated):
            message.application.github_deployments.CopyFrom(R.GitHubDeployments(
                api_url=url, owner="acme", repo="shop", token=R.SecretRef(env=ENV),
                environments={"prod": "production"}, production_channels=["prod"], ref="v-{{.Version}}",
                log_url="https://convoy.example/releases/{{.ReleaseId}}",
            ))
        await record(store, message)


async def deploy(store: PostgresEventStore) -> None:
    await record(store, E.ReleaseCreated(release=R.Release(
        id="rel-1", application="fleet", service="web", version="v1", config=service("web"))))


async def converged(store: PostgresEventStore) -> bool:
    return await statuses(store) == {("web", "staging"): "CONVERGED", ("web", "prod"): "CONVERGED"}


async def recorded_github(store: PostgresEventStore) -> list[Any]:
    return [REGISTRY.decode(e).message for e in await store.read_all(categories=["github"], limit=10_000)]


async def test_one_deployment_per_release_and_channel_with_statuses_in_order_and_none_twice(
    pg_store: PostgresEventStore,
) -> None:
    async with github() as server:
        server.fail_statuses = 1  # a 502 first: retried
        await declare(pg_store, server.url)
        agents = asyncio.create_task(simulated_agents(pg_store))
        try:
            async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))), \
                    GitHubReporter(store=pg_store, registry=REGISTRY, settings=FAST) as reporter:
                await deploy(pg_store)
                await eventually(lambda: converged(pg_store), message="converged in both channels")
                await eventually(lambda: server.by_environment() == EXPECTED, message="every status posted")

                async def all_recorded() -> bool:
                    posted = [m for m in await recorded_github(pg_store) if isinstance(m, E.GitHubDeploymentStatusPosted)]
                    return len(posted) == 5

                # Stopped only once the log has every call: one stopped between GitHub's answer
                # and the append would post that status again (at least once, by design).
                await eventually(all_recorded, message="every status recorded")
                assert reporter.stats.retried >= 1
        finally:
            await stop(agents)
        calls = list(server.calls)

        # Restarted: it re-reads the log and has nothing left to say.
        async with GitHubReporter(store=pg_store, registry=REGISTRY, settings=FAST) as again:
            await asyncio.wait_for(again.ready.wait(), 20)
            assert again.book.pending() == []
        assert server.calls == calls
        assert server.problems == []

    staging, production = sorted(server.deployments.values(), key=lambda d: d["environment"] != "staging")
    assert staging["ref"] == production["ref"] == "v-v1"
    assert (staging["production_environment"], production["production_environment"]) == (False, True)
    assert production["payload"]["convoy"] == {"application": "fleet", "service": "web", "channel": "prod",
                                               "release_id": "rel-1", "version": "v1"}
    assert all(s["log_url"] == "https://convoy.example/releases/rel-1" for s in server.statuses[production["id"]])
    assert server.statuses[production["id"]][-1]["description"].startswith("v1 converged")
    created = [m for m in await recorded_github(pg_store) if isinstance(m, E.GitHubDeploymentCreated)]
    assert sorted((c.channel, c.deployment_id) for c in created) == sorted(
        [("staging", staging["id"]), ("prod", production["id"])])
    leaked = [e.type for e in await pg_store.read_all(limit=100_000) if TOKEN.encode() in e.data]
    assert leaked == []


@pytest.mark.fault
async def test_a_reporter_killed_after_github_created_the_deployment_adopts_it_instead_of_creating_another(
    pg_store: PostgresEventStore,
) -> None:
    async with github() as server:
        server.hold_create = asyncio.Event()
        await declare(pg_store, server.url)
        agents = asyncio.create_task(simulated_agents(pg_store))
        try:
            async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))):
                first = GitHubReporter(store=pg_store, registry=REGISTRY, settings=FAST)
                await first.start()
                try:
                    await deploy(pg_store)
                    await asyncio.wait_for(server.created.wait(), 20)  # GitHub made it; the answer hangs
                finally:
                    await first.stop()
                server.hold_create.set()
                assert await recorded_github(pg_store) == []  # the log never heard of it

                async with GitHubReporter(store=pg_store, registry=REGISTRY, settings=FAST) as second:
                    await eventually(lambda: converged(pg_store), message="converged in both channels")
                    await eventually(lambda: all(v[-1:] == ["success"] for v in server.by_environment().values())
                                     and len(server.deployments) == 2, message="every status posted")
                    assert second.stats.adopted == 1
        finally:
            await stop(agents)
        assert server.problems == []
    assert sorted(d["environment"] for d in server.deployments.values()) == ["production", "staging"]
    assert server.by_environment() == EXPECTED
