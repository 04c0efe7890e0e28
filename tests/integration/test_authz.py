"""Who may do what, through the real API: token expiry by the API's clock, scopes, the
instance token key, principals in approvals (several tokens of one owner, a token and an
SSO sign-in), and the per-principal limits on Watch streams and as-of reads."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, options_pb2, resources_pb2
from services.api import limits
from services.api.limits import Limit
from services.api.oidc_config import load
from tests.conftest import eventually
from tests.integration.test_api_support import (
    Running,
    api,  # noqa: F401  (fixture)
    application,
    bearer,
    create_token,
    grpc_stubs,
    http_session,
    running_api,
    seed,
)
from tests.sso_keys import KeyedIssuer, config_yaml


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _at(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


DEPLOY = api_pb2.DeployRequest(application="shop", service="api", version="v1", image="registry.example/api:2")


# -- expiry ------------------------------------------------------------------------------------


async def test_an_expired_token_is_refused_saying_when(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    async with running_api(pg_store, tmp_path / "state", clock=lambda: now[0]) as api, grpc_stubs(api.grpc_target) as stubs:
        expires = now[0] + timedelta(hours=1)
        created = await stubs.tokens.CreateToken(
            api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_VIEWER, expires_at=_at(expires)),
            metadata=bearer(api.admin),
        )
        assert created.expires_at.ToDatetime(tzinfo=UTC) == expires
        await stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(created.secret))

        now[0] = expires  # the moment it expires, it is refused
        error = await _refused(
            stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(created.secret))
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == f"token {created.token_id!r} expired at 2030-01-01T01:00:00Z; ask an admin for a new one"

        listed = await stubs.tokens.ListTokens(api_pb2.ListTokensRequest(), metadata=bearer(api.admin))
        assert [t.expires_at.ToDatetime(tzinfo=UTC) for t in listed.tokens if t.token_id == created.token_id] == [expires]

        past = await _refused(stubs.tokens.CreateToken(
            api_pb2.CreateTokenRequest(name="old", role=options_pb2.ROLE_VIEWER, expires_at=_at(now[0])),
            metadata=bearer(api.admin),
        ))
        assert past.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be in the future" in (past.details() or "")


# -- scope -------------------------------------------------------------------------------------


async def test_a_scoped_token_acts_only_inside_its_scope(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    async with running_api(pg_store, tmp_path / "state") as api, grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        await stubs.applications.ApplyApplication(
            api_pb2.ApplyApplicationRequest(application=application("blog")), metadata=bearer(api.admin)
        )
        scoped = await stubs.tokens.CreateToken(
            api_pb2.CreateTokenRequest(
                name="shop-ci", role=options_pb2.ROLE_ADMIN,
                scope=resources_pb2.TokenScope(applications=["shop"], channels=["staging"]),
            ),
            metadata=bearer(api.admin),
        )
        me = bearer(scoped.secret)
        assert (await stubs.releases.Deploy(DEPLOY, metadata=me)).write.changed

        elsewhere = await _refused(stubs.releases.Deploy(
            api_pb2.DeployRequest(application="blog", service="api", version="v1"), metadata=me
        ))
        assert elsewhere.code() == grpc.StatusCode.PERMISSION_DENIED
        assert elsewhere.details() == (
            f"Deploy on application 'blog' is outside the scope of token {scoped.token_id!r} "
            "(applications shop; channels staging)"
        )
        prod = await _refused(stubs.releases.PauseConvergence(
            api_pb2.PauseConvergenceRequest(application="shop", service="api", channel="prod"), metadata=me
        ))
        assert prod.code() == grpc.StatusCode.PERMISSION_DENIED and "channel 'prod' is outside the scope" in (prod.details() or "")
        assert (await stubs.releases.PauseConvergence(
            api_pb2.PauseConvergenceRequest(application="shop", service="api", channel="staging"), metadata=me
        )).changed
        # A scoped admin cannot mint itself an unscoped token.
        mint = await _refused(stubs.tokens.CreateToken(
            api_pb2.CreateTokenRequest(name="escape", role=options_pb2.ROLE_ADMIN), metadata=me
        ))
        assert mint.code() == grpc.StatusCode.PERMISSION_DENIED and "CreateToken acts on no single application" in (mint.details() or "")
        listed = await stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=me)
        assert [a.name for a in listed.applications] == ["shop"]
        watch_all = await _refused(stubs.events.Watch(api_pb2.WatchRequest(), metadata=me).read())
        assert watch_all.code() == grpc.StatusCode.PERMISSION_DENIED and "Watch: name an application" in (watch_all.details() or "")
        everything = await stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(api.admin))
        assert sorted(a.name for a in everything.applications) == ["blog", "shop"]

        async with http_session() as s:
            async with s.post(f"{api.base_url}/v1/applications/blog/services/api:deploy", json={"version": "v1"},
                              headers={"Authorization": f"Bearer {scoped.secret}"}) as r:
                body = await r.json()
        assert r.status == 403 and "outside the scope" in body["error"]["message"]


# -- token key ---------------------------------------------------------------------------------


async def test_tokens_verify_only_with_the_instance_key(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    """A catalog copied to another instance (another key) verifies nothing there; tokens
    recorded before keys (SHA-256) keep working."""
    async with running_api(pg_store, tmp_path / "plain") as plain, grpc_stubs(plain.grpc_target) as stubs:
        old = await create_token(stubs, plain.admin, options_pb2.ROLE_VIEWER, "old-ci")
    key = os.urandom(32)
    async with running_api(pg_store, tmp_path / "keyed", token_key=key) as keyed, grpc_stubs(keyed.grpc_target) as stubs:
        new = await create_token(stubs, plain.admin, options_pb2.ROLE_VIEWER, "new-ci")
        for secret in (old.secret, new.secret):
            await stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(secret))
        recorded = [json.loads(e.json) for e in (await stubs.events.ListEvents(
            api_pb2.ListEventsRequest(types=["TokenCreated"]), metadata=bearer(plain.admin))).events]
        by_name = {e["name"]: e for e in recorded}
        assert "secretSha256" not in by_name["new-ci"] and len(by_name["new-ci"]["secretHmac"]) == 64
        assert "secretSha256" in by_name["old-ci"]
    for other_key in (os.urandom(32), None):
        async with running_api(pg_store, tmp_path / "copy", token_key=other_key, bootstrap_admin=False) as copy, \
                grpc_stubs(copy.grpc_target) as stubs:
            error = await _refused(
                stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(new.secret))
            )
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == "invalid or revoked token"


# -- principals --------------------------------------------------------------------------------

FOUR_EYES = resources_pb2.ManualApproval(name="release-manager", min_approvers=2, exclude_deployer=True)


def _four_eyes_shop() -> resources_pb2.Application:
    app = application()
    for channel in app.release_channels:
        for precondition in channel.preconditions:
            if precondition.HasField("manual_approval"):
                precondition.manual_approval.CopyFrom(FOUR_EYES)
    return app


async def _approvals(stubs: Any, admin: str) -> list[str]:
    found = await stubs.events.ListEvents(api_pb2.ListEventsRequest(types=["ApprovalGranted"]), metadata=bearer(admin))
    return [e.actor for e in found.events]


@pytest.fixture
def sso_config(tmp_path: Path) -> tuple[KeyedIssuer, Path]:
    issuer = KeyedIssuer()
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    config = tmp_path / "oidc.yaml"
    config.write_text(config_yaml(str(jwks)))
    return issuer, config


async def test_approvals_count_principals_not_tokens(
    pg_store: PostgresEventStore, tmp_path: Path, sso_config: tuple[KeyedIssuer, Path]
) -> None:
    issuer, config = sso_config
    async with running_api(pg_store, tmp_path / "state", oidc=load(config)) as api, grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        await stubs.applications.ApplyApplication(
            api_pb2.ApplyApplicationRequest(application=_four_eyes_shop()), metadata=bearer(api.admin)
        )

        async def token(name: str, role: int, owner: str = "") -> str:
            created = await stubs.tokens.CreateToken(
                api_pb2.CreateTokenRequest(name=name, role=role, owner=owner), metadata=bearer(api.admin)
            )
            assert created.owner == (owner if owner.startswith("sso:") else (owner or name).lower())
            return str(created.secret)

        bob = await token("bob", options_pb2.ROLE_DEPLOYER)
        bob_approver = await token("bob-approver", options_pb2.ROLE_APPROVER, owner="Bob")
        alice = await token("alice", options_pb2.ROLE_APPROVER)
        alice_ci = await token("ci-2", options_pb2.ROLE_APPROVER, owner="alice")
        carol_token = await token("carol-laptop", options_pb2.ROLE_APPROVER, owner="sso:corp:carol-7")
        carol_sso = issuer.token("carol-7", groups=["approvers"])

        deployed = await stubs.releases.Deploy(DEPLOY, metadata=bearer(bob))
        approve = api_pb2.ApproveRequest(application="shop", service="api", channel="prod")

        # Four eyes: bob's second token is still bob.
        own = await _refused(stubs.releases.Approve(approve, metadata=bearer(bob_approver)))
        assert own.code() == grpc.StatusCode.PERMISSION_DENIED and "four eyes" in (own.details() or "")

        # Two tokens of one owner are one approver.
        assert (await stubs.releases.Approve(approve, metadata=bearer(alice))).changed
        assert not (await stubs.releases.Approve(approve, metadata=bearer(alice_ci))).changed
        assert await _approvals(stubs, api.admin) == ["alice"]

        # A token owned by an SSO principal and that principal signing in by SSO are one approver.
        assert (await stubs.releases.Approve(approve, metadata=bearer(carol_token))).changed
        assert not (await stubs.releases.Approve(approve, metadata=bearer(carol_sso))).changed
        assert await _approvals(stubs, api.admin) == ["alice", "sso:corp:carol-7"]

        # Events record the principal as actor, whichever credential was used.
        created = await stubs.events.ListEvents(api_pb2.ListEventsRequest(types=["ReleaseCreated"]), metadata=bearer(api.admin))
        assert [e.actor for e in created.events] == ["bob"] and deployed.write.changed


async def test_sso_callers_get_their_groups_role_and_scope(
    pg_store: PostgresEventStore, tmp_path: Path, sso_config: tuple[KeyedIssuer, Path]
) -> None:
    issuer, config = sso_config
    async with running_api(pg_store, tmp_path / "state", oidc=load(config)) as api, grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        shop_team = bearer(issuer.token("dev-1", groups=["shop-team"]))
        deployed = await stubs.releases.Deploy(DEPLOY, metadata=shop_team)
        assert deployed.write.changed
        other = await _refused(stubs.releases.Deploy(api_pb2.DeployRequest(application="blog", service="x"), metadata=shop_team))
        assert other.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "outside the scope of SSO user sso:corp:dev-1 (applications shop)" in (other.details() or "")
        viewer = bearer(issuer.token("v-1", groups=["viewers"]))
        denied = await _refused(stubs.releases.Deploy(DEPLOY, metadata=viewer))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "SSO user sso:corp:v-1 is viewer" in (denied.details() or "")
        expired = bearer(issuer.token("v-1", groups=["viewers"], now=datetime.now(UTC).timestamp() - 7200))
        gone = await _refused(stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=expired))
        assert gone.code() == grpc.StatusCode.UNAUTHENTICATED and "SSO token expired at" in (gone.details() or "")


async def test_without_sso_configured_a_jwt_is_just_an_invalid_token(
    api: Running, sso_config: tuple[KeyedIssuer, Path]
) -> None:
    issuer, _ = sso_config
    async with grpc_stubs(api.grpc_target) as stubs:
        error = await _refused(stubs.applications.ListApplications(
            api_pb2.ListApplicationsRequest(), metadata=bearer(issuer.token("carol-7"))
        ))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == "invalid or revoked token"


async def test_the_ui_signs_in_with_an_sso_token(
    pg_store: PostgresEventStore, tmp_path: Path, sso_config: tuple[KeyedIssuer, Path]
) -> None:
    from tests.integration.test_ui import signed_in

    issuer, config = sso_config
    async with running_api(pg_store, tmp_path / "state", oidc=load(config)) as api:
        s = await signed_in(api.base_url, issuer.token("carol-7", groups=["viewers"]))
        async with s, s.get(f"{api.base_url}/ui/fleet") as r:
            assert r.status == 200 and "sso:corp:carol-7" in await r.text()


# -- SSO keys from a URL -----------------------------------------------------------------------


async def test_jwks_url_is_cached_and_an_unknown_kid_refetches_once(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    from aiohttp import web

    issuer = KeyedIssuer()
    served = {"jwks": issuer.jwks(), "fetches": 0}

    async def jwks(_: web.Request) -> web.Response:
        served["fetches"] += 1
        return web.json_response(served["jwks"])

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = tmp_path / "oidc.yaml"
    config.write_text(config_yaml(f"http://127.0.0.1:{port}/jwks.json"))
    try:
        async with running_api(pg_store, tmp_path / "state", oidc=load(config)) as api, grpc_stubs(api.grpc_target) as stubs:
            async def ok(token: str) -> None:
                await stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(token))

            await ok(issuer.token("a"))
            await ok(issuer.token("b", alg="ES256"))
            assert served["fetches"] == 1  # cached

            unknown = issuer.token("c", kid="rsa-2")
            for _ in range(3):
                error = await _refused(
                    stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(unknown))
                )
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "key (kid) is not among" in (error.details() or "")
            assert served["fetches"] == 2  # one refetch for the unknown kid, not one per attempt

            # The issuer rotates: a new kid is fetched once and then accepted.
            served["jwks"] = issuer.jwks(rsa_kid="rsa-3")
            await ok(issuer.token("d", kid="rsa-3"))
            await ok(issuer.token("e", kid="rsa-3"))
            assert served["fetches"] == 3
    finally:
        await runner.cleanup()


# -- limits ------------------------------------------------------------------------------------


async def test_watch_streams_are_limited_per_principal(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    bounded = {**limits.DEFAULT_LIMITS, limits.WATCH: Limit(concurrent=2)}
    async with running_api(pg_store, tmp_path / "state", limits=bounded) as api, grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        viewer = await create_token(stubs, api.admin, options_pb2.ROLE_VIEWER, "dashboard")
        other = await create_token(stubs, api.admin, options_pb2.ROLE_VIEWER, "someone-else")
        limiter = api.server.limiter
        request = api_pb2.WatchRequest(application="shop")

        first = stubs.events.Watch(request, metadata=bearer(viewer.secret))
        second = stubs.events.Watch(request, metadata=bearer(viewer.secret))
        for stream in (first, second):
            assert (await stream.read()).type == "convoy.v1.ApplicationCreated"
        assert limiter.active("dashboard", limits.WATCH) == 2

        third = stubs.events.Watch(request, metadata=bearer(viewer.secret))
        error = await _refused(third.read())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            "limit reached: at most 2 Watch streams at once per principal, and dashboard has 2 running; "
            "retry when one has ended"
        )
        assert ("retry-after", "1") in tuple(error.trailing_metadata() or ())
        # Another principal is not held to dashboard's streams.
        elsewhere = stubs.events.Watch(request, metadata=bearer(other.secret))
        assert (await elsewhere.read()).type == "convoy.v1.ApplicationCreated"

        first.cancel()
        await eventually(lambda: limiter.active("dashboard", limits.WATCH) == 1, message="the cancelled stream's lease released")
        again = stubs.events.Watch(request, metadata=bearer(viewer.secret))
        assert (await again.read()).type == "convoy.v1.ApplicationCreated"
        for stream in (second, elsewhere, again):
            stream.cancel()


class HeldFolds:
    """The store, except that the first as-of fold's first read waits until released (a
    hook on the fold, so a read is held open without timing)."""

    def __init__(self, store: PostgresEventStore) -> None:
        self._store = store
        self.hold = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read_all(self, *args: Any, **kwargs: Any) -> Any:
        # Only the first fold is held: a second one (were it admitted) would run through.
        if self.hold and not self.entered.is_set() and kwargs.get("to_position") is not None and kwargs.get("categories") is None:
            self.entered.set()
            await self.release.wait()
        return await self._store.read_all(*args, **kwargs)


async def test_as_of_reads_beyond_the_concurrency_are_refused_while_one_is_held(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    bounded = {**limits.DEFAULT_LIMITS, limits.AS_OF: Limit(concurrent=1)}
    held = HeldFolds(pg_store)
    async with running_api(held, tmp_path / "state", limits=bounded) as api, grpc_stubs(api.grpc_target) as stubs:  # type: ignore[arg-type]
        await seed(stubs, api.admin)
        viewer = bearer((await create_token(stubs, api.admin, options_pb2.ROLE_VIEWER, "auditor")).secret)
        past = api_pb2.GetApplicationRequest(name="shop", as_of=api_pb2.AsOf(position=3))

        held.hold = True
        first = asyncio.ensure_future(stubs.applications.GetApplication(past, metadata=viewer))
        await asyncio.wait_for(held.entered.wait(), timeout=10)
        assert api.server.limiter.active("auditor", limits.AS_OF) == 1

        error = await _refused(stubs.applications.GetApplication(past, metadata=viewer))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 1 as-of reads at once" in (error.details() or "")
        async with http_session() as s:
            async with s.get(f"{api.base_url}/v1/applications/shop", params={"as_of.position": "3"},
                             headers={"Authorization": viewer[0][1]}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "1"
                assert "as-of reads" in (await r.json())["error"]["message"]
        # A live read is not an as-of read: not limited.
        assert (await stubs.applications.GetApplication(api_pb2.GetApplicationRequest(name="shop"), metadata=viewer)).name == "shop"

        held.release.set()
        assert (await first).name == "shop"
        assert api.server.limiter.active("auditor", limits.AS_OF) == 0
        held.hold = False
        assert (await stubs.applications.GetApplication(past, metadata=viewer)).name == "shop"


async def test_plan_deploy_is_rate_limited_per_principal(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    bounded = {**limits.DEFAULT_LIMITS, limits.PLAN: Limit(concurrent=4, rate=0.001, burst=1)}
    async with running_api(pg_store, tmp_path / "state", limits=bounded) as api, grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        plan = api_pb2.PlanDeployRequest(application="shop", service="api", version="v2")
        convergence = api_pb2_grpc.ConvergenceServiceStub(stubs.channel)
        first = await _refused(convergence.PlanDeploy(plan, metadata=bearer(api.admin)))
        assert first.code() != grpc.StatusCode.RESOURCE_EXHAUSTED  # no planner here: refused for that
        second = await _refused(convergence.PlanDeploy(plan, metadata=bearer(api.admin)))
        assert second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 0.001 PlanDeploy calls per second per principal (bursts of 1)" in (second.details() or "")
