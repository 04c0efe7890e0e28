"""One running emulator: the store, the controllers and the HTTP server, started and stopped together.

`Emulator` is what tests and `python -m tests.k8s_emulator` use. It listens on 127.0.0.1
(port 0 picks a free one), writes a kubeconfig for it, runs the controllers as a named
asyncio task woken by every change, and exposes the test controls: `tick()` moves the
emulator's clock (Pods start, crash, deadlines expire), `settle()` lets the controllers
catch up now, `compact()` expires watch history, `requests` lists what clients asked, `fail_next()`
answers a chosen request with an error. With `auto_tick` set, a second task ticks
on its own (for a standalone server, or tests that only poll the client side).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.k8s_emulator.authz import Authorizer, Subject
from tests.k8s_emulator.controller import Controllers
from tests.k8s_emulator.server import ApiServer, Fault, Request
from tests.k8s_emulator.store import Clock, Event, Store

JSON = dict[str, Any]


class Emulator:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tick_seconds: float = 1.0,
        auto_tick: float | None = None,
        history_limit: int = 1000,
        tokens: dict[str, Subject] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tick_seconds = tick_seconds
        self.auto_tick = auto_tick
        self.clock = Clock()
        self.store = Store(self.clock, history_limit=history_limit)
        self.controllers = Controllers(self.store)
        self.authorizer = Authorizer(tokens)
        self.server = ApiServer(self.store, self.authorizer, lambda: f"{self.host}:{self.port}")
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.store.listeners.append(self._on_event)

    @property
    def requests(self) -> deque[Request]:
        """Every request served so far, oldest first (what a client sent: method, path, query, verb)."""
        return self.server.requests

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _on_event(self, event: Event) -> None:
        if event.rt.plural in ("deployments", "pods", "namespaces"):
            self._wake.set()

    async def start(self) -> None:
        self._runner = web.AppRunner(self.server.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._control_loop(), name="k8s-emulator-controllers"))
        if self.auto_tick is not None:
            self._tasks.append(asyncio.create_task(self._tick_loop(self.auto_tick), name="k8s-emulator-ticker"))

    async def stop(self) -> None:
        self.server.stop_watches()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _control_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.controllers.reconcile()
            await asyncio.sleep(0)

    async def _tick_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.controllers.tick(self.tick_seconds)

    # ---- test controls ---------------------------------------------------------------------

    async def settle(self) -> None:
        """Let the controllers react to everything written so far (no clock movement)."""
        self.controllers.reconcile()
        await asyncio.sleep(0)

    async def tick(self, times: int = 1, *, seconds: float | None = None) -> None:
        """Move the clock `times` steps of `seconds` (default `tick_seconds`); Pods progress one step each."""
        for _ in range(times):
            self.controllers.tick(self.tick_seconds if seconds is None else seconds)
            await asyncio.sleep(0)

    def compact(self) -> None:
        self.store.compact()

    def fail_next(self, verb: str, plural: str, *, code: int = 503, dry_run: bool = False, times: int = 1) -> None:
        """Answer the next `times` requests of `verb` on `plural` (dry runs or real writes) with
        `code` instead of serving them: a fault at a point a test chooses."""
        self.server.faults.append(Fault(verb, plural, dry_run, code, times))

    def kubeconfig(self, *, token: str | None = None, context: str = "emulator") -> JSON:
        user: JSON = {"token": token} if token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [{"name": context, "context": {"cluster": "emulator", "user": "emulator"}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        path.write_text(yaml.safe_dump(self.kubeconfig(token=token)))
        return path
