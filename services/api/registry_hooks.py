"""The registries' push notifications: `POST /v1/registries/{name}/notifications`.

A registry (distribution's `notifications.endpoints`, or anything that sends its
envelope) tells Convoy an image was pushed; the follower then looks at the subscriptions
on that repository at once instead of at their next poll. A notification is only a
hint: nothing is deployed from its content — the follower asks the registry itself, so a
forged or replayed notification can make Convoy look, never make it deploy something
the registry does not hold.

Authenticated like every API call (a Convoy token with at least the deployer role, sent
by the registry as `Authorization: Bearer …`: distribution's endpoint `headers`), bounded
in size, and refused with a clear 4xx when the registry is not declared or the body is
not an envelope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import structlog
from aiohttp import web

from services.api.errors import classify
from services.api.handlers import Api, CallContext, correlation_from
from services.api.methods import BY_NAME
from services.api.rest import error_response
from services.api.domain import InvalidArgument, NotFound
from services.api.domain.validation import q
from services.registry.notifications import Pushed, parse_envelope

log = structlog.get_logger("convoy.api.registry_hooks")

MAX_ENVELOPE_BYTES: Final = 1024 * 1024
PushListener = Callable[[str, list[Pushed]], int]


class RegistryHooks:
    def __init__(self, api: Api, listeners: Iterable[PushListener] | None = None) -> None:
        self._api = api
        self.listeners: list[PushListener] = list(listeners or ())

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/registries/{name}/notifications", self._notified)

    async def _notified(self, request: web.Request) -> web.Response:
        ctx = CallContext(
            authorization=request.headers.get("Authorization"),
            correlation_id=correlation_from(request.headers.get("X-Correlation-Id")),
            transport="http",
        )
        name = request.match_info["name"]
        try:
            await self._api.prepare(ctx)
            self._api.authenticate(BY_NAME["Deploy"], ctx)
            if name not in self._api.state.registries:
                raise NotFound(f"registry {q(name[:64])} is not declared; declare it (kind: Registry) first")
            if request.content_length is not None and request.content_length > MAX_ENVELOPE_BYTES:
                return _bad(f"the notification is larger than {MAX_ENVELOPE_BYTES} bytes", ctx)
            body = await request.content.read(MAX_ENVELOPE_BYTES + 1)
            if len(body) > MAX_ENVELOPE_BYTES:
                return _bad(f"the notification is larger than {MAX_ENVELOPE_BYTES} bytes", ctx)
            try:
                pushed = parse_envelope(body, request.headers.get("Content-Type", ""))
            except ValueError as e:
                return _bad(f"not a registry notification envelope: {e}", ctx)
        except Exception as e:  # noqa: BLE001 - classified and answered, like every API call
            failure = self._api.fail(None, ctx, e)
            return error_response(failure, str(ctx.correlation_id))
        looked = sum(listener(name, pushed) for listener in self.listeners)
        log.info("registry notification", registry=name, pushes=len(pushed), subscriptions=looked)
        return web.json_response({"pushes": len(pushed), "subscriptions": looked}, status=202)


def _bad(message: str, ctx: CallContext) -> web.Response:
    failure = classify(InvalidArgument.at("body", message))
    return error_response(failure, str(ctx.correlation_id))
