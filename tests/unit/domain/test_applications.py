"""ApplyApplication / DeleteApplication: accepted declarations, exact events, and every
rejection with its error type and message."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import duration_pb2

from eventstore.errors import ConvoyError, InvalidInput
from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import FailedPrecondition, InvalidArgument, NotFound, State, decide
from tests.unit.domain.builders import apply_app, apply_service, channel, command, run, shop

R = resources_pb2


def test_create_update_and_reapply() -> None:
    state = shop()
    request = apply_app("web", channel("staging", "eu-1"))
    decision, state = run(state, request)
    assert decision.events == (("app/web", events_pb2.ApplicationCreated(application=request.application)),)
    assert decision.response is None

    again, _ = run(state, request)
    assert again.events == () and not again.changed

    request.application.description = "the storefront"
    updated, state = run(state, request)
    assert updated.events == (("app/web", events_pb2.ApplicationUpdated(application=request.application)),)
    assert state.applications["web"].description == "the storefront"


def test_unknown_fields_do_not_reach_events_or_break_idempotence() -> None:
    request = apply_app("web", channel("staging", "eu-1"))
    noisy = api_pb2.ApplyApplicationRequest()
    noisy.ParseFromString(request.SerializeToString())
    noisy.application.MergeFromString(b"\xf8\x07\x01")  # field 127, unknown to this build
    decision, state = run(shop(), noisy)
    (_, event), = decision.events
    assert event.SerializeToString() == events_pb2.ApplicationCreated(application=request.application).SerializeToString()
    assert decide(state, command(request)).events == ()


def test_delete() -> None:
    state = shop()
    _, state = run(state, apply_app("web", channel("staging", "eu-1")))
    decision, state = run(state, api_pb2.DeleteApplicationRequest(name="web"))
    assert decision.events == (("app/web", events_pb2.ApplicationDeleted(name="web")),)
    assert "web" not in state.applications


def window(**fields: object) -> R.Precondition:
    return R.Precondition(deploy_window=R.DeployWindow(**fields))  # type: ignore[arg-type]


def approval(name: str, n: int = 1) -> R.Precondition:
    return R.Precondition(manual_approval=R.ManualApproval(name=name, min_approvers=n))


def stable(name: str) -> R.Precondition:
    return R.Precondition(channel_stable=R.ChannelStable(channel=name))


def attach(name: str = "smoke", *stages: int, **fields: object) -> R.ProtectionAttachment:
    return R.ProtectionAttachment(protection=name, lifecycle=list(stages) or [R.LIFECYCLE_PRE_APPROVAL], **fields)  # type: ignore[arg-type]


def with_channels(*channels: R.ReleaseChannel) -> api_pb2.ApplyApplicationRequest:
    return apply_app("web", *channels)


def ch(name: str = "prod", runtimes: tuple[str, ...] = ("eu-1",), **fields: object) -> R.ReleaseChannel:
    return R.ReleaseChannel(name=name, runtimes=[R.RuntimeBinding(runtime=r) for r in runtimes], **fields)  # type: ignore[arg-type]


INVALID: list[tuple[str, Callable[[], api_pb2.ApplyApplicationRequest], str]] = [
    ("missing", lambda: api_pb2.ApplyApplicationRequest(), "application: required: the complete application declaration"),
    ("empty name", lambda: apply_app(""),
     "application.name: application name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters)"),
    ("upper-case name", lambda: apply_app("Web"),
     'application.name: "Web" is not a valid application name: use lower-case letters, digits and \'-\', start and end with a letter or digit, at most 63 characters'),
    ("name too long", lambda: apply_app("a" * 64),
     f'application.name: "{"a" * 64}" is not a valid application name: use lower-case letters, digits and \'-\', start and end with a letter or digit, at most 63 characters'),
    ("bad label key", lambda: api_pb2.ApplyApplicationRequest(application=R.Application(name="web", labels={"-x": "1"})),
     'application.labels["-x"]: label key "-x" is invalid: the name part must be at most 63 characters of letters, digits, \'-\', \'_\' or \'.\', starting and ending with a letter or digit'),
    ("bad label value", lambda: api_pb2.ApplyApplicationRequest(application=R.Application(name="web", labels={"team": "a b"})),
     'application.labels["team"]: label value "a b" is invalid: at most 63 characters of letters, digits, \'-\', \'_\' or \'.\', starting and ending with a letter or digit (or empty)'),
    ("bad label prefix", lambda: api_pb2.ApplyApplicationRequest(application=R.Application(name="web", labels={"Convoy.dev/x": ""})),
     'application.labels["Convoy.dev/x"]: label key "Convoy.dev/x" is invalid: the prefix before \'/\' must be a lower-case DNS subdomain (e.g. convoy.dev)'),
    ("duplicate channel", lambda: with_channels(ch("prod"), ch("prod")),
     'application.release_channels: channel "prod" is declared twice; channel names must be unique'),
    ("unregistered runtime", lambda: with_channels(ch("staging"), ch("prod", ("eu-9",))),
     'application.release_channels[1].runtimes[0].runtime: runtime "eu-9" is not registered; register it first (ApplyRuntime) or bind one of: eu-1, us-1'),
    ("no runtimes", lambda: with_channels(ch("prod", ())),
     "application.release_channels[0].runtimes: bind at least one runtime: a channel deploys to its runtimes"),
    ("empty runtime", lambda: with_channels(ch("prod", ("",))),
     "application.release_channels[0].runtimes[0].runtime: required: the name of a registered runtime"),
    ("bad namespace", lambda: with_channels(R.ReleaseChannel(name="prod", runtimes=[R.RuntimeBinding(runtime="eu-1", namespace="Prod_NS")])),
     'application.release_channels[0].runtimes[0].namespace: "Prod_NS" is not a valid namespace: lower-case letters, digits and \'-\', at most 63 characters'),
    ("default namespace too long", lambda: apply_app("w" * 40, ch("p" * 20)),
     f'application.release_channels[0].runtimes[0].namespace: the default namespace "convoy-{"w" * 40}-{"p" * 20}" is longer than 63 characters; set a namespace'),
    ("runtime bound twice", lambda: with_channels(ch("prod", ("eu-1", "eu-1"))),
     'application.release_channels[0].runtimes[1]: runtime "eu-1" is bound twice with namespace "convoy-web-prod"'),
    ("negative concurrency", lambda: with_channels(ch(max_concurrent_runtimes=-1)),
     "application.release_channels[0].max_concurrent_runtimes: must be 0 (no limit) or more"),
    ("empty precondition", lambda: with_channels(ch(preconditions=[R.Precondition()])),
     "application.release_channels[0].preconditions[0]: empty precondition: set one of channel_stable, manual_approval, deploy_window"),
    ("stable on unknown channel", lambda: with_channels(ch("staging"), ch("prod", preconditions=[stable("qa")])),
     'application.release_channels[1].preconditions[0].channel_stable.channel: channel "qa" is not a channel of this application; use one of: staging'),
    ("stable on itself", lambda: with_channels(ch("prod", preconditions=[stable("prod")])),
     "application.release_channels[0].preconditions[0].channel_stable.channel: a channel cannot wait for itself"),
    ("stable empty", lambda: with_channels(ch("prod", preconditions=[stable("")])),
     "application.release_channels[0].preconditions[0].channel_stable.channel: required: the channel that must be stable first"),
    ("stable twice", lambda: with_channels(ch("staging"), ch("prod", preconditions=[stable("staging"), stable("staging")])),
     'application.release_channels[1].preconditions: channel_stable "staging" is listed twice'),
    ("cycle", lambda: with_channels(ch("a", preconditions=[stable("c")]), ch("b", preconditions=[stable("a")]), ch("c", preconditions=[stable("b")])),
     "application.release_channels: channel_stable preconditions form a cycle (a -> c -> b -> a), so none of these channels could ever deploy; remove one of them"),
    ("zero approvers", lambda: with_channels(ch(preconditions=[approval("qa", 0)])),
     "application.release_channels[0].preconditions[0].manual_approval.min_approvers: must be between 1 and 100 (got 0)"),
    ("approval without name", lambda: with_channels(ch(preconditions=[approval("")])),
     "application.release_channels[0].preconditions[0].manual_approval.name: approval name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters)"),
    ("duplicate approval", lambda: with_channels(ch(preconditions=[approval("qa"), approval("qa", 2)])),
     'application.release_channels[0].preconditions: manual approval "qa" is declared twice; approval names must be unique in a channel'),
    ("bad day", lambda: with_channels(ch(preconditions=[window(days=["monday"], start="09:00", end="17:00")])),
     'application.release_channels[0].preconditions[0].deploy_window.days[0]: "monday" is not a day: use one of mon, tue, wed, thu, fri, sat, sun'),
    ("repeated day", lambda: with_channels(ch(preconditions=[window(days=["mon", "mon"], start="09:00", end="17:00")])),
     'application.release_channels[0].preconditions[0].deploy_window.days: "mon" is listed twice'),
    ("bad time", lambda: with_channels(ch(preconditions=[window(start="9:00", end="24:00")])),
     'application.release_channels[0].preconditions[0].deploy_window.start: "9:00" is not a 24-hour time "HH:MM" (00:00 to 23:59); '
     'application.release_channels[0].preconditions[0].deploy_window.end: "24:00" is not a 24-hour time "HH:MM" (00:00 to 23:59)'),
    ("missing times", lambda: with_channels(ch(preconditions=[window()])),
     'application.release_channels[0].preconditions[0].deploy_window.start: required: a 24-hour time "HH:MM"; '
     'application.release_channels[0].preconditions[0].deploy_window.end: required: a 24-hour time "HH:MM"'),
    ("start after end", lambda: with_channels(ch(preconditions=[window(start="22:00", end="06:00")])),
     "application.release_channels[0].preconditions[0].deploy_window.end: the window must end after it starts (22:00–06:00); a window across midnight is two windows, e.g. 22:00–23:59 and 00:00–06:00 on the next day"),
    ("unknown timezone", lambda: with_channels(ch(preconditions=[window(start="09:00", end="17:00", timezone="europe/berlin")])),
     'application.release_channels[0].preconditions[0].deploy_window.timezone: "europe/berlin" is not a known IANA time zone (e.g. "Europe/Berlin", "UTC"; names are case-sensitive); leave it empty for UTC'),
    ("timezone directory", lambda: with_channels(ch(preconditions=[window(start="09:00", end="17:00", timezone="America")])),
     'application.release_channels[0].preconditions[0].deploy_window.timezone: "America" is not a known IANA time zone (e.g. "Europe/Berlin", "UTC"; names are case-sensitive); leave it empty for UTC'),
    ("unknown protection", lambda: with_channels(ch(protections=[attach("soak")])),
     'application.release_channels[0].protections[0].protection: protection "soak" does not exist; apply it first (ApplyProtection) or attach one of: smoke'),
    ("no lifecycle", lambda: with_channels(ch(protections=[R.ProtectionAttachment(protection="smoke")])),
     "application.release_channels[0].protections[0].lifecycle: list at least one stage: LIFECYCLE_PRE_APPROVAL, LIFECYCLE_POST_APPROVAL, LIFECYCLE_DEPLOYMENT, LIFECYCLE_POST_DEPLOYMENT"),
    ("unspecified lifecycle", lambda: with_channels(ch(protections=[attach("smoke", R.LIFECYCLE_UNSPECIFIED)])),
     "application.release_channels[0].protections[0].lifecycle[0]: a lifecycle stage is required: one of LIFECYCLE_PRE_APPROVAL, LIFECYCLE_POST_APPROVAL, LIFECYCLE_DEPLOYMENT, LIFECYCLE_POST_DEPLOYMENT"),
    ("unknown lifecycle", lambda: with_channels(ch(protections=[attach("smoke", 9)])),
     "application.release_channels[0].protections[0].lifecycle[0]: 9 is not a known lifecycle stage: use one of LIFECYCLE_PRE_APPROVAL, LIFECYCLE_POST_APPROVAL, LIFECYCLE_DEPLOYMENT, LIFECYCLE_POST_DEPLOYMENT"),
    ("repeated lifecycle", lambda: with_channels(ch(protections=[attach("smoke", 1, 1)])),
     "application.release_channels[0].protections[0].lifecycle: LIFECYCLE_PRE_APPROVAL is listed twice"),
    ("unknown failure behavior", lambda: with_channels(ch(protections=[attach("smoke", failure_behavior=7)])),
     "application.release_channels[0].protections[0].failure_behavior: 7 is not a known failure behavior: use one of FAILURE_BEHAVIOR_BLOCK, FAILURE_BEHAVIOR_FAIL"),
    ("negative duration", lambda: with_channels(ch(protections=[attach("smoke", R.LIFECYCLE_POST_DEPLOYMENT, duration=duration_pb2.Duration(seconds=-5))])),
     "application.release_channels[0].protections[0].duration: must not be negative"),
    ("soak outside post-deployment", lambda: with_channels(ch(protections=[attach("smoke", R.LIFECYCLE_DEPLOYMENT, delay=duration_pb2.Duration(seconds=5))])),
     "application.release_channels[0].protections[0].delay: applies only to post-deployment checks; add LIFECYCLE_POST_DEPLOYMENT or remove it"),
    ("attached twice", lambda: with_channels(ch(protections=[attach("smoke"), attach("smoke", R.LIFECYCLE_DEPLOYMENT)])),
     'application.release_channels[0].protections: protection "smoke" is attached twice; attach it once and list every lifecycle stage in it'),
    ("bad attachment parameter", lambda: with_channels(ch(protections=[attach("smoke", parameters={"1x": "y"})])),
     'application.release_channels[0].protections[0].parameters["1x"]: "1x" is not a valid parameter name: use letters, digits and \'_\', starting with a letter or \'_\', at most 63 characters'),
    ("description too long", lambda: api_pb2.ApplyApplicationRequest(application=R.Application(name="web", description="x" * 1025)),
     "application.description: is 1025 characters; the limit is 1024"),
]


@pytest.mark.parametrize(("request_factory", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_applications(request_factory: Callable[[], api_pb2.ApplyApplicationRequest], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(request_factory()))
    assert str(caught.value) == message
    assert isinstance(caught.value, InvalidInput) and not caught.value.retryable
    assert caught.value.violations[0].field == message.split(":", 1)[0]


def test_every_problem_is_reported_at_once() -> None:
    request = apply_app("Web", ch("prod", ("eu-9",), max_concurrent_runtimes=-2))
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(request))
    assert [v.field for v in caught.value.violations] == [
        "application.name",
        "application.release_channels[0].max_concurrent_runtimes",
        "application.release_channels[0].runtimes[0].runtime",
    ]


def test_valid_rich_application_is_accepted() -> None:
    request = with_channels(
        ch("staging"),
        ch(
            "prod",
            ("eu-1", "us-1"),
            preconditions=[
                stable("staging"),
                approval("release-manager", 2),
                approval("security"),
                window(days=["mon", "tue"], start="09:00", end="17:30", timezone="Europe/Berlin"),
                window(days=["sat"], start="10:00", end="12:00"),
            ],
            protections=[
                attach("smoke", R.LIFECYCLE_PRE_APPROVAL, R.LIFECYCLE_POST_DEPLOYMENT,
                       delay=duration_pb2.Duration(seconds=30), duration=duration_pb2.Duration(seconds=600),
                       failure_behavior=R.FAILURE_BEHAVIOR_FAIL, parameters={"url_path": "/healthz"}),
            ],
            max_concurrent_runtimes=1,
            labels={"convoy.dev/tier": "prod"},
        ),
    )
    decision, state = run(shop(), request)
    assert [type(e).__name__ for _, e in decision.events] == ["ApplicationCreated"]
    assert state.applications["web"] == request.application


REFUSED: list[tuple[str, Callable[[State], api_pb2.ApplyApplicationRequest | api_pb2.DeleteApplicationRequest], type[ConvoyError], str]] = [
    ("delete missing", lambda s: api_pb2.DeleteApplicationRequest(name="nope"), NotFound, 'application "nope" does not exist'),
    ("delete invalid name", lambda s: api_pb2.DeleteApplicationRequest(name="No!"), InvalidArgument,
     'name: "No!" is not a valid application name: use lower-case letters, digits and \'-\', start and end with a letter or digit, at most 63 characters'),
    ("delete with services", lambda s: api_pb2.DeleteApplicationRequest(name="shop"), FailedPrecondition,
     'application "shop" still has services (api); delete them first'),
    ("delete with resources", lambda s: api_pb2.DeleteApplicationRequest(name="billing"), FailedPrecondition,
     'application "billing" still has linked resources (ledger); unlink them first'),
    ("remove an overridden channel", lambda s: apply_app("shop", channel("prod", "eu-1")), FailedPrecondition,
     'application.release_channels: channel "staging" cannot be removed: service "api" overrides it; remove that override (ApplyService) first'),
]


@pytest.mark.parametrize(("make", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(make: Callable[[State], object], error: type[ConvoyError], message: str) -> None:
    state = shop()
    _, state = run(state, apply_service("shop", "api", resources=["registry", "orders"],
                                        overrides=[R.ChannelOverride(channel="staging", replicas=1)]))
    with pytest.raises(error) as caught:
        decide(state, command(make(state)))  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert not caught.value.retryable


def test_removing_a_channel_drops_its_paused_convergences() -> None:
    state = shop()
    _, state = run(state, api_pb2.PauseConvergenceRequest(application="shop", service="api", channel="staging"))
    assert ("shop", "api", "staging") in state.paused_convergences
    _, state = run(state, apply_app("shop", channel("prod", "eu-1")))
    assert state.paused_convergences == {}
