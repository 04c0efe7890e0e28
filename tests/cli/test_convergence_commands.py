"""`convoy deploy --dry-run / --wait`, `convoy status` and `convoy why` against a real API,
a real planner (its dry runs answered over a real NATS) and agents simulated on the
store: the README's story, driven through the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventstore import bus
from eventstore.codec import convoy_registry
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from services.api.planning import NatsPlannerClient
from services.planner.clock import FakeClock
from services.planner.responder import PlanResponder
from services.planner.runner import Planner
from tests.cli.conftest import Cli
from tests.conftest import eventually
from tests.integration.test_api_support import running_api
from tests.integration.test_planner import simulated_agents, stop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


@pytest.fixture
async def planned(
    server_logs_aside: None, pg_store: PostgresEventStore, embedded_nats: NatsServer, tmp_path: Path, subject_prefix: str
) -> AsyncIterator[tuple[Cli, Planner]]:
    nc = await bus.connect(embedded_nats.url, name="cli-test")
    try:
        planner = Planner(store=pg_store, registry=convoy_registry(), clock=FakeClock(datetime.now(UTC)))
        async with planner, PlanResponder(nc=nc, planner=planner, instance=subject_prefix):
            client = NatsPlannerClient(nc=nc, instance=subject_prefix, timeout=10)
            async with running_api(pg_store, tmp_path / "state", planner=client) as running:
                cli = Cli(running, tmp_path)
                assert (await cli.run("apply", "-f", str(EXAMPLES))).exit_code == 0
                await planner.ready.wait()
                yield cli, planner
    finally:
        await nc.close()


async def test_dry_run_shows_the_plan_and_records_nothing(planned: tuple[Cli, Planner], pg_store: PostgresEventStore) -> None:
    cli, _ = planned
    head = await pg_store.head()

    result = await cli.run("deploy", "shop/web", "--version", "v1", "--dry-run")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "nothing recorded" in lines[0]
    assert any("staging" in line and "deploy" in line and "local" in line for line in lines), result.stdout
    assert "waiting for 1 approval of prod-signoff (0 given)" in result.stdout
    assert await pg_store.head() == head
    as_json = json.loads((await cli.run("deploy", "shop/web", "--version", "v1", "--dry-run", "-o", "json")).stdout)
    assert as_json["release"]["version"] == "v1" and as_json["steps"][0]["action"] == "deploy"


async def test_deploy_wait_status_and_why_follow_a_release(planned: tuple[Cli, Planner], pg_store: PostgresEventStore) -> None:
    cli, _ = planned
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        waited = await cli.run("deploy", "shop/web", "--version", "v1", "--wait", "--timeout", "60")
        assert waited.exit_code == 0, waited.output
        assert "staging: CONVERGED" in waited.stdout
        assert "prod needs a person: waiting for 1 approval of prod-signoff (0 given)" in waited.stdout

        status = await cli.run("status", "shop")
        assert status.exit_code == 0, status.output
        staging, prod = status.stdout.split("channel prod")
        assert "web      v1       1/1      v1 converged" in staging, status.stdout
        assert "web      nothing  0/1      v1 waiting for 1 approval of prod-signoff (0 given)" in prod, status.stdout

        assert (await cli.run("approve", "shop/web", "--channel", "prod")).exit_code == 0

        async def verifying() -> bool:
            return "VERIFYING" in (await cli.run("why", "shop/web", "--channel", "prod")).stdout

        await eventually(verifying, message="prod verifying after the approval")
        why = await cli.run("why", "shop/web", "--channel", "prod")
        assert why.exit_code == 0, why.output
        assert why.stdout.startswith("prod v1: VERIFYING: ")
        assert "http-ok" in why.stdout  # the post-deployment probe it now waits for
        assert "ApprovalGranted by" in why.stdout and "ReleaseCreated by" in why.stdout
    finally:
        await stop(agents)


async def test_deploy_wait_fails_with_the_reason_when_the_release_is_rolled_back(
    planned: tuple[Cli, Planner], pg_store: PostgresEventStore
) -> None:
    cli, _ = planned
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        assert (await cli.run("deploy", "shop/api", "--version", "v1", "--wait", "--timeout", "60")).exit_code == 0
    finally:
        await stop(agents)
    before_v2 = await pg_store.head()
    before_v2_at = (await pg_store.read_all(after=before_v2 - 1, limit=1))[0].recorded_at
    agents = asyncio.create_task(simulated_agents(pg_store, after=before_v2, fail=frozenset({"api"})))
    try:
        failed = await cli.run("deploy", "shop/api", "--version", "v2", "--wait", "--timeout", "60")
    finally:
        await stop(agents)

    assert failed.exit_code == 1, failed.output
    assert "staging ROLLED_BACK: rolled back to v1: crash loop on runtime local" in failed.output
    why = await cli.run("why", "shop/api", "--channel", "staging", "--no-evidence")
    assert "ROLLED_BACK: rolled back to v1: crash loop on runtime local" in why.stdout

    # The audit view: where things stood before v2, by position and by time.
    then = str(before_v2)
    past = await cli.run("status", "shop", "--at", then)
    assert past.exit_code == 0, past.output
    assert past.stdout.startswith(f"as of position {before_v2}")
    staging = past.stdout.split("channel prod")[0]
    assert "api      v1       1/1      v1 converged" in staging, past.stdout
    past_why = await cli.run("why", "shop/api", "--channel", "staging", "--at", then, "--no-evidence")
    assert past_why.exit_code == 0 and "staging v1: CONVERGED" in past_why.stdout, past_why.output
    by_time = await cli.run("status", "shop", "--at", before_v2_at.isoformat(), "-o", "json")
    channels = {(c["service"], c["channel"]): c for c in json.loads(by_time.stdout)["channels"]}
    assert channels[("api", "staging")]["version"] == "v1", by_time.stdout
    # Before the application existed it did not exist; nonsense is refused.
    assert (await cli.run("status", "shop", "--at", "1d")).exit_code == 3
    bad = await cli.run("status", "shop", "--at", "yesterday")
    assert bad.exit_code == 2 and "not a position, an ISO 8601 time" in bad.output
    beyond = await cli.run("why", "shop/api", "--at", "999999999")
    assert beyond.exit_code == 2 and "beyond the last recorded position" in beyond.output


async def test_why_names_what_is_missing(planned: tuple[Cli, Planner]) -> None:
    cli, _ = planned
    nothing = await cli.run("why", "shop/web")
    assert nothing.exit_code == 0
    assert "staging: no release has reached this channel yet" in nothing.stdout
    missing = await cli.run("why", "shop/nope")
    assert missing.exit_code == 3 and "does not exist" in missing.output
    bad_channel = await cli.run("why", "shop/web", "--channel", "qa")
    assert bad_channel.exit_code == 3 and "channels: staging, prod" in bad_channel.output


async def test_dry_run_without_a_planner_is_unavailable(cli: Cli) -> None:
    assert (await cli.run("apply", "-f", str(EXAMPLES))).exit_code == 0
    result = await cli.run("deploy", "shop/web", "--version", "v1", "--dry-run")
    assert result.exit_code == 6, result.output
    assert "cannot answer dry runs" in result.output


async def test_replay_check_from_the_cli(planned: tuple[Cli, Planner], pg_store: PostgresEventStore, database_url: str) -> None:
    cli, _ = planned
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        assert (await cli.run("deploy", "shop/web", "--version", "v1", "--wait", "--timeout", "60")).exit_code == 0
    finally:
        await stop(agents)
    # The check compares what the planner recorded up to its checkpoint, whatever it is doing.
    result = await cli.raw("replay", "--check", CONVOY_DATABASE_URL=database_url, CONVOY_INSTANCE=pg_store.schema)

    assert result.exit_code == 0, result.output
    assert "0 difference(s)" in result.stdout and "exactly what replaying the log produces" in result.stdout
    no_flag = await cli.raw("replay", CONVOY_DATABASE_URL=database_url, CONVOY_INSTANCE=pg_store.schema)
    assert no_flag.exit_code == 2


def test_the_live_progress_table_renders_rows_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from cli.commands.convergence import LiveTable

    out = io.StringIO()
    display = LiveTable("shop/web v1", console=Console(file=out, force_terminal=True, width=120))
    display.show([("staging", "DEPLOYING", "deploying v1 to 1 runtime(s)"), ("prod", "WAITING_APPROVAL", "waiting for 1 approval")])
    display.show([("staging", "CONVERGED", "v1 converged"), ("prod", "WAITING_APPROVAL", "waiting for 1 approval")])
    display.close()

    text = out.getvalue()
    assert "shop/web v1" in text and "CONVERGED" in text and "WAITING_APPROVAL" in text
    assert "\x1b[" in text  # drawn with terminal control sequences, not plain lines


async def test_a_malformed_dry_run_query_gets_no_answer_and_harms_nothing(
    planned: tuple[Cli, Planner], embedded_nats: NatsServer, subject_prefix: str
) -> None:
    import nats.errors

    from services.api.planning import plan_subject

    cli, planner = planned
    nc = await bus.connect(embedded_nats.url, name="garbage")
    try:
        for garbage in (b"\xff\xfe not protobuf", b""):  # undecodable; a query without a release
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(plan_subject(subject_prefix), garbage, timeout=0.5)
    finally:
        await nc.close()
    assert planner.ready.is_set()
    result = await cli.run("deploy", "shop/web", "--version", "v1", "--dry-run")
    assert result.exit_code == 0 and "nothing recorded" in result.stdout, result.output


def test_at_takes_a_position_a_time_or_a_duration_ago() -> None:
    from cli.client import CliError
    from cli.commands.common import parse_at

    now = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
    assert parse_at("1234").position == 1234
    assert parse_at("15m", now=now).time.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 26, 13, 45, tzinfo=UTC)
    assert parse_at("2d", now=now).time.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert parse_at("2026-11-26T12:30:00").time.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 26, 12, 30, tzinfo=UTC)
    assert parse_at("2026-11-26T12:30:00+01:00").time.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 26, 11, 30, tzinfo=UTC)
    with pytest.raises(CliError) as caught:
        parse_at("last week")
    assert caught.value.exit_code == 2


async def test_status_after_the_readmes_failing_v2_says_what_runs_and_what_became_of_v2(
    planned: tuple[Cli, Planner], pg_store: PostgresEventStore
) -> None:
    """The README's story: web v1 through staging and prod, then v2 fails in staging and
    is rolled back. Prod never got v2: it runs v1, healthy, and status must say so."""
    cli, _ = planned
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        assert (await cli.run("deploy", "shop/web", "--version", "v1", "--wait", "--timeout", "60")).exit_code == 0
        # These agents run no probes: the soak behind prod's HTTP probe is skipped (audited).
        skipped = await cli.run("bypass", "shop/web", "--channel", "prod", "--target", "protection:http-ok",
                                "--reason", "simulated agents run no probes")
        assert skipped.exit_code == 0, skipped.output
        assert (await cli.run("approve", "shop/web", "--channel", "prod")).exit_code == 0

        async def prod_runs_v1() -> bool:
            answer = json.loads((await cli.run("status", "shop", "-o", "json")).stdout)
            return any(c["channel"] == "prod" and c.get("runningVersion") == "v1" for c in answer["channels"])

        await eventually(prod_runs_v1, message="prod converged at v1")
    finally:
        await stop(agents)
    before_v2 = await pg_store.head()
    agents = asyncio.create_task(simulated_agents(pg_store, after=before_v2, fail=frozenset({"web"})))
    try:
        failed = await cli.run("deploy", "shop/web", "--version", "v2", "--wait", "--timeout", "60")
    finally:
        await stop(agents)
    assert failed.exit_code == 1, failed.output

    status = await cli.run("status", "shop")

    assert status.exit_code == 0, status.output
    staging, prod = status.stdout.split("channel prod")
    lines = {line.split()[0]: line for line in prod.splitlines()[2:] if line.strip()}
    assert lines["web"].split()[:3] == ["web", "v1", "1/1"], status.stdout  # prod runs v1, healthy
    assert lines["web"].endswith("v2 not promoted: staging rolled back"), status.stdout
    assert "FAILED" not in prod, status.stdout
    assert lines["api"].split() == ["api", "nothing", "0/1", "no", "release", "yet"], status.stdout
    web = next(line for line in staging.splitlines() if line.startswith("web"))
    assert web.split()[:3] == ["web", "v1", "1/1"], status.stdout  # the rollback restored v1
    assert "v2 failed; rolled back to v1: crash loop on runtime local" in web, status.stdout
    assert "\n" not in web and len(web) < 200

    as_json = json.loads((await cli.run("status", "shop", "-o", "json")).stdout)
    channels = {(c["service"], c["channel"]): c for c in as_json["channels"]}
    for channel in ("staging", "prod"):
        c = channels[("web", channel)]
        assert (c["version"], c["runningVersion"]) == ("v2", "v1"), c
        assert c["runningReleaseId"] and c["runningSince"], c
        assert [t["runningVersion"] for t in c["targets"]] == ["v1"], c
    assert channels[("web", "prod")]["status"] == "INSTANCE_STATUS_FAILED"  # the record is unchanged
    # As of before v2 (the as-of fold is the same): v1 ran in both, with the same "since".
    past = json.loads((await cli.run("status", "shop", "--at", str(before_v2), "-o", "json")).stdout)
    then = {(c["service"], c["channel"]): c for c in past["channels"]}
    for channel in ("staging", "prod"):
        assert (then[("web", channel)]["version"], then[("web", channel)]["runningVersion"]) == ("v1", "v1")
    assert then[("web", "prod")]["runningSince"] == channels[("web", "prod")]["runningSince"]

    # The audit log of the application has the planner's decisions and the agents' reports.
    events = await cli.run("events", "--app", "shop", "-o", "json")
    assert events.exit_code == 0, events.output
    found = [json.loads(line) for line in events.stdout.splitlines()]
    kinds = {e["type"].rsplit(".", 1)[-1] for e in found}
    assert {"ReleaseCreated", "ApprovalGranted", "InstanceStatusChanged", "IntentIssued", "ObservationRecorded"} <= kinds
    assert {e["actor"] for e in found if e["type"].endswith("ObservationRecorded")} == {"agent:local"}
    assert all(e["streamId"].split("/")[0] != "runtime" for e in found)  # infrastructure is not the shop's
    rollback = [e for e in found if e["type"].endswith("InstanceStatusChanged") and "ROLLED_BACK" in e["json"]]
    assert rollback and all("/shop/web/" in e["streamId"] + "/" for e in rollback)
