"""The operations endpoints every Convoy process serves: `/metrics`, `/healthz`, `/readyz`.

One small aiohttp server (loopback by default) for `convoy up`, `convoy planner` and each
agent, so probes and scrapers see the same three paths with the same bodies everywhere
(the API's REST listener answers them too):

- `/metrics`: the `Registry` it is given, in the Prometheus text format;
- `/healthz` (liveness: restart me when it fails): the loop answers and every liveness
  check passes — an agent adds "the bus has not been lost for too long";
- `/readyz` (readiness: send me work): every readiness check passes.

Both probe bodies name each check with its outcome, so a failing probe says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from eventstore.errors import InvalidInput
from eventstore.metrics import CONTENT_TYPE, Check, Registry, readiness


class OpsServer:
    """/metrics, /healthz, /readyz on `address` ("host:port"; port 0 = any free port);
    `port` is the bound port after `start`. `details` adds fields to the /healthz body."""

    def __init__(
        self,
        *,
        address: str,
        registry: Registry,
        checks: Sequence[Check] = (),
        liveness: Sequence[Check] = (),
        details: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise InvalidInput(f"malformed ops address {address!r}: expected host:port")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self.registry = registry
        self.checks = list(checks)
        self.liveness = list(liveness)
        self._details = details
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await self.stop()
            raise
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=(await self.registry.exposition()).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, _: web.Request) -> web.Response:
        ok, body = await readiness(self.liveness)
        answer = {"status": "ok" if ok else "unavailable", "checks": body["checks"], **self._details()}
        return _json(answer, 200 if ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, body = await readiness(self.checks)
        return _json(body, 200 if ok else 503)


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(status=status, text=json.dumps(body) + "\n", content_type="application/json")
