"""The follower inside an API process: its `Port` onto the API's read model and handlers.

Discovery (services.follower) runs in every API process (`convoy up`, `convoy api`) next
to the webhook endpoint that wakes it. It reads subscriptions from the API's projected
catalog — so its checkpoint is the log: the releases already created and the digests
they pin — and deploys through `Api.call_as`, the same handler, role check and decision
as `convoy deploy`, as the principal `registry:<name>` with the idempotency key
`core.decide` derived from the digest. Several API processes may each run one: the key's
receipt makes any number of them racing at one image one release.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from eventstore.errors import Unavailable
from schemas.convoy.v1 import api_pb2, options_pb2
from services.api import auth
from services.api.domain import AlreadyExists, State
from services.api.domain.registries import image_registry
from services.api.errors import IdempotencyMismatch
from services.api.server import ApiServer
from services.follower import core
from services.follower.follower import Follower
from services.registry.reference import ImageReference

log = structlog.get_logger("convoy.follow")


def subscriptions(state: State) -> list[core.Subscription]:
    """Every followed repository in the catalog, with what its service already released."""
    found = []
    for (app, name), service in sorted(state.services.items()):
        if not service.HasField("follow"):
            continue
        registry = image_registry(state, service.follow.repository)
        if registry is None:
            continue
        repository = ImageReference.parse(service.follow.repository).name
        history = state.releases_of(app, name)
        released = []
        for release_id in history.order:
            release = history.by_id[release_id].release
            for pin in release.images:
                try:
                    image = ImageReference.parse(pin.image)
                except ValueError:
                    continue
                if image.name == repository:
                    released.append(core.Released(version=release.version, tag=image.tag, digest=pin.digest))
        versions = frozenset(r.release.version for r in history.by_id.values())
        found.append(core.Subscription(app, name, service.follow, registry, tuple(released), versions))
    return found


class ApiPort:
    def __init__(self, server: ApiServer) -> None:
        self._server = server

    def subscriptions(self) -> list[core.Subscription]:
        return subscriptions(self._server.api.state)

    async def deploy(self, deploy: core.Deploy, *, registry: str) -> str:
        actor = f"registry:{registry}"
        principal = auth.Principal(token_id=actor, name=actor, role=options_pb2.ROLE_DEPLOYER)
        request = api_pb2.DeployRequest(
            application=deploy.application, service=deploy.service, version=deploy.version, image=deploy.image
        )
        try:
            response = await self._server.api.call_as(
                "Deploy", request, principal=principal, idempotency_key=deploy.idempotency_key
            )
        except (IdempotencyMismatch, AlreadyExists) as e:
            # Another look (here or in another process) recorded this image already.
            log.info("follow: image already deployed", application=deploy.application, service=deploy.service, detail=str(e))
            return ""
        assert isinstance(response, api_pb2.DeployResponse)
        return response.release.id

    async def changed(self, timeout: float) -> None:
        projection = self._server.projection
        with contextlib.suppress(Unavailable, asyncio.TimeoutError):
            await projection.wait_for(projection.position + 1, timeout=timeout)


@contextlib.asynccontextmanager
async def follower(server: ApiServer) -> AsyncIterator[Follower]:
    """Run discovery beside `server`, woken by its registry webhook."""
    running = Follower(port=ApiPort(server), pool=server.registries)
    server.registry_hooks.listeners.append(running.notify)
    running.start()
    try:
        yield running
    finally:
        server.registry_hooks.listeners.remove(running.notify)
        await running.stop()
