"""Deploy and Rollback: the release snapshot, uniqueness, parameters, every rejection."""

from __future__ import annotations

import pytest

from eventstore.errors import ConvoyError
from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import (
    AlreadyExists,
    BadCommandContext,
    FailedPrecondition,
    InvalidArgument,
    Minted,
    NotFound,
    decide,
)
from tests.unit.domain.builders import apply_service, command, deployed, run, shop

R = resources_pb2


def with_parameters() -> api_pb2.ApplyServiceRequest:
    return apply_service(
        "shop", "api", resources=["registry", "orders"],
        parameters=[R.Parameter(name="tag", required=True), R.Parameter(name="log_level", default="info"),
                    R.Parameter(name="extra")],
    )


def test_deploy_snapshots_config_with_image_and_parameters() -> None:
    _, state = run(shop(), with_parameters())
    request = api_pb2.DeployRequest(
        application="shop", service="api", version="v2", image="registry.example/api:2", parameters={"tag": "abc"}
    )
    decision, state = run(state, request, minted=Minted(release_id="rel-9"))
    config = R.Service()
    config.CopyFrom(state.services[("shop", "api")])
    config.programs[0].image = "registry.example/api:2"
    release = R.Release(
        id="rel-9", application="shop", service="api", version="v2", config=config,
        parameters={"tag": "abc", "log_level": "info", "extra": ""}, created_by="alice",
    )
    assert decision.events == (("release/shop/api", events_pb2.ReleaseCreated(release=release)),)
    assert decision.response == release
    assert state.releases_of("shop", "api").latest.release == release  # type: ignore[union-attr]
    # The service itself is unchanged: the image override belongs to the release only.
    assert state.services[("shop", "api")].programs[0].image == "registry.example/api:1"


def test_deploy_without_image_keeps_programs() -> None:
    state = deployed()
    release = state.releases_of("shop", "api").latest.release  # type: ignore[union-attr]
    assert release.config == state.services[("shop", "api")]
    assert release.version == "v1" and release.id == "rel-1"


def multi_program() -> api_pb2.ApplyServiceRequest:
    return api_pb2.ApplyServiceRequest(service=R.Service(
        application="shop", name="api",
        programs=[R.Program(name="web", image="a"), R.Program(name="worker", image="b")],
    ))


INVALID: list[tuple[str, object, str]] = [
    ("no version", api_pb2.DeployRequest(application="shop", service="api"),
     'version: required: a label for this version, e.g. "v2" or a commit hash'),
    ("bad version", api_pb2.DeployRequest(application="shop", service="api", version="v 1"),
     "version: \"v 1\" is not a valid version: letters, digits, '.', '_', '+', '-', starting with a letter or digit, at most 128 characters"),
    ("bad image", api_pb2.DeployRequest(application="shop", service="api", version="v2", image="a b"),
     'image: "a b" is not an image reference: no spaces, at most 512 characters'),
    ("unknown parameter", api_pb2.DeployRequest(application="shop", service="api", version="v2", parameters={"colour": "red"}),
     'parameters["colour"]: service shop/api declares no parameter "colour"; declared: none'),
    ("bad service name", api_pb2.DeployRequest(application="shop", service="API", version="v2"),
     "service: \"API\" is not a valid service name: use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters"),
    ("rollback without reason", api_pb2.RollbackRequest(application="shop", service="api"),
     "reason: required: say why (it is recorded in the audit log)"),
    ("rollback channel twice", api_pb2.RollbackRequest(application="shop", service="api", channels=["prod", "prod"], reason="bad"),
     'channels: channel "prod" is listed twice'),
]


