"""The planner's side of change-ticket gates, driven through the pure `plan` with a
hand-moved clock: the request it emits, polls folded into the check (passed, rejected,
timed out), duplicates ignored, and a gatekeeper outage that does not eat the timeout."""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from tests.unit.planner.world import World, channel, of, seconds

CHECK = "chk-rel-web-v1.prod.change.pre-approval"


def world() -> World:
    w = World()
    approval = R.ExternalApproval(url="http://tickets/{{.Params.ticket}}", success='body.state == "approved"',
                                  failure='body.state == "rejected"', ticket="body.number",
                                  poll_interval=seconds(60), timeout=seconds(1800))
    w.feed(E.ProtectionConfigured(protection=R.Protection(name="change", external_approval=approval)))
    gate = R.ProtectionAttachment(protection="change", lifecycle=[R.LIFECYCLE_PRE_APPROVAL],
                                  parameters={"ticket": "CHG1"})
    w.setup(channel("prod", "p1", protections=[gate]))
    return w


def poll(w: World, attempt: int, outcome: int, *, at: datetime | None = None, ticket: str = "CHG1",
         detail: str = "200: {}") -> list:
    event = E.ExternalApprovalPolled(check_id=CHECK, attempt=attempt, outcome=outcome, http_status=200,  # type: ignore[arg-type]
                                     ticket=ticket, detail=detail, application="shop", service="web",
                                     channel="prod", release_id="rel-web-v1")
    event.polled_at.FromDatetime(at or w.now)
    return w.feed(event, actor="gatekeeper")


def test_entering_the_stage_requests_the_gate_and_a_passed_poll_lets_the_release_deploy() -> None:
    w = world()
    out = w.deploy("v1")
    [requested] = of(out, E.ExternalApprovalRequested)
    assert requested.check_id == CHECK
    assert requested.parameters["ticket"] == "CHG1" and requested.version == "v1"
    assert requested.approval.url == "http://tickets/{{.Params.ticket}}"
    assert w.status("prod") == "WAITING_APPROVAL"
    assert "waiting for the gatekeeper's first poll" in w.reason("prod")

    poll(w, 1, R.EXTERNAL_APPROVAL_OUTCOME_PENDING)
    assert w.reason("prod") == "change: ticket CHG1 pending approval (times out at 12:30:00 UTC)"
    out = poll(w, 2, R.EXTERNAL_APPROVAL_OUTCOME_PASSED)
    assert w.status("prod") == "DEPLOYING"
    assert of(out, E.ExternalApprovalClosed) == []  # decided: nothing to close


def test_a_rejected_ticket_fails_the_convergence_and_names_the_ticket() -> None:
    w = world()
    w.deploy("v1")
    poll(w, 1, R.EXTERNAL_APPROVAL_OUTCOME_FAILED, detail='200: {"state": "rejected"}')
    assert w.status("prod") == "FAILED"
    assert w.reason("prod") == (
        'protection change failed: ticket CHG1 was not approved (last answer: 200: {"state": "rejected"})'
    )


def test_a_duplicate_poll_changes_nothing() -> None:
    w = world()
    w.deploy("v1")
    poll(w, 1, R.EXTERNAL_APPROVAL_OUTCOME_PENDING)
    assert poll(w, 1, R.EXTERNAL_APPROVAL_OUTCOME_PASSED) == []  # the same attempt again
    assert w.status("prod") == "WAITING_APPROVAL"


def test_a_gate_that_never_decides_fails_at_its_timeout_counted_from_the_first_poll() -> None:
    w = world()
    w.deploy("v1")
    w.advance(timedelta(minutes=10))  # the gatekeeper is slow to start: not counted
    first = w.now
    for attempt in range(1, 31):
        poll(w, attempt, R.EXTERNAL_APPROVAL_OUTCOME_PENDING, detail='200: {"state": "requested"}')
        w.advance(timedelta(minutes=1))
    assert w.now == first + timedelta(minutes=30)
    assert w.status("prod") == "FAILED"
    assert w.reason("prod") == (
        'protection change failed: ticket CHG1 not approved within 30m (last answer: 200: {"state": "requested"})'
    )


def test_a_gatekeeper_outage_extends_the_deadline_instead_of_failing_the_release() -> None:
    w = world()
    w.deploy("v1")
    poll(w, 1, R.EXTERNAL_APPROVAL_OUTCOME_PENDING)
    w.advance(timedelta(minutes=1))
    poll(w, 2, R.EXTERNAL_APPROVAL_OUTCOME_PENDING)
    assert any(t.purpose == "gate" for t in w.state.timers.values())
    w.advance(timedelta(minutes=40))  # the gatekeeper is down: the deadline timer fires, no poll is fresh
    assert not any(t.purpose == "gate" for t in w.state.timers.values())
    assert w.status("prod") == "WAITING_APPROVAL"
    assert "the gatekeeper is not polling" in w.reason("prod")
    poll(w, 3, R.EXTERNAL_APPROVAL_OUTCOME_PENDING)  # back: 39 of the 40 minutes did not count
    assert w.reason("prod") == "change: ticket CHG1 pending approval (times out at 13:09:00 UTC)"
    poll(w, 4, R.EXTERNAL_APPROVAL_OUTCOME_PASSED, at=w.now + timedelta(minutes=1))
    assert w.status("prod") == "DEPLOYING"


def test_a_replaced_release_closes_its_open_gate() -> None:
    w = world()
    w.deploy("v1")
    poll(w, 1, R.EXTERNAL_APPROVAL_OUTCOME_PENDING)
    out = w.deploy("v2")
    [closed] = of(out, E.ExternalApprovalClosed)
    assert closed.check_id == CHECK and closed.release_id == "rel-web-v1"
    assert closed.reason == "replaced by v2"
    [requested] = of(out, E.ExternalApprovalRequested)
    assert requested.release_id == "rel-web-v2"
    assert poll(w, 2, R.EXTERNAL_APPROVAL_OUTCOME_PASSED) == []  # the old release's gate: stale


def test_a_bypassed_gate_passes_and_is_closed() -> None:
    w = world()
    w.deploy("v1")
    out = w.feed(E.BypassGranted(release_id="rel-web-v1", application="shop", service="web", channel="prod",
                                 target="protection:change", reason="emergency"))
    assert w.status("prod") == "DEPLOYING"
    [closed] = of(out, E.ExternalApprovalClosed)
    assert closed.check_id == CHECK
