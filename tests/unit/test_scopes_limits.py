"""Scopes (what a scoped credential may name) and the per-principal limiter, as pure functions."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, resources_pb2
from services import principals
from services.api.domain import PermissionDenied
from services.api.limits import Limit, Limiter, ResourceExhausted
from services.api.methods import BY_INPUT
from services.api.scopes import Scope, check, filtered

SHOP = Scope.of(applications=["shop"])
STAGING = Scope.of(channels=["staging"])
WHO = "token 'tok-1'"


def _check(scope: Scope, request: Message) -> None:
    method = BY_INPUT[type(request)]
    check(scope, method.name, request, is_command=method.is_command, who=WHO)


ALLOWED: list[tuple[str, Scope, Message]] = [
    ("deploy in scope", SHOP, api_pb2.DeployRequest(application="shop", service="api")),
    ("approve in scope", SHOP, api_pb2.ApproveRequest(application="shop", service="api", channel="prod")),
    ("staging approval", STAGING, api_pb2.ApproveRequest(application="blog", service="api", channel="staging")),
    ("rollback to staging", STAGING, api_pb2.RollbackRequest(application="shop", service="api", channels=["staging"])),
    ("shared infrastructure read", SHOP, api_pb2.ListRuntimesRequest()),
    ("events of shop", SHOP, api_pb2.ListEventsRequest(application="shop")),
    ("why, every channel, is a read", STAGING, api_pb2.WhyRequest(application="shop", service="api")),
    ("watch shop", SHOP, api_pb2.WatchRequest(application="shop")),
    ("apply its application", SHOP, api_pb2.ApplyApplicationRequest(application=resources_pb2.Application(name="shop"))),
    ("declare its service", SHOP, api_pb2.ApplyDeclarationsRequest(declarations=[
        api_pb2.Declaration(service=resources_pb2.Service(application="shop", name="api"))])),
    ("unscoped anything", Scope(), api_pb2.CreateTokenRequest(name="x")),
]

REFUSED: list[tuple[str, Scope, Message, str]] = [
    ("deploy elsewhere", SHOP, api_pb2.DeployRequest(application="blog", service="api"),
     "Deploy on application 'blog' is outside the scope of token 'tok-1' (applications shop)"),
    ("approve prod", STAGING, api_pb2.ApproveRequest(application="shop", service="api", channel="prod"),
     "Approve on channel 'prod' is outside the scope of token 'tok-1' (channels staging)"),
    ("rollback prod too", STAGING, api_pb2.RollbackRequest(application="shop", service="api", channels=["staging", "prod"]),
     "Rollback on channel 'prod' is outside the scope"),
    ("pause every channel", STAGING, api_pb2.PauseConvergenceRequest(application="shop", service="api"),
     "PauseConvergence: name a channel (none means every channel); token 'tok-1' is scoped to channels staging"),
    ("rollback every channel", STAGING, api_pb2.RollbackRequest(application="shop", service="api"),
     "Rollback: name a channel"),
    ("declare a service with a channel scope", STAGING, api_pb2.ApplyServiceRequest(
        service=resources_pb2.Service(application="shop", name="api")),
     "ApplyService changes every channel of the application; token 'tok-1' is scoped to channels staging"),
    ("all events", SHOP, api_pb2.ListEventsRequest(), "ListEvents: name an application; token 'tok-1' is scoped to applications shop"),
    ("watch everything", SHOP, api_pb2.WatchRequest(), "Watch: name an application"),
    ("mint a token", SHOP, api_pb2.CreateTokenRequest(name="x"), "CreateToken acts on no single application"),
    ("list tokens", STAGING, api_pb2.ListTokensRequest(), "ListTokens acts on no single application"),
    ("pause a shared runtime", SHOP, api_pb2.PauseRuntimeRequest(name="eu-1"), "PauseRuntime acts on no single application"),
    ("declare a runtime", SHOP, api_pb2.ApplyDeclarationsRequest(declarations=[
        api_pb2.Declaration(service=resources_pb2.Service(application="shop", name="api")),
        api_pb2.Declaration(runtime=resources_pb2.Runtime(name="eu-2"))]), "ApplyDeclarations acts on no single application"),
    ("declare another application's service", SHOP, api_pb2.ApplyDeclarationsRequest(declarations=[
        api_pb2.Declaration(service=resources_pb2.Service(application="blog", name="api"))]), "application 'blog' is outside"),
    ("delete another application", SHOP, api_pb2.DeleteApplicationRequest(name="blog"), "application 'blog' is outside"),
]


@pytest.mark.parametrize(("scope", "request_"), [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_in_scope_is_allowed(scope: Scope, request_: Message) -> None:
    _check(scope, request_)


@pytest.mark.parametrize(("scope", "request_", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_out_of_scope_is_refused_naming_it_and_the_scope(scope: Scope, request_: Message, message: str) -> None:
    with pytest.raises(PermissionDenied) as caught:
        _check(scope, request_)
    assert message in str(caught.value)


def test_list_applications_is_filtered_to_the_scope() -> None:
    response = api_pb2.ListApplicationsResponse(applications=[resources_pb2.Application(name=n) for n in ("blog", "shop")])
    assert [a.name for a in filtered(SHOP, "ListApplications", response).applications] == ["shop"]  # type: ignore[attr-defined]


# -- limits ---------------------------------------------------------------------------------


def test_concurrency_is_per_principal_and_kind() -> None:
    limiter = Limiter(limits={"watch": Limit(concurrent=2)})
    a, b = limiter.acquire("alice", "watch"), limiter.acquire("alice", "watch")
    with pytest.raises(ResourceExhausted, match="at most 2 watch at once per principal, and alice has 2 running"):
        limiter.acquire("alice", "watch")
    limiter.acquire("bob", "watch")  # someone else is not held to alice's count
    a.release()
    a.release()  # idempotent
    assert limiter.active("alice", "watch") == 1
    limiter.acquire("alice", "watch")
    b.release()


def test_rate_refills_by_the_clock() -> None:
    now = [0.0]
    limiter = Limiter(limits={"plan": Limit(concurrent=10, rate=1.0, burst=2)}, clock=lambda: now[0])
    limiter.acquire("alice", "plan").release()
    limiter.acquire("alice", "plan").release()
    with pytest.raises(ResourceExhausted) as caught:
        limiter.acquire("alice", "plan")
    assert caught.value.retry_after == pytest.approx(1.0) and "at most 1 plan per second" in str(caught.value)
    now[0] += 1.0
    limiter.acquire("alice", "plan").release()


# -- principals -----------------------------------------------------------------------------


def test_sso_principals_compare_exactly_and_never_as_token_names() -> None:
    assert principals.key(" sso:corp:AbC ") == "sso:corp:AbC" != principals.key("sso:corp:abc")
    assert principals.normalise("sso:corp:AbC") == "sso:corp:AbC"
    assert principals.problem("sso:corp:abc") is not None  # no token may be *named* like an SSO principal
    assert principals.owner_problem("sso:corp:abc") is None
    assert principals.owner_problem("sso:corp:") is not None and principals.owner_problem("sso::x") is not None
