"""Change-ticket gates end to end against a real PostgreSQL log: the planner asks, the
gatekeeper polls a local ticketing server (an aiohttp server that checks each request's
method, templated URL and body and the secret header resolved from an environment
variable) and records every poll; time moves only by the injected clock.

Approved after pending and a 5xx → the release converges; rejected → it fails naming the
ticket; never decided → it fails at the timeout; a gatekeeper killed mid-poll and
started again resumes the gate from the log without recording any poll twice. The secret
header's value appears in no event's bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.api import why
from services.gatekeeper.worker import Gatekeeper
from services.planner.clock import FakeClock
from services.planner.replay import replay_check
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.integration.test_planner import declarations, record, service, simulated_agents, statuses, stop
from tests.unit.planner.world import seconds

REGISTRY = convoy_registry()
SECRET = "s3cr3t-T0KEN-value"
ENV = "CONVOY_TEST_TICKET_TOKEN"
CHECK = "chk-rel-1.prod.change.pre-approval"


@dataclass
class Ticketing:
    """A change-management endpoint that answers from a script (the last answer repeats)."""

    answers: list[tuple[int, dict[str, Any]]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """When set (not yet released), requests wait for it: a poll in flight."""
    held: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        seen = {"method": request.method, "path": request.path, "query": dict(request.query),
                "auth": request.headers.get("Authorization", ""), "accept": request.headers.get("Accept", ""),
                "body": json.loads(body) if body else None}
        self.requests.append(seen)
        expected = {"method": "POST", "path": "/api/now/table/change_request", "query": {"number": "CHG0030001", "app": "fleet"},
                    "auth": f"Bearer {SECRET}", "accept": "application/json",
                    "body": {"service": "web", "channel": "prod", "version": "v1", "release": "rel-1"}}
        if seen != expected:
            self.problems.append(f"unexpected request {seen}")
            return web.json_response({"error": "bad request"}, status=400)
        if self.hold is not None and not self.hold.is_set():
            self.held.set()
            await self.hold.wait()
        status, answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        return web.json_response(answer, status=status)


@contextlib.asynccontextmanager
async def ticketing(answers: list[tuple[int, dict[str, Any]]]) -> AsyncIterator[Ticketing]:
    found = Ticketing(answers)
    app = web.Application()
    app.router.add_route("*", "/api/now/table/change_request", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield found
    finally:
        if found.hold is not None:
            found.hold.set()
        await runner.cleanup()


def change(state: str, *, echo: str = "") -> tuple[int, dict[str, Any]]:
    record: dict[str, Any] = {"number": "CHG0030001", "approval": state}
    if echo:
        record["echo"] = echo
    return 200, {"result": [record]}


def protection(url: str, *, timeout: float = 1800, token: R.SecretRef | None = None) -> R.Protection:
    approval = R.ExternalApproval(
        method="POST",
        url=url + "/api/now/table/change_request?number={{.Params.ticket}}&app={{.Application}}",
        body='{"service": "{{.Service}}", "channel": "{{.Channel}}", "version": "{{.Version}}", "release": "{{.ReleaseId}}"}',
        headers={"Accept": "application/json"},
        secret_headers={"Authorization": token or R.SecretRef(env=ENV)},
        success='status == 200 and body.result[0].approval == "approved"',
        failure='body.result[0].approval in ["rejected", "cancelled"]',
        ticket="body.result[0].number",
        poll_interval=seconds(60),
        timeout=seconds(timeout),
        request_timeout=seconds(10),
    )
    return R.Protection(name="change", external_approval=approval)


async def declare(store: PostgresEventStore, gate: R.Protection) -> None:
    await record(store, E.ProtectionConfigured(protection=gate))
    attach = R.ProtectionAttachment(protection="change", lifecycle=[R.LIFECYCLE_PRE_APPROVAL],
                                    failure_behavior=R.FAILURE_BEHAVIOR_FAIL, parameters={"ticket": "CHG0030001"})
    for message in declarations({"prod": ["p1"]}, ["web"], prod={"protections": [attach]}):
        await record(store, message)


async def release(store: PostgresEventStore) -> None:
    await record(store, E.ReleaseCreated(release=R.Release(
        id="rel-1", application="fleet", service="web", version="v1", config=service("web"))))


async def polled(store: PostgresEventStore) -> list[E.ExternalApprovalPolled]:
    found = []
    for recorded in await store.read_all(categories=["gate"], limit=10_000):
        message = REGISTRY.decode(recorded).message
        if isinstance(message, E.ExternalApprovalPolled):
            found.append(message)
    return found


async def status_of(store: PostgresEventStore) -> str:
    return (await statuses(store)).get(("web", "prod"), "")


async def reason_of(store: PostgresEventStore) -> str:
    reason = ""
    for recorded in await store.read_all(categories=["convergence"], limit=100_000):
        message = REGISTRY.decode(recorded).message
        if isinstance(message, E.InstanceStatusChanged) and not message.target.runtime and message.channel == "prod":
            reason = message.reason
    return reason


async def drive(store: PostgresEventStore, clock: FakeClock, *, until: str, limit: int = 60) -> None:
    """Move time one poll interval at a time, each step once the poll it allows is recorded,
    until the prod convergence reaches `until`."""
    for _ in range(limit):
        count = len(await polled(store))
        if await status_of(store) == until:
            return
        clock.advance(timedelta(seconds=60))

        async def progressed(count: int = count) -> bool:
            return len(await polled(store)) > count or await status_of(store) == until

        await eventually(progressed, message=f"a new poll (after {count}) or {until}")
    raise AssertionError(f"not {until} after {limit} poll intervals")


async def assert_no_secret_in_the_log(store: PostgresEventStore) -> None:
    events = await store.read_all(limit=100_000)
    assert events
    leaked = [e.type for e in events if SECRET.encode() in e.data]
    assert leaked == [], f"the secret header value is in {leaked}"


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, f"Bearer {SECRET}")  # a secret header's value is the whole header


async def test_pending_then_a_5xx_then_approved_passes_the_gate_and_the_release_converges(pg_store: PostgresEventStore) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with ticketing([change("requested", echo=f"token {SECRET}"), (503, {"error": "maintenance"}),
                          change("requested"), change("approved")]) as server:
        await declare(pg_store, protection(server.url))
        agents = asyncio.create_task(simulated_agents(pg_store))
        try:
            async with Planner(store=pg_store, registry=REGISTRY, clock=clock), \
                    Gatekeeper(store=pg_store, registry=REGISTRY, clock=clock):
                await release(pg_store)
                await eventually(lambda: polled_count(pg_store, 1), message="the first poll")
                assert server.problems == []

                async def named() -> bool:
                    return "ticket CHG0030001 pending approval" in await reason_of(pg_store)

                await eventually(named, message="the reason names the ticket")
                assert await status_of(pg_store) == "WAITING_APPROVAL"
                await drive(pg_store, clock, until="CONVERGED")
        finally:
            await stop(agents)
        assert server.problems == []

    polls = await polled(pg_store)
    assert [(p.attempt, p.outcome, p.http_status) for p in polls] == [
        (1, R.EXTERNAL_APPROVAL_OUTCOME_PENDING, 200),
        (2, R.EXTERNAL_APPROVAL_OUTCOME_PENDING, 503),  # a 5xx: keep polling
        (3, R.EXTERNAL_APPROVAL_OUTCOME_PENDING, 200),
        (4, R.EXTERNAL_APPROVAL_OUTCOME_PASSED, 200),
    ]
    assert {p.check_id for p in polls} == {CHECK}
    assert polls[0].ticket == "CHG0030001"
    assert '"echo": "token ***"' in polls[0].detail  # the endpoint echoed the token: redacted
    assert len(server.requests) == 4
    await assert_no_secret_in_the_log(pg_store)
    report = await replay_check(pg_store, REGISTRY)  # the polls are inputs: replaying decides the same
    assert report.ok, report.differences


async def polled_count(store: PostgresEventStore, n: int) -> bool:
    return len(await polled(store)) >= n


async def test_a_rejected_change_fails_the_convergence_naming_the_ticket(pg_store: PostgresEventStore) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with ticketing([change("requested"), change("rejected")]) as server:
        await declare(pg_store, protection(server.url))
        async with Planner(store=pg_store, registry=REGISTRY, clock=clock), \
                Gatekeeper(store=pg_store, registry=REGISTRY, clock=clock):
            await release(pg_store)
            await drive(pg_store, clock, until="FAILED")
        assert server.problems == []
    reason = await reason_of(pg_store)
    assert reason.startswith("protection change failed: ticket CHG0030001 was not approved (last answer: 200: ")
    assert '"approval": "rejected"' in reason
    assert [p.outcome for p in await polled(pg_store)] == [
        R.EXTERNAL_APPROVAL_OUTCOME_PENDING, R.EXTERNAL_APPROVAL_OUTCOME_FAILED]
    await assert_no_secret_in_the_log(pg_store)

    # `convoy why` names the ticket and the last poll, with the poll as evidence.
    [(line, evidence)] = await why._gates(pg_store, REGISTRY, "fleet", "web", "prod", "rel-1", None)
    assert line.startswith("change gate change: ticket CHG0030001; poll 2 at ")
    assert line.endswith(': failed (200: {"result": [{"number": "CHG0030001", "approval": "rejected"}]})')
    assert [e.type for e in evidence] == ["convoy.v1.ExternalApprovalRequested", "convoy.v1.ExternalApprovalPolled"]


async def test_a_change_never_decided_fails_at_the_timeout(pg_store: PostgresEventStore) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with ticketing([change("requested")]) as server:
        await declare(pg_store, protection(server.url, timeout=300))
        async with Planner(store=pg_store, registry=REGISTRY, clock=clock), \
                Gatekeeper(store=pg_store, registry=REGISTRY, clock=clock) as gatekeeper:
            await release(pg_store)
            await drive(pg_store, clock, until="FAILED")
            await eventually(lambda: gatekeeper.polling == [], message="the gatekeeper stopped polling the closed gate")
    reason = await reason_of(pg_store)
    assert reason.startswith("protection change failed: ticket CHG0030001 not approved within 5m (last answer: 200: ")
    polls = await polled(pg_store)
    assert {p.outcome for p in polls} == {R.EXTERNAL_APPROVAL_OUTCOME_PENDING}
    assert [p.attempt for p in polls] == list(range(1, len(polls) + 1))
    closed = [m for m in map(lambda e: REGISTRY.decode(e).message, await pg_store.read_all(categories=["gate"]))
              if isinstance(m, E.ExternalApprovalClosed)]
    assert [c.check_id for c in closed] == [CHECK]


@pytest.mark.fault
async def test_a_gatekeeper_killed_mid_poll_resumes_from_the_log_without_duplicating_a_poll(
    pg_store: PostgresEventStore,
) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with ticketing([change("requested"), change("requested"), change("requested"), change("approved")]) as server:
        await declare(pg_store, protection(server.url))
        agents = asyncio.create_task(simulated_agents(pg_store))
        try:
            async with Planner(store=pg_store, registry=REGISTRY, clock=clock):
                first = Gatekeeper(store=pg_store, registry=REGISTRY, clock=clock)
                await first.start()
                try:
                    await release(pg_store)
                    await eventually(lambda: polled_count(pg_store, 1), message="the first poll")
                    clock.advance(timedelta(seconds=60))
                    await eventually(lambda: polled_count(pg_store, 2), message="the second poll")
                    server.hold = asyncio.Event()  # the third request hangs: a poll in flight
                    clock.advance(timedelta(seconds=60))
                    await asyncio.wait_for(server.held.wait(), 20)
                finally:
                    await first.stop()  # killed while asking: attempt 3 was never recorded
                server.hold.set()
                assert len(await polled(pg_store)) == 2

                async with Gatekeeper(store=pg_store, registry=REGISTRY, clock=clock) as second:
                    await asyncio.wait_for(second.ready.wait(), 20)
                    assert second.polling == [CHECK]  # resumed from the log
                    assert second.book.gates[CHECK].attempts == 2
                    await drive(pg_store, clock, until="CONVERGED")
        finally:
            await stop(agents)
        assert server.problems == []

    polls = await polled(pg_store)
    attempts = [p.attempt for p in polls]
    assert attempts == sorted(set(attempts)) == list(range(1, len(polls) + 1))
    assert polls[-1].outcome == R.EXTERNAL_APPROVAL_OUTCOME_PASSED
    assert [p.outcome for p in polls].count(R.EXTERNAL_APPROVAL_OUTCOME_PASSED) == 1


async def test_a_convoy_kept_secret_header_is_resolved_by_the_keyring_the_composition_gives(
    pg_store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV)  # the only way to the token is the Convoy-kept secret
    kept = {"ticketing-token": f"Bearer {SECRET}"}
    clock = FakeClock(datetime.now(UTC))
    async with ticketing([change("approved")]) as server:
        await declare(pg_store, protection(server.url, token=R.SecretRef(convoy="ticketing-token")))
        agents = asyncio.create_task(simulated_agents(pg_store))
        try:
            async with Planner(store=pg_store, registry=REGISTRY, clock=clock), \
                    Gatekeeper(store=pg_store, registry=REGISTRY, clock=clock, convoy=kept.__getitem__):
                await release(pg_store)
                await drive(pg_store, clock, until="CONVERGED")
        finally:
            await stop(agents)
        assert server.problems == [], "the header carried the Convoy-kept value"
    await assert_no_secret_in_the_log(pg_store)
