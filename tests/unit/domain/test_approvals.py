"""Approve, Reject and Bypass: resolution of release/channel/approval, idempotence,
the final word of a rejection, and the bypass target names."""

from __future__ import annotations

import pytest

from eventstore.errors import ConvoyError
from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    State,
    approvals_given,
    bypass_targets,
    decide,
    is_bypassed,
    rejections_given,
)
from services.api.domain.state import Rejection
from tests.unit.domain.builders import apply_all, apply_app, channel, command, deployed, run, shop

R = resources_pb2


def approve(**fields: str) -> api_pb2.ApproveRequest:
    return api_pb2.ApproveRequest(application="shop", service="api", **fields)


def reject(**fields: str) -> api_pb2.RejectRequest:
    return api_pb2.RejectRequest(application="shop", service="api", **fields)


def granted(approver: str, release_id: str = "rel-1", comment: str = "") -> events_pb2.ApprovalGranted:
    return events_pb2.ApprovalGranted(
        release_id=release_id, application="shop", service="api", channel="prod",
        approval="release-manager", approver=approver, comment=comment,
    )


def test_approvals_default_to_the_latest_release_and_the_only_approval() -> None:
    state = deployed(deployed(), version="v2", release_id="rel-2")
    decision, state = run(state, approve(channel="prod", comment="lgtm"), actor="bob")
    assert decision.events == (("release/shop/api", granted("bob", "rel-2", "lgtm")),)
    assert decide(state, command(approve(channel="prod"), actor="bob")).events == ()  # same approver: no-op
    decision, state = run(state, approve(channel="prod", release_id="rel-1", approval="release-manager"), actor="carol")
    assert decision.events == (("release/shop/api", granted("carol")),)
    _, state = run(state, approve(channel="prod"), actor="carol")
    assert approvals_given(state, "rel-2", "prod", "release-manager") == ["bob", "carol"]
    assert approvals_given(state, "rel-1", "prod", "release-manager") == ["carol"]
    assert approvals_given(state, "rel-404", "prod", "release-manager") == []


def test_rejection_is_recorded_and_final() -> None:
    state = deployed()
    _, state = run(state, approve(channel="prod"), actor="bob")
    decision, state = run(state, reject(channel="prod", reason="breaks checkout"), actor="carol")
    assert decision.events == (("release/shop/api", events_pb2.ApprovalRejected(
        release_id="rel-1", application="shop", service="api", channel="prod", approval="release-manager",
        approver="carol", reason="breaks checkout")),)
    assert decide(state, command(reject(channel="prod", reason="again"), actor="carol")).events == ()
    assert rejections_given(state, "rel-1", "prod", "release-manager") == [Rejection("carol", "breaks checkout")]
    with pytest.raises(FailedPrecondition) as caught:
        decide(state, command(approve(channel="prod"), actor="dave"))
    assert str(caught.value) == (
        'release "v1" (rel-1) of shop/api was rejected for "release-manager" in channel "prod" by carol '
        '("breaks checkout"); a rejection is final — deploy a new release'
    )
    # A new release starts clean.
    state = deployed(state, version="v2", release_id="rel-2")
    assert decide(state, command(approve(channel="prod"), actor="dave")).changed


def two_approvals() -> State:
    state = apply_all(shop(), [apply_app(
        "shop",
        channel("staging", "eu-1"),
        R.ReleaseChannel(name="prod", runtimes=[R.RuntimeBinding(runtime="eu-1")], preconditions=[
            R.Precondition(manual_approval=R.ManualApproval(name="security", min_approvers=1)),
            R.Precondition(manual_approval=R.ManualApproval(name="product", min_approvers=2)),
        ]),
    )])
    return deployed(state)


def test_an_approval_must_be_named_when_a_channel_has_several() -> None:
    state = two_approvals()
    with pytest.raises(InvalidArgument) as caught:
        decide(state, command(approve(channel="prod")))
    assert str(caught.value) == 'approval: channel "prod" has several manual approvals (product, security); name the one you mean'
    assert decide(state, command(approve(channel="prod", approval="product"))).changed


def four_eyes() -> State:
    state = apply_all(shop(), [apply_app(
        "shop",
        channel("staging", "eu-1"),
        R.ReleaseChannel(name="prod", runtimes=[R.RuntimeBinding(runtime="eu-1")], preconditions=[
            R.Precondition(manual_approval=R.ManualApproval(name="change-board", min_approvers=1, exclude_deployer=True)),
        ]),
    )])
    return deployed(state)  # deployed by alice


def test_a_release_records_its_deployer() -> None:
    record = deployed().find_release("rel-1")
    assert record is not None and record.release.created_by == "alice"


