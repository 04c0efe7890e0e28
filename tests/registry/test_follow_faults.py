"""The follower under faults: a registry outage fails only that look (no release, no crash,
the other registries go on) and the next due look after it recovers deploys; a fresh
follower — a restart, another API process — continues from the log and deploys nothing twice.

The follower is driven look by look (`look_all`) on an injected clock, so "after the backoff"
is a clock the test moves, not a wait. The outage is a spec-following registry answering 503
(tests/registry/spec_server.py), switched on and off by the test.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cli.follow import ApiPort
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, options_pb2
from schemas.convoy.v1 import resources_pb2 as R
from services.api import auth
from services.follower.follower import Follower
from services.registry.notifications import Pushed
from services.registry.pool import RegistryPool
from tests.integration.test_api_support import Running, running_api
from tests.registry import spec_server

pytestmark = pytest.mark.fault

ADMIN = auth.Principal(token_id="test-admin", name="test-admin", role=options_pb2.ROLE_ADMIN)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def two_registries() -> AsyncIterator[tuple[spec_server.Registry, spec_server.Registry]]:
    async with spec_server.serving(spec_server.Registry()) as a, spec_server.serving(spec_server.Registry()) as b:
        yield a, b


async def declare(api: Running, registries: dict[str, spec_server.Registry]) -> None:
    call = api.server.api.call_as
    await call("ApplyRuntime", api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(
        name="rt", kind=R.RUNTIME_KIND_EXEC, exec=R.ExecRuntimeConfig(apply=["true"], fetch=["true"]))), principal=ADMIN)
    await call("ApplyApplication", api_pb2.ApplyApplicationRequest(application=R.Application(
        name="shop", release_channels=[R.ReleaseChannel(name="staging", runtimes=[R.RuntimeBinding(runtime="rt")])])),
        principal=ADMIN)
    for name, spec in registries.items():
        host = spec.url.removeprefix("http://")
        await call("ApplyRegistry", api_pb2.ApplyRegistryRequest(registry=R.Registry(name=name, url=spec.url)), principal=ADMIN)
        await call("ApplyService", api_pb2.ApplyServiceRequest(service=R.Service(
            application="shop", name=name, programs=[R.Program(image=f"{host}/shop/{name}:0.0.1")],
            follow=R.FollowRepository(repository=f"{host}/shop/{name}", strategy=R.FOLLOW_STRATEGY_SEMVER),
        )), principal=ADMIN)


def releases(api: Running, service: str) -> list[R.Release]:
    history = api.server.api.state.releases_of("shop", service)
    return [history.by_id[i].release for i in history.order]


def unavailable(request: web.Request) -> web.StreamResponse | None:
    return web.Response(status=503, text="maintenance")


async def test_a_registry_outage_fails_only_its_look_and_the_next_look_after_it_deploys(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    clock = Clock()
    pool = RegistryPool(max_attempts=1)
    async with two_registries() as (down, up), running_api(pg_store, tmp_path / "state") as api:
        await declare(api, {"down": down, "up": up})
        down.push("shop/down", "1.0.0")
        pushed = up.push("shop/up", "1.0.0")
        down.override = unavailable
        follower = Follower(port=ApiPort(api.server), pool=pool, clock=clock)
        try:
            await follower.look_all()
            assert releases(api, "down") == [], "an outage deploys nothing"
            [release] = releases(api, "up")
            assert release.images[0].digest == pushed, "the healthy registry's subscription went on"
            assert follower.stats.failures == 1 and "503" in follower.stats.last_error

            # Recovered, but not yet due: the failed look is retried after its backoff, not at once.
            down.override = None
            looks = follower.stats.looks
            await follower.look_all()
            assert follower.stats.looks == looks and releases(api, "down") == []
            clock.now += 2 * 300 + 1  # twice the default interval: the first backoff step
            await follower.look_all()
            [recovered] = releases(api, "down")
            assert recovered.version == "1.0.0" and recovered.created_by == "registry:down"
        finally:
            await pool.close()


async def test_a_fresh_follower_continues_from_the_log_and_deploys_nothing_twice(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    pool = RegistryPool(max_attempts=1)
    async with two_registries() as (one, _), running_api(pg_store, tmp_path / "state") as api:
        await declare(api, {"one": one})
        one.push("shop/one", "1.0.0")
        try:
            first = Follower(port=ApiPort(api.server), pool=pool, clock=Clock())
            await first.look_all()
            assert [r.version for r in releases(api, "one")] == ["1.0.0"]
            head = await api.store.head()

            restarted = Follower(port=ApiPort(api.server), pool=pool, clock=Clock())
            await restarted.look_all()
            assert restarted.stats.looks == 1 and restarted.stats.deploys == 0
            assert await api.store.head() == head, "a restart records nothing"

            # The same image decided twice (two processes that both saw it before either
            # deployed): the idempotency key makes the second deploy the first's answer.
            subscription = ApiPort(api.server).subscriptions()[0]
            one.push("shop/one", "1.1.0")
            racing = [Follower(port=ApiPort(api.server), pool=pool, clock=Clock()) for _ in range(2)]
            decided = [await f.look(subscription) for f in racing]
            assert decided[0] == decided[1] and decided[0] is not None
            assert [r.version for r in releases(api, "one")] == ["1.0.0", "1.1.0"]
        finally:
            await pool.close()


async def test_a_notification_ahead_of_the_registry_is_looked_at_again_until_the_push_shows(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    """Distribution notifies a manifest push before it moves the tag: the look it wakes can
    see the old repository. The follower looks again shortly (not at the next poll)."""
    clock = Clock()
    pool = RegistryPool(max_attempts=1)
    async with two_registries() as (one, _), running_api(pg_store, tmp_path / "state") as api:
        await declare(api, {"one": one})
        one.push("shop/one", "1.0.0")
        try:
            follower = Follower(port=ApiPort(api.server), pool=pool, clock=clock)
            await follower.look_all()
            assert [r.version for r in releases(api, "one")] == ["1.0.0"]
            body = b'{"schemaVersion": 2, "tag": "1.1.0"}'
            announced = "sha256:" + hashlib.sha256(body).hexdigest()
            assert follower.notify("one", [Pushed(repository="shop/one", tag="1.1.0", digest=announced, host=None)]) == 1
            await follower.look_all()  # the registry does not show 1.1.0 yet
            assert [r.version for r in releases(api, "one")] == ["1.0.0"]
            one.push("shop/one", "1.1.0", body)
            clock.now += 0.1  # the first settle delay, far below the poll interval
            await follower.look_all()
            assert [(r.version, r.images[0].digest) for r in releases(api, "one")][-1] == ("1.1.0", announced)
        finally:
            await pool.close()
