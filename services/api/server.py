"""`ApiServer`: the API process's composition — projection, writer, gRPC and REST servers.

Everything the API runs is listed in the constructor and started in `start()` in
dependency order: the projection first (commands and auth need the catalog), then the
bootstrap admin token (so an empty installation is reachable), then the two listeners.
`stop()` undoes it in reverse, ends open Watch streams and leaves no task behind.
Addresses are "host:port"; port 0 picks a free port and `start()` answers the ports
bound, which is how tests run many servers side by side.

Operations: the REST listener also answers /healthz, /readyz (the projection runs and is
within `ready_max_lag` positions of the log's head) and /metrics (the `metrics` registry
it is given — in `convoy up`, the whole process's — or its own).

Transport: with `tls` (a checked `ServerTls`) both listeners serve TLS only — gRPC with
the pair's credentials, REST+UI with its `ssl.SSLContext` (TLS 1.2 or later) — and the UI's
cookies are marked Secure; without it both are plain text (loopback: `convoy up`).

Agents: `heartbeats` is where this process hears them (the observation ingest's
`last_heartbeat`, when it runs one); GetRuntime/ListRuntimes then say whether each
runtime's agent is connected and whether its runtime answers it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc.aio
import structlog
from aiohttp import web

from eventstore import metrics as ops
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.errors import InvalidInput
from eventstore.snapshots import SnapshotPolicy, SnapshotStore
from eventstore.types import EventStore
from services.api import auth, openapi, queries
from services.api.convergence import ConvergenceView
from services.api.grpc_transport import build_server
from services.api.handlers import Api
from services.api.history import History
from services.api.images import ImageResolver
from services.api.limits import DEFAULT_LIMITS, Limit, Limiter
from services.api.oidc import SsoVerifier
from services.api.oidc_config import OidcConfig
from services.api.planning import PlannerClient
from services.api.projection import Projection
from services.api.registry_hooks import RegistryHooks
from services.api.ui.app import UiApp
from services.api.rest import GrpcMetrics, RequestMetrics, RestApp, ServerLog
from services.api.secrets import SecretSealer
from services.api.tls import ServerTls
from services.api.writes import Writer
from services.registry.pool import RegistryPool
from services.secrets import references
from services.secrets.keyring import FileKeyring, Keyring

if TYPE_CHECKING:
    from services.api.ingest import HeartbeatSeen

log = structlog.get_logger("convoy.api.server")


@dataclass(frozen=True, slots=True)
class BoundPorts:
    """The ports actually bound (0 = that listener is disabled)."""

    grpc: int
    http: int


def split_address(address: str) -> tuple[str, int]:
    """"127.0.0.1:0", "[::1]:8080", "localhost:7070" -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(f"malformed address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def _agents(heartbeats: Callable[[str], HeartbeatSeen | None]) -> queries.AgentLookup:
    """The runtime reads' view of the heartbeats, aged by this process's clock."""
    return lambda runtime: queries.agent_state(heartbeats(runtime), now=time.monotonic())


class ApiServer:
    """The command/query API over gRPC and REST on one event store.

    `state_dir` receives the bootstrap `admin-token` file. Set `grpc_address` or
    `http_address` to None to serve only the other. `read_wait` bounds a read's wait for
    `min_position`; `write_wait` bounds a command's wait for the projection; `grace` is
    how long in-flight gRPC calls get on stop. `checks` are the process's other readiness
    checks (the bus, the store, the relay), answered by /readyz with the projection's."""

    def __init__(
        self,
        *,
        store: EventStore,
        state_dir: Path | str,
        grpc_address: str | None = "127.0.0.1:7070",
        http_address: str | None = "127.0.0.1:8080",
        registry: EventRegistry | None = None,
        read_wait: float = 5.0,
        write_wait: float = 5.0,
        grace: float = 2.0,
        bootstrap_admin: bool = True,
        planner: PlannerClient | None = None,
        metrics: ops.Registry | None = None,
        ready_max_lag: int = 1000,
        heartbeats: Callable[[str], HeartbeatSeen | None] | None = None,
        checks: Sequence[ops.Check] = (),
        registries: RegistryPool | None = None,
        keyring: Keyring | None = None,
        token_key: bytes | None = None,
        oidc: OidcConfig | None = None,
        limits: dict[str, Limit] | None = None,
        clock: Callable[[], datetime] | None = None,
        tls: ServerTls | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_policy: SnapshotPolicy | None = None,
    ) -> None:
        """`token_key`: this instance's key for token digests (HMAC-SHA256; None: SHA-256,
        which another instance would accept too). `oidc`: the SSO issuers to trust.
        `limits`: per-principal limits by kind (services.api.limits.DEFAULT_LIMITS).
        `clock`: the API's clock (token and SSO expiry). `snapshots`: where the read
        model's snapshots are loaded from and taken to (None: fold the log from 0)."""
        self._token_key = token_key
        self._store = store
        self._state_dir = Path(state_dir)
        self._grpc_address = grpc_address
        self._http_address = http_address
        self._registry = registry or convoy_registry()
        self._grace = grace
        self.tls = tls
        """The listeners' certificate and key (None: plain text)."""
        self._bootstrap_admin = bootstrap_admin
        self.metrics = metrics or ops.Registry()
        self._requests = RequestMetrics(self.metrics)
        self._grpc_requests = GrpcMetrics(self.metrics)
        self._ready_max_lag = ready_max_lag
        self._checks = list(checks)
        self._projection_lag = self.metrics.gauge(
            "convoy_api_projection_lag_positions", "Log head position minus the API read model's position."
        )
        self._fold_failures = self.metrics.counter(
            "convoy_api_projection_fold_failures_total",
            "Catalog events the API's read model could not fold (it stops before one; writes are refused).",
        )
        self.metrics.collector("api_projection", self._measure_projection)
        self.convergence = ConvergenceView()
        self.projection = Projection(
            store=store, registry=self._registry, convergence=self.convergence, snapshot_store=snapshots,
            snapshot_policy=snapshot_policy,
        )
        # Convoy-kept secrets: encrypted under keys outside the log (the state directory's
        # secrets.keys unless the composition gives another keyring).
        self.secrets = SecretSealer(keyring=keyring or FileKeyring(path=self._state_dir / "secrets.keys"))
        self._owns_registries = registries is None
        self.registries = registries or RegistryPool(secrets=self.secret_resolver())
        images = ImageResolver(pool=self.registries)
        self._writer = Writer(
            store=store,
            registry=self._registry,
            projection=self.projection,
            timeout=write_wait,
            images=images,
            secrets=self.secrets,
            token_key=token_key,
        )
        wall = clock or (lambda: datetime.now(UTC))
        self.sso = SsoVerifier(oidc, clock=lambda: wall().timestamp()) if oidc is not None else None
        self.limiter = Limiter(limits=dict(limits) if limits is not None else dict(DEFAULT_LIMITS))
        self.api = Api(
            store=store,
            registry=self._registry,
            projection=self.projection,
            writer=self._writer,
            read_wait=read_wait,
            convergence=self.convergence,
            planner=planner,
            history=History(store=store, registry=self._registry),
            agents=_agents(heartbeats) if heartbeats is not None else None,
            images=images,
            clock=wall,
            token_key=token_key,
            sso=self.sso,
            limiter=self.limiter,
        )
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.ui = UiApp(self.api, secure_cookies=tls is not None)
        self.registry_hooks = RegistryHooks(self.api)
        """Push listeners (the follower's `notify`) are added by the composition."""
        self._openapi: dict[str, Any] | None = None
        self.ports = BoundPorts(0, 0)
        self.admin_token_path: Path | None = None
        """Where the bootstrap admin secret was written (None: an admin token existed)."""

    def secret_resolver(self) -> Callable[[resources_pb2.SecretRef], str]:
        """Resolving a credential reference in this process: env and file here, Convoy-kept
        values with this API's keyring (registry passwords, ticketing headers)."""
        convoy = self.secrets.resolver(lambda: self.projection.state)
        return lambda ref: references.resolve(ref, convoy=convoy)

    async def start(self) -> BoundPorts:
        try:
            await self.projection.start()
            if self._bootstrap_admin:
                await self._bootstrap()
            grpc_port = await self._start_grpc() if self._grpc_address else 0
            http_port = await self._start_http() if self._http_address else 0
        except BaseException:
            await self.stop()
            raise
        self.ports = BoundPorts(grpc_port, http_port)
        log.info(
            "api started", grpc_port=grpc_port, http_port=http_port, tls=self.tls is not None,
            position=self.projection.position,
        )
        return self.ports

    async def stop(self) -> None:
        """Stop listening, end Watch streams, let in-flight calls finish (up to
        `grace`), then stop the projection."""
        self.api.close_streams()
        self.ui.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._grpc is not None:
            server, self._grpc = self._grpc, None
            await server.stop(self._grace)
        await self.projection.stop()
        if self._owns_registries:
            await self.registries.close()
        log.info("api stopped")

    async def _bootstrap(self) -> None:
        """Create the first admin token when none is live. Its secret goes to
        `<state_dir>/admin-token` (0600) just before the token is recorded: a crash in
        between leaves a useless file, never a token nobody can use. Of two API processes
        bootstrapping the same empty instance at once, one creates the token (a fixed
        receipt key makes it once per instance); the other removes its void file."""
        if auth.has_live_admin(self.projection.state):
            return
        path = self._state_dir / auth.ADMIN_TOKEN_FILE
        written = False

        async def write(secret: str) -> None:
            nonlocal written
            await asyncio.to_thread(auth.write_admin_secret, self._state_dir, secret)
            written = True

        created = await self._writer.bootstrap_token(
            name="bootstrap-admin", minted=auth.mint(token_key=self._token_key), before_commit=write
        )
        if created is None and written:  # another process bootstrapped first: this secret is void
            path.unlink(missing_ok=True)
        if created is not None:
            self.admin_token_path = path
            log.warning(
                "bootstrap admin token created; its secret is in the file", token_id=created.token_id, path=str(path)
            )

    async def _start_grpc(self) -> int:
        assert self._grpc_address is not None
        server = build_server(self.api, self._grpc_requests.observe)
        if self.tls is not None:
            port = server.add_secure_port(self._grpc_address, self.tls.grpc_credentials())
        else:
            port = server.add_insecure_port(self._grpc_address)
        if port == 0:
            raise InvalidInput(f"could not bind the gRPC address {self._grpc_address!r}")
        self._grpc = server
        await server.start()
        return port

    async def _start_http(self) -> int:
        assert self._http_address is not None
        host, port = split_address(self._http_address)
        rest = RestApp(
            self.api,
            openapi=self._openapi_document,
            health=self._health,
            readiness=self.readiness,
            registry=self.metrics,
            requests=self._requests,
            ui=self.ui,
            hooks=[self.registry_hooks],
        )
        runner = web.AppRunner(rest.app(), access_log=None, shutdown_timeout=self._grace, logger=ServerLog())
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port, ssl_context=self.tls.context if self.tls is not None else None)
        await site.start()
        addresses: Sequence[Any] = runner.addresses
        return int(addresses[0][1])

    def _openapi_document(self) -> dict[str, Any]:
        if self._openapi is None:
            self._openapi = openapi.document()
        return self._openapi

    def _health(self) -> tuple[bool, int]:
        return self.projection.running, self.projection.position

    # -- operations ----------------------------------------------------------------

    async def _measure_projection(self) -> None:
        self._projection_lag.set(max(0, await self._store.head() - self.projection.position))
        self._fold_failures.set_total(self.projection.fold_failures)

    async def _projection_ready(self) -> tuple[bool, str]:
        if self.projection.broken is not None:
            return False, str(self.projection.broken)
        if not self.projection.running:
            return False, "the read model is not running"
        head, position = await self._store.head(), self.projection.position
        lag = max(0, head - position)
        return lag <= self._ready_max_lag, f"position {position} of {head} (lag {lag}, at most {self._ready_max_lag})"

    def checks(self) -> list[ops.Check]:
        """What this API needs to serve: a read model that runs and keeps up (and the
        process's other checks)."""
        return [ops.Check("api_projection", self._projection_ready), *self._checks]

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        return await ops.readiness(self.checks())
