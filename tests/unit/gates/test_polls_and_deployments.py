"""The gatekeeper's pure cores: judging an answer, building a request, folding the gate
log into the open set, and mapping status changes to GitHub calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.gatekeeper import deployments, polls

APPROVAL = R.ExternalApproval(url="https://snow/api?number={{.Params.ticket}}&svc={{.Service}}",
                              body='{"v": "{{.Version}}"}', headers={"Accept": "application/json"},
                              success='body.approval == "approved"', failure='body.approval == "rejected"',
                              ticket="body.number")
REQUEST = E.ExternalApprovalRequested(check_id="chk-1", application="shop", service="web api", channel="prod",
                                      release_id="rel-1", version="v1", approval=APPROVAL,
                                      parameters={"ticket": "CHG 1&2"})
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def answer(status: int, body: object) -> polls.Answer:
    return polls.Answer(status, {}, json.dumps(body) if not isinstance(body, str) else body)


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"approval": "approved", "number": "CHG1"}, polls.PASSED),
        (200, {"approval": "rejected", "number": "CHG1"}, polls.FAILED),
        (200, {"approval": "requested", "number": "CHG1"}, polls.PENDING),
        (503, {"approval": "rejected"}, polls.PENDING),  # a 5xx never decides
        (200, "<html>not json</html>", polls.PENDING),
    ],
)
def test_judge(status: int, body: object, outcome: int) -> None:
    verdict = polls.judge(APPROVAL, answer(status, body))
    assert verdict.outcome == outcome
    assert verdict.http_status == status


def test_the_ticket_and_a_redacted_truncated_detail() -> None:
    verdict = polls.judge(APPROVAL, answer(200, {"number": "CHG1", "echo": "Bearer sekrit-value", "pad": "x" * 500}),
                          secrets=["Bearer sekrit-value"])
    assert verdict.ticket == "CHG1"
    assert "sekrit" not in verdict.detail and "***" in verdict.detail
    assert len(verdict.detail) == polls.MAX_DETAIL and verdict.detail.endswith("…")


def test_the_request_fills_placeholders_encoding_them_in_the_url() -> None:
    request = polls.build_request(REQUEST, {"Authorization": "Bearer t"})
    assert request.method == "GET"
    assert request.url == "https://snow/api?number=CHG%201%262&svc=web%20api"
    assert request.body == '{"v": "v1"}'
    assert request.headers == {"Accept": "application/json", "Authorization": "Bearer t"}
    assert "Bearer t" not in repr(request)


def test_an_unknown_placeholder_is_a_configuration_error() -> None:
    bad = E.ExternalApprovalRequested()
    bad.CopyFrom(REQUEST)
    bad.approval.url = "https://snow/{{.Params.missing}}"
    with pytest.raises(polls.TemplateError, match=r"unknown placeholder \{\{.Params.missing\}\}"):
        polls.build_request(bad, {})


def test_the_book_knows_which_gates_are_open_and_when_each_polls_next() -> None:
    book = polls.GateBook()
    book.fold(REQUEST)
    gate = book.gates["chk-1"]
    assert gate.open and gate.next_poll_at(T0) == T0
    first = polls.poll_event(gate, polls.Verdict(polls.PENDING, 200), T0)
    assert first.attempt == 1
    book.fold(first)
    book.fold(first)  # redelivered: once
    assert gate.attempts == 1 and gate.next_poll_at(T0) == T0 + timedelta(minutes=1)
    book.fold(polls.poll_event(gate, polls.Verdict(polls.PASSED, 200), T0 + timedelta(minutes=1)))
    assert not gate.open and book.open_gates() == []
    other = E.ExternalApprovalRequested(check_id="chk-2")
    book.fold(other)
    book.fold(E.ExternalApprovalClosed(check_id="chk-2"))
    assert book.open_gates() == []
    assert polls.poll_event_id("chk-1", 1) == polls.poll_event_id("chk-1", 1) != polls.poll_event_id("chk-1", 2)


CONFIG = R.GitHubDeployments(owner="acme", repo="shop", token=R.SecretRef(env="T"), environments={"prod": "production"},
                             production_channels=["prod"])


def changed(status: int, channel: str = "prod", release: str = "rel-1", runtime: str = "") -> E.InstanceStatusChanged:
    return E.InstanceStatusChanged(application="shop", service="web", channel=channel, release_id=release, version="v1",
                                   new_status=status, reason="because", target=C.Target(runtime=runtime))  # type: ignore[arg-type]


def test_status_changes_become_one_deployment_and_ordered_statuses() -> None:
    book = deployments.DeploymentBook()
    assert book.fold(changed(C.INSTANCE_STATUS_WAITING_PRECONDITIONS)) is None  # no config yet: not reported
    book.fold(E.ApplicationCreated(application=R.Application(name="shop", github_deployments=CONFIG)))
    key = book.fold(changed(C.INSTANCE_STATUS_WAITING_PRECONDITIONS))
    assert key == ("shop", "web", "prod", "rel-1")
    book.fold(changed(C.INSTANCE_STATUS_WAITING_APPROVAL))  # still queued: nothing new
    book.fold(changed(C.INSTANCE_STATUS_DEPLOYING, runtime="p1"))  # per runtime: ignored
    create = book.due(key)
    assert isinstance(create, deployments.Create)
    assert create.body["environment"] == "production" and create.body["production_environment"] is True
    assert create.body["ref"] == "v1" and create.body["auto_merge"] is False and create.body["required_contexts"] == []
    book.fold(E.GitHubDeploymentCreated(application="shop", service="web", channel="prod", release_id="rel-1",
                                        deployment_id=7, environment="production"))
    post = book.due(key)
    assert isinstance(post, deployments.Post) and (post.deployment_id, post.state) == (7, "queued")
    assert post.body == {"state": "queued", "description": "v1 waiting_preconditions: because"}
    for status in (C.INSTANCE_STATUS_DEPLOYING, C.INSTANCE_STATUS_VERIFYING, C.INSTANCE_STATUS_CONVERGED):
        book.fold(changed(status))
    states = []
    while (post := book.due(key)) is not None:
        assert isinstance(post, deployments.Post)
        states.append(post.state)
        book.fold(E.GitHubDeploymentStatusPosted(application="shop", service="web", channel="prod",
                                                 release_id="rel-1", deployment_id=7, state=post.state))
    assert states == ["queued", "in_progress", "success"]
    assert book.pending() == []


def test_a_replaced_release_never_reported_is_not_created_just_to_be_inactive() -> None:
    book = deployments.DeploymentBook()
    book.fold(E.ApplicationCreated(application=R.Application(name="shop", github_deployments=CONFIG)))
    assert book.fold(changed(C.INSTANCE_STATUS_REPLACED)) is None
    assert book.pending() == []
