"""`/healthz` for an agent: fails once the bus has been lost for longer than a threshold.

An agent that cannot reach NATS cannot hear intents or report anything, yet a short
reconnect (a NATS restart, a network blip) is normal and must not get it killed. So the
endpoint answers 200 while connected or disconnected for less than `threshold` seconds,
and 503 after that; a supervisor (Kubernetes liveness probe, systemd) restarts it then.
The clock is injected, so tests decide what time it is.

The same server answers `/readyz` (the agent consumes its intents and has the bus: each
check named with its outcome) and `/metrics` (the registry it is given, Prometheus text).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from eventstore import metrics
from eventstore.errors import InvalidInput

Clock = Callable[[], float]


class BusLiveness:
    """Tracks since when the bus connection is down (`connected` is asked each time)."""

    def __init__(self, *, connected: Callable[[], bool], threshold: float, clock: Clock = time.monotonic) -> None:
        self._connected = connected
        self.threshold = threshold
        self._clock = clock
        self._lost_since: float | None = None

    def disconnected(self) -> None:
        if self._lost_since is None:
            self._lost_since = self._clock()

    def reconnected(self) -> None:
        self._lost_since = None

    def lost_for(self) -> float:
        """Seconds the bus has been lost (0 while connected)."""
        if self._connected():
            self._lost_since = None
            return 0.0
        self.disconnected()
        assert self._lost_since is not None
        return self._clock() - self._lost_since

    def healthy(self) -> bool:
        return self.lost_for() <= self.threshold


class HealthServer:
    """Serves `/healthz`, `/readyz` and `/metrics` on `address` ("host:port", port 0 =
    any); `port` after start."""

    def __init__(
        self,
        *,
        address: str,
        liveness: BusLiveness,
        details: Callable[[], dict[str, Any]] = dict,
        checks: Sequence[metrics.Check] = (),
        registry: metrics.Registry | None = None,
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidInput(f"malformed health address {address!r}: expected host:port")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._liveness = liveness
        self._details = details
        self._checks = tuple(checks)
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        lost = self._liveness.lost_for()
        ok = lost <= self._liveness.threshold
        body = {"ok": ok, "bus_lost_seconds": round(lost, 3), **self._details()}
        return web.Response(
            status=200 if ok else 503, text=json.dumps(body) + "\n", content_type="application/json"
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, body = await metrics.readiness(self._checks)
        return web.Response(status=200 if ok else 503, text=json.dumps(body) + "\n", content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        text = await self._registry.exposition() if self._registry is not None else ""
        return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})