def test_four_eyes_refuses_the_deployer_as_approver() -> None:
    state = four_eyes()
    with pytest.raises(PermissionDenied) as caught:
        decide(state, command(approve(channel="prod"), actor="alice"))
    assert str(caught.value) == (
        'release "v1" (rel-1) of shop/api was deployed by alice; approval "change-board" in channel "prod" needs '
        "someone else (four eyes) — ask another approver, or reject it yourself"
    )
    decision, state = run(state, approve(channel="prod"), actor="bob")
    assert decision.changed and approvals_given(state, "rel-1", "prod", "change-board") == ["bob"]
    # The deployer may still stop their own release.
    assert decide(state, command(reject(channel="prod", reason="wrong build"), actor="alice")).changed
    # Without the rule the deployer's own approval counts.
    assert decide(deployed(), command(approve(channel="prod"), actor="alice")).changed


REFUSED: list[tuple[str, object, type[ConvoyError], str]] = [
    ("unknown channel", approve(channel="qa"), NotFound, 'channel: application "shop" has no channel "qa"; channels: prod, staging'),
    ("no channel", approve(), InvalidArgument,
     "channel: channel name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters)"),
    ("channel without approval", approve(channel="staging"), FailedPrecondition,
     'channel "staging" of application "shop" has no manual approval; there is nothing to approve or reject'),
    ("unknown approval", approve(channel="prod", approval="cto"), NotFound,
     'approval: channel "prod" has no manual approval "cto"; approvals: release-manager'),
    ("unknown release", approve(channel="prod", release_id="rel-0"), NotFound,
     'release_id: release "rel-0" is not a release of service shop/api'),
    ("unknown service", api_pb2.ApproveRequest(application="shop", service="web", channel="prod"), NotFound,
     'service "web" of application "shop" does not exist; services: api'),
    ("comment too long", approve(channel="prod", comment="c" * 2000), InvalidArgument,
     "comment: is 2000 characters; the limit is 1024"),
    ("reject without reason", reject(channel="prod"), InvalidArgument,
     "reason: required: say why (it is recorded in the audit log)"),
    ("reject unknown release", reject(channel="prod", release_id="x", reason="no"), NotFound,
     'release_id: release "x" is not a release of service shop/api'),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(request_: object, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(deployed(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_approving_before_any_release() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        decide(shop(), command(approve(channel="prod")))
    assert str(caught.value) == "service shop/api has no releases yet; deploy one first"


# -- bypass ---------------------------------------------------------------------------------


def bypass(target: str, reason: str = "hotfix for incident 42", **fields: str) -> api_pb2.BypassRequest:
    return api_pb2.BypassRequest(application="shop", service="api", channel="prod", target=target, reason=reason, **fields)


def test_bypass_targets_of_a_channel() -> None:
    prod = R.ReleaseChannel(
        name="prod",
        preconditions=[
            R.Precondition(channel_stable=R.ChannelStable(channel="staging")),
            R.Precondition(manual_approval=R.ManualApproval(name="release-manager", min_approvers=1)),
            R.Precondition(deploy_window=R.DeployWindow(start="09:00", end="17:00")),
            R.Precondition(deploy_window=R.DeployWindow(start="18:00", end="19:00")),
        ],
        protections=[R.ProtectionAttachment(protection="smoke", lifecycle=[R.LIFECYCLE_PRE_APPROVAL])],
    )
    assert bypass_targets(prod) == [
        "precondition:release-manager",
        "precondition:channel_stable:staging",
        "precondition:deploy_window",
        "protection:smoke",
    ]


@pytest.mark.parametrize("target", ["precondition:release-manager", "precondition:channel_stable:staging", "protection:smoke"])
def test_bypass(target: str) -> None:
    decision, state = run(deployed(), bypass(target), actor="oncall")
    assert decision.events == (("release/shop/api", events_pb2.BypassGranted(
        release_id="rel-1", application="shop", service="api", channel="prod", target=target,
        reason="hotfix for incident 42")),)
    assert is_bypassed(state, "rel-1", "prod", target)
    assert decide(state, command(bypass(target, reason="again"))).events == ()


BYPASS_REFUSED: list[tuple[str, api_pb2.BypassRequest, type[ConvoyError], str]] = [
    ("no reason", bypass("protection:smoke", reason=" "), InvalidArgument,
     "reason: required: say why (it is recorded in the audit log)"),
    ("malformed target", bypass("smoke"), InvalidArgument,
     'target: "smoke" is not a bypass target: use "precondition:<approval name>", "precondition:channel_stable:<channel>", '
     '"precondition:deploy_window" or "protection:<protection name>"'),
    ("target not on channel", bypass("precondition:deploy_window"), NotFound,
     'target: channel "prod" has no "precondition:deploy_window" to bypass; it declares: precondition:channel_stable:staging, '
     "precondition:release-manager, protection:smoke"),
    ("unknown protection", bypass("protection:soak"), NotFound,
     'target: channel "prod" has no "protection:soak" to bypass; it declares: precondition:channel_stable:staging, '
     "precondition:release-manager, protection:smoke"),
    ("unknown release", bypass("protection:smoke", release_id="nope"), NotFound,
     'release_id: release "nope" is not a release of service shop/api'),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in BYPASS_REFUSED], ids=[c[0] for c in BYPASS_REFUSED])
def test_bypass_refused(request_: api_pb2.BypassRequest, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(deployed(), command(request_))
    assert str(caught.value) == message
