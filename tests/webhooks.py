"""A real webhook endpoint for tests: an aiohttp server on a free loopback port that
records what it receives and can refuse the first requests (a receiver that is down)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PATH = "/hooks/T0K3N-secret-path"
"""Like a chat webhook, the path is the secret: tests check it never reaches a log."""


@dataclass
class Receiver:
    failures: int = 0
    """Requests to answer 500 before accepting."""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            return web.Response(status=500, text="not now")
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def texts(self) -> list[str]:
        return [body.get("text", "") for body in self.bodies()]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post(PATH, found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}"
    try:
        yield found
    finally:
        await runner.cleanup()
