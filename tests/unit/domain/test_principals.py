"""Principal names: normalised and restricted on new tokens, unique among live tokens,
and compared one way (services.principals.key) by approvals — `bob`, `bob ` and `bоb`
(Cyrillic о) are one person, on new tokens and in logs recorded before these rules."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import api_pb2, events_pb2, options_pb2, resources_pb2
from services import principals
from services.api.domain import AlreadyExists, InvalidArgument, Minted, PermissionDenied, approvals_given, decide, evolve
from tests.unit.domain.builders import apply_all, apply_app, channel, command, deployed, run, shop
from tests.unit.domain.test_approvals import approve

CYRILLIC_BOB = "b\u043eb"


@pytest.mark.parametrize("name", ["bob", "bob ", " Bob", "BOB", CYRILLIC_BOB, "ＢＯＢ", "b\u200bob", "b\u00f3b", "\u0392\u039f\u0392"])
def test_look_alike_names_are_one_principal(name: str) -> None:
    assert principals.key(name) == "bob" and principals.same(name, "bob")


@pytest.mark.parametrize("name", ["bobby", "b0b", "rob", "alice"])
def test_different_names_stay_different(name: str) -> None:
    assert not principals.same(name, "bob")


def token(name: str, token_id: str = "tok-1") -> api_pb2.CreateTokenRequest:
    return api_pb2.CreateTokenRequest(name=name, role=options_pb2.ROLE_APPROVER)


def test_a_new_tokens_name_is_stored_normalised() -> None:
    decision, state = run(shop(), token("  Bob.Smith@Example.COM "))
    [(_, created)] = decision.events
    assert isinstance(created, events_pb2.TokenCreated) and created.name == "bob.smith@example.com"
    assert decision.response.name == "bob.smith@example.com"
    assert state.tokens["tok-1"].name == "bob.smith@example.com"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (CYRILLIC_BOB, "'о' (CYRILLIC SMALL LETTER O) is not one of them"),
        ("ci deployer", "' ' (SPACE) is not one of them"),
        ("agent:eu-1", "':' (COLON) is not one of them"),
        ("a\nb", "'\\n' (U+000A) is not one of them"),
        ("-bob", "starting with a letter or digit"),
        ("b" * 65, "at most 64 characters"),
        ("   ", "required: who the token is for"),
    ],
)
def test_a_name_outside_the_safe_alphabet_is_refused_with_what_to_fix(name: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(token(name)))
    assert str(caught.value).startswith("name: ") and says in str(caught.value)


def test_names_are_unique_among_live_tokens_as_principals_compare() -> None:
    _, state = run(shop(), token("bob"))
    for twin in ("bob", "Bob ", "BOB"):
        with pytest.raises(AlreadyExists) as caught:
            decide(state, command(token(twin), minted=Minted(token_id="tok-2", token_secret="s" * 40)))
        assert 'already named "bob" (id tok-1' in str(caught.value) and "revoke that one first" in str(caught.value)
    # A token named before the rules (folded from the log as it was recorded) holds its name too.
    old = evolve(shop(), events_pb2.TokenCreated(token_id="tok-0", name=CYRILLIC_BOB + " ", role="approver", secret_sha256="0" * 64))
    with pytest.raises(AlreadyExists):
        decide(old, command(token("bob")))
    # Once revoked, the name is free again.
    _, state = run(state, api_pb2.RevokeTokenRequest(token_id="tok-1", reason="rotated"))
    assert decide(state, command(token("bob"), minted=Minted(token_id="tok-2", token_secret="s" * 40))).changed


def four_eyes_by(deployer: str, *, min_approvers: int = 1):  # type: ignore[no-untyped-def]
    state = apply_all(shop(), [apply_app(
        "shop",
        channel("staging", "eu-1"),
        resources_pb2.ReleaseChannel(name="prod", runtimes=[resources_pb2.RuntimeBinding(runtime="eu-1")], preconditions=[
            resources_pb2.Precondition(manual_approval=resources_pb2.ManualApproval(
                name="change-board", min_approvers=min_approvers, exclude_deployer=True)),
        ]),
    )])
    return apply_all(
        state, [api_pb2.DeployRequest(application="shop", service="api", version="v1")],
        minted=Minted(release_id="rel-1"), actor=deployer,
    )


@pytest.mark.parametrize("approver", ["bob", "bob ", "Bob", CYRILLIC_BOB])
def test_four_eyes_refuses_the_deployer_under_any_spelling(approver: str) -> None:
    state = four_eyes_by("bob")
    with pytest.raises(PermissionDenied, match="four eyes"):
        decide(state, command(approve(channel="prod"), actor=approver))
    assert decide(state, command(approve(channel="prod"), actor="carol")).changed


def test_the_same_approver_under_another_spelling_approves_once() -> None:
    state = four_eyes_by("alice", min_approvers=2)
    _, state = run(state, approve(channel="prod"), actor="bob")
    for twin in ("bob ", "BOB", CYRILLIC_BOB):
        assert decide(state, command(approve(channel="prod"), actor=twin)).events == ()
    assert approvals_given(state, "rel-1", "prod", "change-board") == ["bob"]


def test_approvals_recorded_before_the_rules_count_once_per_principal() -> None:
    state = deployed()
    for approver in ("bob", "bob ", CYRILLIC_BOB, "carol"):
        state = evolve(state, events_pb2.ApprovalGranted(
            release_id="rel-1", application="shop", service="api", channel="prod", approval="release-manager",
            approver=approver,
        ))
    assert approvals_given(state, "rel-1", "prod", "release-manager") == ["bob", "carol"]