@pytest.mark.parametrize(("request_", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(request_: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(deployed(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_image_override_needs_a_single_program() -> None:
    _, state = run(shop(), multi_program())
    with pytest.raises(InvalidArgument) as caught:
        decide(state, command(api_pb2.DeployRequest(application="shop", service="api", version="v2", image="c")))
    assert str(caught.value) == (
        "image: service shop/api has 2 programs (web, worker); `image` only replaces the image of a "
        "single-program service — set each program's image with ApplyService instead"
    )


def test_required_parameters() -> None:
    _, state = run(shop(), with_parameters())
    with pytest.raises(InvalidArgument) as caught:
        decide(state, command(api_pb2.DeployRequest(application="shop", service="api", version="v2",
                                                     parameters={"tag": "", "nope": "1"})))
    assert str(caught.value) == (
        'parameters["nope"]: service shop/api declares no parameter "nope"; declared: extra, log_level, tag; '
        'parameters["tag"]: required parameter "tag" is missing; set a value'
    )


REFUSED: list[tuple[str, object, type[ConvoyError], str]] = [
    ("unknown application", api_pb2.DeployRequest(application="nope", service="api", version="v2"), NotFound,
     'application "nope" does not exist'),
    ("unknown service", api_pb2.DeployRequest(application="shop", service="nope", version="v2"), NotFound,
     'service "nope" of application "shop" does not exist; services: api'),
    ("version taken", api_pb2.DeployRequest(application="shop", service="api", version="v1"), AlreadyExists,
     'version: service shop/api already has a release "v1"; versions are unique per service — deploy it under a new version'),
    ("rollback unknown channel", api_pb2.RollbackRequest(application="shop", service="api", channels=["qa"], reason="bad"), NotFound,
     'channels[0]: application "shop" has no channel "qa"; channels: prod, staging'),
    ("rollback unknown target", api_pb2.RollbackRequest(application="shop", service="api", target_release_id="rel-0", reason="bad"), NotFound,
     'target_release_id: release "rel-0" is not a release of service shop/api'),
    ("rollback unknown service", api_pb2.RollbackRequest(application="shop", service="web", reason="bad"), NotFound,
     'service "web" of application "shop" does not exist; services: api'),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(request_: object, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(deployed(), command(request_, minted=Minted(release_id="rel-2")))  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_deploy_needs_a_fresh_minted_release_id() -> None:
    request = api_pb2.DeployRequest(application="shop", service="api", version="v2")
    with pytest.raises(BadCommandContext, match="Minted.release_id"):
        decide(deployed(), command(request, minted=Minted()))
    with pytest.raises(BadCommandContext, match="Minted.release_id"):
        decide(deployed(), command(request, minted=Minted(release_id="rel-1")))


def test_rollback() -> None:
    state = deployed()
    request = api_pb2.RollbackRequest(application="shop", service="api", channels=["prod"], target_release_id="rel-1",
                                      reason="5xx spike")
    decision, after = run(state, request)
    assert decision.events == (
        ("release/shop/api", events_pb2.RollbackRequested(
            application="shop", service="api", channels=["prod"], target_release_id="rel-1", reason="5xx spike")),
    )
    assert after == state  # an instruction to the planner; the catalog is unchanged


def test_rollback_needs_a_release() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        decide(shop(), command(api_pb2.RollbackRequest(application="shop", service="api", reason="bad")))
    assert str(caught.value) == "service shop/api has no releases yet; deploy one first"


@pytest.mark.parametrize("value", ["\x00", "/srv\x00/x", "\x1b[2J", "bell\x07", "\x7f"])
def test_a_parameter_value_with_a_control_character_is_refused(value: str) -> None:
    """The issue's `docroot: "\\u0000"`: a value no process can take is refused at deploy
    time, naming the parameter — not applied, then wedging the workload's rollbacks."""
    _, state = run(shop(), with_parameters())
    request = api_pb2.DeployRequest(application="shop", service="api", version="v9", parameters={"tag": value})
    with pytest.raises(InvalidArgument) as refused:
        decide(state, command(request))
    [violation] = refused.value.violations
    assert violation.field == 'parameters["tag"]' and "control character" in violation.description


def test_tabs_and_newlines_are_text() -> None:
    _, state = run(shop(), with_parameters())
    request = api_pb2.DeployRequest(application="shop", service="api", version="v9", parameters={"tag": "a\tb\r\nc"})
    assert decide(state, command(request)).events


def test_control_characters_are_refused_anywhere_in_a_declaration() -> None:
    service = with_parameters()
    service.service.programs[0].env["GREETING"] = "hi\x00"
    service.service.programs[0].args.append("--color=\x1b[31m")
    with pytest.raises(InvalidArgument) as refused:
        decide(shop(), command(service))
    assert {v.field for v in refused.value.violations} == {
        'service.programs[0].env["GREETING"]', "service.programs[0].args[0]"
    }
