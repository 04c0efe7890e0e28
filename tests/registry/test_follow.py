"""Deploy by digest and follow repository, end to end against Debian's real registry.

An API server (with the follower beside it, as `convoy up` and `convoy api` run it) and
the planner on a fresh schema; a real `docker-registry` with htpasswd auth whose push
notifications go to the API's webhook with a deployer token. Two followers run at once
(as two API processes would): the idempotency key from the digest must make every image
one release. What a release runs is what the planner tells the agents: the intent's
image, `host/repository@sha256:…`.

Every wait is for an observed condition (a release recorded, a look counted), never a
pause: a notification arrives when the registry sends it, on a fast machine or a slow one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2

from cli.follow import follower
from eventstore.codec import convoy_registry
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, events_pb2, options_pb2
from schemas.convoy.v1 import resources_pb2 as R
from services.follower.follower import Follower
from services.planner.clock import FakeClock
from services.planner.runner import Planner
from services.registry.client import RegistryClient
from tests.conftest import eventually
from tests.integration.test_api_support import Running, running_api
from tests.registry import images, real

REGISTRY = convoy_registry()
HOUR = duration_pb2.Duration(seconds=3600)


class Plane:
    def __init__(self, api: Running, channel: grpc.aio.Channel, followers: list[Follower]) -> None:
        self.api = api
        self.meta = api.admin_metadata
        self.registries = api_pb2_grpc.RegistryServiceStub(channel)
        self.services = api_pb2_grpc.ServiceServiceStub(channel)
        self.releases = api_pb2_grpc.ReleaseServiceStub(channel)
        self.applications = api_pb2_grpc.ApplicationServiceStub(channel)
        self.runtimes = api_pb2_grpc.RuntimeServiceStub(channel)
        self.tokens = api_pb2_grpc.TokenServiceStub(channel)
        self.convergence = api_pb2_grpc.ConvergenceServiceStub(channel)
        self.followers = followers

    async def releases_of(self, service: str) -> list[R.Release]:
        answer = await self.releases.ListReleases(
            api_pb2.ListReleasesRequest(application="shop", service=service), metadata=self.meta
        )
        return list(answer.releases)

    async def intents_for(self, release_id: str) -> list[events_pb2.IntentIssued]:
        found = []
        for recorded in await self.api.store.read_all(limit=100_000):
            message = REGISTRY.decode(recorded).message
            if isinstance(message, events_pb2.IntentIssued) and message.spec.release_id == release_id:
                found.append(message)
        return found


def service(registry: real.RealRegistry, follow: R.FollowRepository | None, *, name: str = "api") -> R.Service:
    declared = R.Service(application="shop", name=name, programs=[R.Program(image=f"{registry.host}/shop/{name}:0.0.0")])
    if follow is not None:
        declared.follow.CopyFrom(follow)
    return declared


@contextlib.asynccontextmanager
async def plane(store: PostgresEventStore, state_dir: Path) -> AsyncIterator[Plane]:
    async with contextlib.AsyncExitStack() as stack:
        api = await stack.enter_async_context(running_api(store, state_dir))
        await stack.enter_async_context(Planner(store=store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC))))
        first = await stack.enter_async_context(follower(api.server))
        second = await stack.enter_async_context(follower(api.server))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(api.grpc_target))
        yield Plane(api, channel, [first, second])


async def declare(p: Plane, registry: real.RealRegistry, password_file: Path) -> None:
    await p.runtimes.ApplyRuntime(
        api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(
            name="rt", kind=R.RUNTIME_KIND_EXEC, exec=R.ExecRuntimeConfig(apply=["true"], fetch=["true"])
        )),
        metadata=p.meta,
    )
    await p.applications.ApplyApplication(
        api_pb2.ApplyApplicationRequest(application=R.Application(
            name="shop", release_channels=[R.ReleaseChannel(name="staging", runtimes=[R.RuntimeBinding(runtime="rt")])]
        )),
        metadata=p.meta,
    )
    password_file.write_text(registry.password + "\n")
    await p.registries.ApplyRegistry(
        api_pb2.ApplyRegistryRequest(registry=R.Registry(
            name="hub", url=registry.url, username=registry.username,
            password=R.SecretRef(file=str(password_file)), min_poll_interval=HOUR,
        )),
        metadata=p.meta,
    )


async def deployer_token(p: Plane) -> str:
    created = await p.tokens.CreateToken(
        api_pb2.CreateTokenRequest(name="registry-webhook", role=options_pb2.ROLE_DEPLOYER), metadata=p.meta
    )
    return created.secret


async def test_a_pushed_tag_becomes_one_release_pinned_to_its_digest_and_a_moved_tag_changes_nothing(
    pg_store: PostgresEventStore, tmp_path: Path, start_registry
) -> None:
    async with plane(pg_store, tmp_path / "state") as p:
        token = await deployer_token(p)
        registry = start_registry(
            notify_url=f"{p.api.base_url}/v1/registries/hub/notifications",
            notify_headers={"Authorization": f"Bearer {token}"},
        )
        await declare(p, registry, tmp_path / "registry-password")
        semver = R.FollowRepository(
            repository=f"{registry.host}/shop/api", strategy=R.FOLLOW_STRATEGY_SEMVER, constraint=">=1.0.0",
            interval=HOUR,
        )
        await p.services.ApplyService(api_pb2.ApplyServiceRequest(service=service(registry, semver)), metadata=p.meta)

        async with images.Pusher(url=registry.url, username=registry.username, password=registry.password) as push:
            first = await push.image("shop/api", "1.0.0", seed="one")

            async def released(count: int) -> bool:
                return len(await p.releases_of("api")) >= count

            await eventually(lambda: released(1), message="the pushed tag became a release (via the notification)")
            [release] = await p.releases_of("api")
            assert release.version == "1.0.0"
            assert release.created_by == "registry:hub"
            [pin] = release.images
            assert (pin.image, pin.digest, pin.registry) == (f"{registry.host}/shop/api:1.0.0", first, "hub")
            assert pin.reference == f"{registry.host}/shop/api@{first}"

            async def intent() -> bool:
                return bool(await p.intents_for(release.id))

            await eventually(intent, message="the planner issued the release's intent")
            [issued] = await p.intents_for(release.id)
            assert [program.image for program in issued.spec.programs] == [f"{registry.host}/shop/api@{first}"]

            # Move the tag: the registry notifies, the followers look, and nothing changes.
            moved = await push.image("shop/api", "1.0.0", seed="two")
            assert moved != first
            await eventually(
                lambda: all(f.stats.seen.get(("shop", "api")) == ("1.0.0", moved) for f in p.followers),
                message="both followers looked at the moved tag (woken by its notification)",
            )
            async with RegistryClient(
                name="hub", url=registry.url, username=registry.username, password=registry.password
            ) as client:
                assert (await client.resolve("shop/api", "1.0.0")).digest == moved  # the tag really moved
            [still] = await p.releases_of("api")
            assert still == release
            assert [program.image for program in (await p.intents_for(release.id))[0].spec.programs] == [
                f"{registry.host}/shop/api@{first}"
            ]

            # Follow the mutable tag by digest: exactly one new release, pinned to the new digest.
            digest = R.FollowRepository(
                repository=f"{registry.host}/shop/api", strategy=R.FOLLOW_STRATEGY_DIGEST, constraint="1.0.0",
                interval=HOUR,
            )
            await p.services.ApplyService(api_pb2.ApplyServiceRequest(service=service(registry, digest)), metadata=p.meta)
            await eventually(lambda: released(2), message="the digest subscription deployed the moved tag")
            # Both followers look again (a retag notifies); still exactly two releases.
            looks = [f.stats.looks for f in p.followers]
            await push.retag("shop/api", "1.0.0", "1.0.0-again")
            await eventually(
                lambda: all(f.stats.looks > n for f, n in zip(p.followers, looks, strict=True)),
                message="both followers looked again",
            )
            first_release, second = await p.releases_of("api")
            assert first_release == release
            assert second.version == f"1.0.0-{moved.removeprefix('sha256:')[:12]}"
            assert second.created_by == "registry:hub"
            assert [(i.digest, i.reference) for i in second.images] == [(moved, f"{registry.host}/shop/api@{moved}")]
            assert len(await p.releases_of("api")) == 2


async def test_deploy_pins_the_digest_and_refuses_a_tag_the_registry_does_not_have(
    pg_store: PostgresEventStore, tmp_path: Path, real_registry: real.RealRegistry, pusher: images.Pusher
) -> None:
    async with plane(pg_store, tmp_path / "state") as p:
        await declare(p, real_registry, tmp_path / "registry-password")
        await p.services.ApplyService(
            api_pb2.ApplyServiceRequest(service=service(real_registry, None, name="web")), metadata=p.meta
        )
        pushed = await pusher.index("shop/web", "2.0.0", seed="multi")
        head = await p.api.store.head()

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await p.releases.Deploy(
                api_pb2.DeployRequest(application="shop", service="web", version="v1",
                                      image=f"{real_registry.host}/shop/web:9.9.9"),
                metadata=p.meta,
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "shop/web:9.9.9" in refused.value.details() and "hub" in refused.value.details()
        assert await p.api.store.head() == head, "a refused deploy records nothing"
        with pytest.raises(grpc.aio.AioRpcError) as dry:
            await p.convergence.PlanDeploy(
                api_pb2.PlanDeployRequest(application="shop", service="web", version="v1",
                                          image=f"{real_registry.host}/shop/web:9.9.9"),
                metadata=p.meta,
            )
        assert dry.value.code() == grpc.StatusCode.NOT_FOUND, "a dry run resolves images as a deploy does"

        answer = await p.releases.Deploy(
            api_pb2.DeployRequest(application="shop", service="web", version="v1",
                                  image=f"{real_registry.host}/shop/web:2.0.0"),
            metadata=p.meta,
        )
        index_digest = pushed[0]
        assert [(i.image, i.digest) for i in answer.release.images] == [
            (f"{real_registry.host}/shop/web:2.0.0", index_digest)
        ]


async def test_wrong_registry_credentials_refuse_the_deploy_and_say_so(
    pg_store: PostgresEventStore, tmp_path: Path, real_registry: real.RealRegistry, pusher: images.Pusher
) -> None:
    async with plane(pg_store, tmp_path / "state") as p:
        password_file = tmp_path / "registry-password"
        await declare(p, real_registry, password_file)
        password_file.write_text("not-the-password")
        await p.services.ApplyService(
            api_pb2.ApplyServiceRequest(service=service(real_registry, None, name="web")), metadata=p.meta
        )
        await pusher.image("shop/web", "1.0.0", seed="creds")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await p.releases.Deploy(
                api_pb2.DeployRequest(application="shop", service="web", version="v1",
                                      image=f"{real_registry.host}/shop/web:1.0.0"),
                metadata=p.meta,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not-the-password" not in refused.value.details()
        assert "credentials" in refused.value.details() or "username/password" in refused.value.details()


async def test_the_webhook_is_authenticated_and_refuses_what_is_not_a_notification(
    pg_store: PostgresEventStore, tmp_path: Path, real_registry: real.RealRegistry
) -> None:
    async with plane(pg_store, tmp_path / "state") as p:
        await declare(p, real_registry, tmp_path / "registry-password")
        token = await deployer_token(p)
        url = f"{p.api.base_url}/v1/registries/hub/notifications"
        envelope = {"events": [{"action": "push", "target": {
            "mediaType": images.OCI_MANIFEST, "repository": "shop/api", "tag": "1.0.0", "digest": "sha256:" + "a" * 64,
        }}]}
        kind = "application/vnd.docker.distribution.events.v1+json"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=envelope) as anonymous:
                assert anonymous.status == 401
            bearer = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{p.api.base_url}/v1/registries/nope/notifications", json=envelope, headers=bearer) as unknown:
                assert unknown.status == 404
                assert "nope" in (await unknown.json())["error"]["message"]
            async with http.post(url, data=b"{not json", headers={**bearer, "Content-Type": kind}) as bad:
                assert bad.status == 400
            async with http.post(url, data=io.BytesIO(b"x" * (2 * 1024 * 1024)), headers={**bearer, "Content-Type": kind}) as huge:
                assert huge.status in (400, 413)
            head = await p.api.store.head()
            async with http.post(url, json=envelope, headers=bearer) as accepted:
                assert accepted.status == 202
                assert (await accepted.json())["pushes"] == 1
        assert await p.api.store.head() == head, "a notification records and deploys nothing by itself"
