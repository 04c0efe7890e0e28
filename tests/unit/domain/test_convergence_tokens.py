"""Pause/ResumeConvergence and tokens: idempotence, scoping, every rejection."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf.message import Message

from eventstore.errors import ConvoyError
from google.protobuf.timestamp_pb2 import Timestamp

from schemas.convoy.v1 import api_pb2, events_pb2, options_pb2, resources_pb2
from services.api.domain import BadCommandContext, FailedPrecondition, InvalidArgument, Minted, NotFound, decide
from services.api.domain.tokens import role_of, token_for_secret
from tests.unit.domain.builders import MINTED, command, run, shop

def pause(channel: str = "", reason: str = "") -> api_pb2.PauseConvergenceRequest:
    return api_pb2.PauseConvergenceRequest(application="shop", service="api", channel=channel, reason=reason)


def resume(channel: str = "", reason: str = "") -> api_pb2.ResumeConvergenceRequest:
    return api_pb2.ResumeConvergenceRequest(application="shop", service="api", channel=channel, reason=reason)


def test_pause_and_resume_one_channel() -> None:
    decision, state = run(shop(), pause("prod", "investigating"))
    assert decision.events == (("service/shop/api", events_pb2.ConvergencePaused(
        application="shop", service="api", channel="prod", reason="investigating")),)
    assert state.is_convergence_paused("shop", "api", "prod")
    assert not state.is_convergence_paused("shop", "api", "staging")
    assert decide(state, command(pause("prod"))).events == ()
    decision, state = run(state, resume("prod"))
    assert decision.events == (("service/shop/api", events_pb2.ConvergenceResumed(
        application="shop", service="api", channel="prod")),)
    assert decide(state, command(resume("prod"))).events == ()


def test_pausing_everywhere_covers_channels_and_resuming_everywhere_clears_them() -> None:
    _, state = run(shop(), pause("staging"))
    decision, state = run(state, pause())
    assert decision.changed
    assert decide(state, command(pause("prod"))).events == ()  # already paused everywhere
    with pytest.raises(FailedPrecondition) as caught:
        decide(state, command(resume("prod")))
    assert str(caught.value) == (
        "service shop/api is paused in every channel; resume it with an empty channel (every channel), then pause "
        'the others again if needed — resuming only "prod" would change nothing'
    )
    decision, state = run(state, resume())
    assert decision.changed and state.paused_convergences == {}
    assert decide(state, command(resume())).events == ()


CONV_REFUSED: list[tuple[str, Message, type[ConvoyError], str]] = [
    ("unknown service", api_pb2.PauseConvergenceRequest(application="shop", service="web"), NotFound,
     'service "web" of application "shop" does not exist; services: api'),
    ("unknown channel", pause("qa"), NotFound, 'channel: application "shop" has no channel "qa"; channels: prod, staging'),
    ("bad channel", resume("QA"), InvalidArgument,
     "channel: \"QA\" is not a valid channel name: use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters"),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in CONV_REFUSED], ids=[c[0] for c in CONV_REFUSED])
def test_convergence_refused(request_: Message, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(shop(), command(request_))
    assert str(caught.value) == message


# -- tokens ---------------------------------------------------------------------------------


def test_create_and_revoke_token() -> None:
    request = api_pb2.CreateTokenRequest(name="ci-deployer", role=options_pb2.ROLE_DEPLOYER)
    decision, state = run(shop(), request)
    digest = hashlib.sha256(MINTED.token_secret.encode()).hexdigest()
    assert decision.events == (("token/tok-1", events_pb2.TokenCreated(
        token_id="tok-1", name="ci-deployer", role="deployer", secret_sha256=digest, owner="ci-deployer")),)
    assert decision.response == api_pb2.CreatedToken(
        token_id="tok-1", name="ci-deployer", role=options_pb2.ROLE_DEPLOYER, secret=MINTED.token_secret,
        owner="ci-deployer")
    token = token_for_secret(state, MINTED.token_secret)
    assert token is not None and role_of(token) == options_pb2.ROLE_DEPLOYER
    assert token_for_secret(state, "wrong") is None

    revoke = api_pb2.RevokeTokenRequest(token_id="tok-1", reason="leaked")
    decision, state = run(state, revoke)
    assert decision.events == (("token/tok-1", events_pb2.TokenRevoked(token_id="tok-1", reason="leaked")),)
    assert state.tokens["tok-1"].revoked and token_for_secret(state, MINTED.token_secret) is None
    assert decide(state, command(revoke)).events == ()


TOKEN_REFUSED: list[tuple[str, object, type[ConvoyError], str]] = [
    ("no name", api_pb2.CreateTokenRequest(role=options_pb2.ROLE_ADMIN), InvalidArgument,
     'name: required: who the token is for, e.g. "ci-deployer" or "alice@example.com"'),
    ("control characters", api_pb2.CreateTokenRequest(name="a\nb", role=options_pb2.ROLE_ADMIN), InvalidArgument,
     "name: use ASCII letters, digits, '.', '-', '_' and '@', starting with a letter or digit (names are compared "
     "case-insensitively); '\\n' (U+000A) is not one of them"),
    ("no role", api_pb2.CreateTokenRequest(name="ci"), InvalidArgument,
     "role: a role is required: one of ROLE_VIEWER, ROLE_DEPLOYER, ROLE_APPROVER, ROLE_ADMIN"),
    ("unknown role", api_pb2.CreateTokenRequest(name="ci", role=9), InvalidArgument,  # type: ignore[arg-type]
     "role: 9 is not a known role: use one of ROLE_VIEWER, ROLE_DEPLOYER, ROLE_APPROVER, ROLE_ADMIN"),
    ("revoke unknown", api_pb2.RevokeTokenRequest(token_id="tok-9"), NotFound, 'token "tok-9" does not exist'),
    ("owner with a space", api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_ADMIN, owner="al ice"),
     InvalidArgument, "owner: use ASCII letters, digits, '.', '-', '_' and '@', starting with a letter or digit "
     "(names are compared case-insensitively); ' ' (SPACE) is not one of them"),
    ("malformed SSO owner", api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_ADMIN, owner="sso:Corp:"),
     InvalidArgument, "owner: an SSO owner reads sso:<issuer alias>:<sub> (the alias as in the OIDC configuration: "
     "lower-case letters, digits, '-'; the sub: 1-255 printable ASCII characters, no spaces)"),
    ("bad scope name", api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_ADMIN,
     scope=resources_pb2.TokenScope(applications=["Shop"])), InvalidArgument,
     "scope.applications[0]: \"Shop\" is not a valid application: use lower-case letters, digits and '-', start "
     "and end with a letter or digit, at most 63 characters"),
    ("expiry before 1970", api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_ADMIN,
     expires_at=Timestamp(seconds=-5)), InvalidArgument,
     "expires_at: must be a moment after 1970 (leave it unset for a token that never expires)"),
    ("revoke without id", api_pb2.RevokeTokenRequest(), InvalidArgument, "token_id: required: the id of the token to revoke"),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in TOKEN_REFUSED], ids=[c[0] for c in TOKEN_REFUSED])
def test_token_refused(request_: object, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(shop(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize("minted", [
    Minted(), Minted(token_id="tok_1", token_secret="x" * 16), Minted(token_id="tok-1", token_secret="short"),
])
def test_token_needs_valid_minted_values(minted: Minted) -> None:
    with pytest.raises(BadCommandContext, match="Minted.token_id"):
        decide(shop(), command(api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_VIEWER), minted=minted))


def test_minted_fresh_values_are_accepted() -> None:
    decision, _ = run(shop(), api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_VIEWER), minted=Minted.fresh())
    assert decision.changed


def test_bad_command_context() -> None:
    with pytest.raises(BadCommandContext, match="actor"):
        decide(shop(), command(api_pb2.PauseRuntimeRequest(name="eu-1"), actor=""))
    with pytest.raises(BadCommandContext, match="convoy.v1.GetApplicationRequest is not a command"):
        decide(shop(), command(api_pb2.GetApplicationRequest(name="shop")))


def test_token_records_expiry_scope_and_owner() -> None:
    request = api_pb2.CreateTokenRequest(
        name="CI-2", role=options_pb2.ROLE_DEPLOYER, owner=" Alice ", expires_at=Timestamp(seconds=1_900_000_000),
        scope=resources_pb2.TokenScope(applications=["shop", "shop"], channels=["staging"]),
    )
    decision, state = run(shop(), request)
    (_, event), = decision.events
    assert isinstance(event, events_pb2.TokenCreated)
    assert (event.name, event.owner, event.expires_at.seconds) == ("ci-2", "alice", 1_900_000_000)
    assert list(event.scope.applications) == ["shop"] and list(event.scope.channels) == ["staging"]
    token = state.tokens["tok-1"]
    assert token.principal == "alice" and token.scope_applications == ("shop",) and token.scope_channels == ("staging",)
    assert token.expires_at is not None and int(token.expires_at.timestamp()) == 1_900_000_000


def test_sso_owner_is_kept_exactly() -> None:
    request = api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_APPROVER, owner="sso:corp:AbC-123")
    decision, state = run(shop(), request)
    assert state.tokens["tok-1"].principal == "sso:corp:AbC-123"


def test_with_a_token_key_only_the_keyed_digest_is_recorded() -> None:
    minted = Minted(token_id="tok-1", token_secret="cvy_tok-1_" + "s" * 30, token_hmac="ab" * 32)
    decision, state = run(shop(), api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_VIEWER), minted=minted)
    (_, event), = decision.events
    assert isinstance(event, events_pb2.TokenCreated)
    assert event.secret_hmac == "ab" * 32 and event.secret_sha256 == ""
    assert token_for_secret(state, minted.token_secret) is None  # no SHA-256 to match anywhere


def test_a_malformed_keyed_digest_is_the_shells_bug() -> None:
    minted = Minted(token_id="tok-1", token_secret="x" * 20, token_hmac="not-hex")
    with pytest.raises(BadCommandContext):
        decide(shop(), command(api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_VIEWER), minted=minted))
