"""The UI's pure parts: what a fleet cell says, the pipeline's order, drift, time travel,
CSRF tokens, one-sentence reasons."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import api_pb2, resources_pb2
from schemas.convoy.v1 import convergence_pb2 as C
from services.api.errors import InvalidArgument
from services.api.ui import at, present, session
from services.api.ui.views import common, fleet, runtimes


def channel(name: str, version: str, status: int, *, running: str = "", same: bool = False, reason: str = "") -> api_pb2.ChannelConvergence:
    return api_pb2.ChannelConvergence(
        application="shop", service="web", channel=name, release_id=f"rel-{version}", version=version, status=status,  # type: ignore[arg-type]
        reason=reason, running_version=running, running_release_id=f"rel-{version}" if same else ("rel-run" if running else ""),
    )


def test_a_cell_says_what_runs_apart_from_what_became_of_the_latest_release() -> None:
    staging = channel("staging", "v2", C.INSTANCE_STATUS_ROLLED_BACK, running="v1",
                      reason="rolled back to v1: progress deadline on runtime local <html><body>404</body></html>")
    prod = channel("prod", "v2", C.INSTANCE_STATUS_FAILED, running="v1", reason="staging ROLLING_BACK at v2")
    cell = fleet.cell("prod", prod, [staging, prod])
    assert (cell.running, cell.health) == ("v1", "healthy")
    assert cell.flight == "v2 not promoted: staging rolled back" and cell.flight_tone == "none"
    cell = fleet.cell("staging", staging, [staging, prod])
    assert (cell.running, cell.health, cell.flight_tone) == ("v1", "healthy", "bad")
    assert cell.flight.startswith("v2 failed; rolled back to v1") and "<html" not in cell.flight
    converged = fleet.cell("staging", channel("staging", "v1", C.INSTANCE_STATUS_CONVERGED, running="v1", same=True))
    assert (converged.running, converged.health, converged.flight) == ("v1", "healthy", "")
    broken = fleet.cell("staging", channel("staging", "v1", C.INSTANCE_STATUS_FAILED, running="v1", same=True, reason="x"))
    assert broken.health == "failing"
    assert fleet.cell("qa", None).running == ""


def test_the_fleet_filters_and_pages_rows_on_the_server() -> None:
    app = resources_pb2.Application(name="shop", release_channels=[resources_pb2.ReleaseChannel(name="staging")])
    services = {"shop": [resources_pb2.Service(application="shop", name=f"s{i:03}") for i in range(250)]}
    waiting = api_pb2.ChannelConvergence(service="s007", channel="staging", release_id="r", version="v1",
                                         status=C.INSTANCE_STATUS_WAITING_APPROVAL)
    rows = fleet.rows([app], services, {"shop": [waiting]})
    assert len(rows) == 250 and rows[0].service == "s000"
    assert [r.service for r in fleet.select(rows, text="shop/s00", state="all")] == [f"s00{i}" for i in range(10)]
    assert [r.service for r in fleet.select(rows, text="", state="waiting")] == ["s007"]
    groups = fleet.groups(rows[:3], [app])
    assert [(g.application, g.channels, len(g.rows)) for g in groups] == [("shop", ("staging",), 3)]


def test_the_pipeline_follows_preconditions_not_the_declared_order() -> None:
    def ch(name: str, *after: str) -> resources_pb2.ReleaseChannel:
        return resources_pb2.ReleaseChannel(name=name, preconditions=[
            resources_pb2.Precondition(channel_stable=resources_pb2.ChannelStable(channel=a)) for a in after])

    app = resources_pb2.Application(name="a", release_channels=[ch("prod", "canary"), ch("canary", "staging"), ch("staging")])
    assert [c.name for c in common.pipeline(app)] == ["staging", "canary", "prod"]


def test_drift_is_the_latest_workload_observation_not_a_check() -> None:
    def obs(position: int, kind: str, service: str = "web") -> api_pb2.Event:
        return api_pb2.Event(position=position, type="convoy.v1.ObservationRecorded", json=(
            '{"observation": {"runtime": "eu-1", "namespace": "shop-prod", "application": "shop", '
            f'"service": "{service}", "kind": "{kind}"}}}}'))

    newest_first = api_pb2.ListEventsResponse(events=[
        obs(9, "OBSERVATION_KIND_CHECK_PASSED"), obs(8, "OBSERVATION_KIND_DRIFTED"), obs(7, "OBSERVATION_KIND_HEALTHY"),
        obs(6, "OBSERVATION_KIND_HEALTHY", "api"), obs(5, "OBSERVATION_KIND_DRIFTED", "api"),
    ])
    assert runtimes.drift(newest_first) == {"eu-1": ["shop/web in shop-prod"]}


@pytest.mark.parametrize("value, position", [("12", 12), (" 7 ", 7)])
def test_at_a_position(value: str, position: int) -> None:
    parsed = at.parse(value)
    assert parsed is not None and parsed.position == position and at.label(parsed) == str(position)


def test_at_a_time_and_nonsense() -> None:
    parsed = at.parse("2026-12-01T10:00:00Z")
    assert parsed is not None and parsed.HasField("time") and at.label(parsed) == "2026-12-01T10:00:00Z"
    assert at.parse("") is None and at.parse(None) is None
    for bad in ("0", "yesterday", "12abc"):
        with pytest.raises(InvalidArgument):
            at.parse(bad)


def test_csrf_tokens_belong_to_one_session() -> None:
    token = session.csrf_token("cvy_a_secret")
    assert session.csrf_ok("cvy_a_secret", token)
    assert not session.csrf_ok("cvy_b_secret", token)
    assert not session.csrf_ok("cvy_a_secret", "") and not session.csrf_ok(None, token)
    assert "cvy_a_secret" not in token


def test_a_reason_in_a_cell_is_its_first_sentence() -> None:
    assert present.short("deploy window closed. opens Monday") == "deploy window closed."
    assert present.short("HTTP 404: <!DOCTYPE html><html>…") == "HTTP 404:"
    assert len(present.short("x" * 500)) == present.MAX_REASON


def test_a_countdown_is_the_seconds_left_and_never_negative() -> None:
    from datetime import UTC, datetime, timedelta

    from google.protobuf import timestamp_pb2

    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    ends = timestamp_pb2.Timestamp()
    ends.FromDatetime(now + timedelta(seconds=25))
    assert present.seconds_until(ends, now) == 25
    assert present.seconds_until(ends, now + timedelta(minutes=1)) == 0
    assert present.seconds_until(timestamp_pb2.Timestamp(), now) is None


def test_a_release_row_shows_the_tag_asked_for_and_the_digest_it_runs() -> None:
    from schemas.convoy.v1 import resources_pb2 as R
    from services.api.ui.views.release import ImageCell, release_row

    digest = "sha256:" + "ab" * 32
    release = R.Release(
        id="rel-1", version="1.2.0", created_by="registry:hub",
        config=R.Service(programs=[R.Program(name="web", image="reg.example.com/shop/web:1.2.0"),
                                   R.Program(name="side", image="busybox:1")]),
        images=[R.PinnedImage(program="web", image="reg.example.com/shop/web:1.2.0", digest=digest,
                              registry="hub", reference=f"reg.example.com/shop/web@{digest}")],
    )
    row = release_row(release)
    assert row.images == (ImageCell("reg.example.com/shop/web:1.2.0", digest), ImageCell("busybox:1", ""))
    assert row.images[0].short == digest[:19]
    assert (row.version, row.created_by) == ("1.2.0", "registry:hub")
