"""`convoy up`'s composition: every process of the control plane, in one.

Listed and started in dependency order, stopped in reverse (an AsyncExitStack):
the event store; JetStream streams; the relay (log → bus); observation ingest (bus →
log); the desired-state responder (fresh agents); NATS user/consumer sync (per-runtime
agent credentials); the API (gRPC + REST, asking the planner for dry runs) with the
follower and the secret responder (Convoy-kept secrets, sealed to the asking agent) beside it (repository discovery, woken by the registry webhook); the planner
and its dry-run responder; one agent for the local process runtime; and, when a webhook is
configured, the notifier; the gatekeeper (change-ticket gates, GitHub deployment statuses).

The local agent runs inside this process with the system user (it is part of the
embedded default on one machine), on a connection of its own whose inbox prefix is its
runtime's: the desired-state responder answers only there (eventstore.natsauth). Agents
of other runtimes run as `convoy agent` with their own least-privilege credentials.

Operations: every component's metrics go to one `Registry`, served with the readiness of
them all by an ops server (`cli.ops`, 127.0.0.1:`ops_port`): /metrics, /healthz, /readyz.
Readiness probes the bus and the store (eventstore.probes), asks the relay how it is
doing, and, on the embedded default, whether both servers run (`EmbeddedServers`
supervises them; /healthz fails once it gave up on one). The API's REST /readyz answers
the API's share: its projection, the bus, the store, the relay and ingest.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import typer
from nats.aio.client import Client

from cli import follow, localstate, ops
from eventstore import bus, leases, natsauth, natstls, probes
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.embedded import EmbeddedServers, NatsServer
from eventstore.metrics import Check, Counter, Registry
from eventstore.opsserver import OpsServer
from eventstore.pgsnapshots import PostgresSnapshotStore
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.snapshots import SnapshotPolicy, SnapshotStore, policy_every
from eventstore.relay import Relay, RelaySettings
from eventstore.settings import Settings
from eventstore.types import EventStore
from schemas.convoy.v1 import resources_pb2
from services.agent.agent import Agent, AgentSettings
from services.agent.runtimes.base import Runtime
from services.agent.secretclient import SecretClient
from services.agent.selection import build_runtime
from services.api.desired import DesiredState
from services.api.idempotency import ReceiptPurge
from services.api.ingest import HeartbeatSeen, ObservationIngest
from services.api import oidc_config
from services.api.natsauth_sync import NatsAuthSync
from services.api.oidc_config import OidcConfig
from services.api.planning import NatsPlannerClient
from services.api.secretdelivery import SecretResponder
from services.api.server import ApiServer
from services.api.tls import ServerTls
from services.gatekeeper.github import GitHubReporter
from services.gatekeeper.worker import Gatekeeper
from services.notifier.webhook import Notifier, Webhook
from services.planner.clock import SystemClock
from services.planner.responder import PlanResponder
from services.planner.runner import Planner

API_POOL = 32
"""PostgreSQL connections for a process serving the API: each concurrent command holds
one for its idempotency lookup and record and its read of the head (bench/api.py: 10
connections 245 commands/s, 40 connections 421)."""


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the API listens (`convoy up`: loopback, plain text) and with which certificate."""

    grpc_port: int
    http_port: int
    host: str = "127.0.0.1"
    ops_port: int | None = None
    """/metrics, /healthz, /readyz of the whole control plane (None: not served)."""
    tls: ServerTls | None = None
    """Serve gRPC and REST+UI over TLS with this pair (None: plain text)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_notice(listen: Listen) -> tuple[str, bool]:
    """The startup line saying how the API is reached, and whether it is a warning: plain
    text beyond loopback lets anyone on the path read tokens and session cookies."""
    if listen.tls is not None:
        return f"transport:    TLS (gRPC and HTTPS) with the certificate {listen.tls.cert_path}", False
    if is_loopback(listen.host):
        return (
            f"transport:    plain HTTP/gRPC on {listen.host} only; use `convoy api --tls-cert/--tls-key` "
            "to serve other machines"
        ), False
    return (
        f"warning: serving plain HTTP/gRPC on {listen.host}: tokens, session cookies and secrets cross the "
        "network unencrypted; pass --tls-cert/--tls-key (or CONVOY_TLS_CERT/CONVOY_TLS_KEY)"
    ), True


@dataclass(frozen=True, slots=True)
class Running:
    store: PostgresEventStore
    api: ApiServer
    planner: Planner
    agent: Agent | None
    metrics: Registry
    ops: OpsServer | None


def nats_auth_config(state_dir: Path, instance: str) -> str:
    """The embedded NATS server's accounts block (the control account with the system
    user only, until runtimes get credentials — the sync adds their accounts)."""
    return natsauth.render(instance, [natsauth.system(instance, natsauth.system_password(state_dir))])


async def connect(settings: Settings, url: str, *, name: str, **options: object) -> Client:
    """The control plane's connection: as the instance's system user (`natsauth.system_user`)
    on the embedded NATS or with CONVOY_NATS_PASSWORD, as CONVOY_NATS_URL says otherwise, with TLS whenever
    the server offers it (verified with CONVOY_NATS_CA or the system store)."""
    tls = natstls.NatsTls(settings.nats_ca)
    if settings.nats_url and settings.nats_password:  # a provisioned instance (convoy instances create)
        return await bus.connect(
            url, name=name, tls=tls, user=natsauth.system_user(settings.instance), password=settings.nats_password,
            **options,
        )
    if settings.nats_url:  # an external NATS: its operator manages users
        return await bus.connect(url, name=name, tls=tls, **options)
    password = natsauth.system_password(settings.state_dir)
    return await bus.connect(
        url, name=name, tls=tls, user=natsauth.system_user(settings.instance), password=password, **options
    )


@contextlib.asynccontextmanager
async def control_plane(
    settings: Settings,
    servers: EmbeddedServers,
    listen: Listen,
    *,
    local_runtime: str | None,
    webhook: Webhook | None = None,
) -> AsyncIterator[Running]:
    instance = settings.instance
    registry = convoy_registry()
    metrics = Registry()
    appended = ops.events_appended(metrics)
    async with contextlib.AsyncExitStack() as stack:
        store = await PostgresEventStore.open(PostgresSettings(dsn=servers.database_url, schema=instance, pool_max=API_POOL))
        stack.push_async_callback(store.close)
        await stack.enter_async_context(ReceiptPurge(store=store, ttl=settings.idempotency_ttl))
        localstate.write_database_url(settings.state_dir, servers.database_url)
        nc = await connect(settings, servers.nats_url, name=f"convoy-up:{instance}")
        stack.push_async_callback(nc.close)
        await bus.ensure_streams(
            nc.jetstream(), instance, replicas=settings.nats_replicas, retention=settings.events_retention
        )
        await leases.ensure_bucket(nc.jetstream(), instance, replicas=settings.nats_replicas)
        ops.instrument_nats(metrics, nc)
        ops.instrument_consumers(metrics, nc, streams=[bus.events_stream(instance), bus.observations_stream(instance)])
        ops.instrument_embedded(metrics, servers)
        probe_checks = await server_probes(stack, store, nc, metrics)
        embedded_nats: NatsServer | None = None if settings.nats_url else servers.nats
        relay, ingest, desired = await bus_services(stack, settings, store, nc, registry, metrics, appended, embedded_nats)
        api = await stack.enter_async_context(
            api_server(
                ops.counted(store, appended, "api"),
                settings.state_dir,
                listen,
                planner=NatsPlannerClient(nc=nc, instance=instance),
                metrics=metrics,
                heartbeats=ingest.last_heartbeat,
                token_key=store.instance_key("tokens"),
                oidc=oidc_of(settings),
                checks=[*probe_checks, ops.relay_check(relay), ops.ingest_check(ingest)],
                snapshots=PostgresSnapshotStore(pool=store.pool),
                snapshot_policy=policy_every(settings.snapshot_every),
            )
        )
        await stack.enter_async_context(follow.follower(api))
        await stack.enter_async_context(secret_responder(nc, instance, desired, api))
        planner = await stack.enter_async_context(
            Planner(
                store=ops.counted(store, appended, "planner"),
                registry=registry,
                clock=SystemClock(),
                on_converged=ops.convergence_histogram(metrics),
                snapshot_store=PostgresSnapshotStore(pool=store.pool),
                snapshot_policy=policy_every(settings.snapshot_every),
            )
        )
        ops.instrument_planner(metrics, planner)
        await stack.enter_async_context(PlanResponder(nc=nc, planner=planner, instance=instance))
        agent = None
        if local_runtime:
            agents_dir = settings.state_dir / "agents"

            agent_nc = await connect(
                settings, servers.nats_url, name=f"convoy-up:{instance}:agent-{local_runtime}",
                inbox_prefix=natsauth.agent_inbox_prefix(instance, local_runtime),
            )
            stack.push_async_callback(agent_nc.close)
            # Convoy-kept secrets reach the agent's workloads sealed, asked on its own connection.
            secret_client = SecretClient(nc=agent_nc, instance=instance, runtime=local_runtime)

            async def open_runtime(config: resources_pb2.Runtime) -> Runtime:
                return await build_runtime(config, state_dir=agents_dir / config.name, convoy_secrets=secret_client.fetch)

            agent = await stack.enter_async_context(
                Agent(
                    nc=agent_nc,
                    settings=AgentSettings(instance=instance, runtime=local_runtime, state_dir=agents_dir),
                    runtime_factory=open_runtime,
                    registry=registry,
                    metrics=metrics,
                )
            )
            ops.instrument_agent(metrics, agent)
        if webhook is not None:
            notifier = await stack.enter_async_context(Notifier(nc, instance=instance, webhook=webhook))
            ops.instrument_notifier(metrics, notifier)
            typer.echo(f"notifying:    {webhook.host} ({webhook.format}) of status changes")
        # Change-ticket gates and GitHub statuses: systems outside the clusters, reached from here.
        convoy_secrets = api.secrets.resolver(lambda: api.projection.state)
        await stack.enter_async_context(
            Gatekeeper(store=store, registry=registry, clock=SystemClock(), convoy=convoy_secrets)
        )
        await stack.enter_async_context(GitHubReporter(store=store, registry=registry, convoy=convoy_secrets))
        # The local agent is not a condition: it waits, unready, until its runtime is
        # registered, which a fresh control plane has not done (`convoy_agent_ready` tells).
        checks = [*api.checks(), ops.planner_check(planner)]
        liveness = []
        if servers.servers():
            checks.append(ops.embedded_check(servers))
            liveness.append(ops.embedded_liveness(servers))
        server = None
        if listen.ops_port is not None:
            server = await stack.enter_async_context(
                OpsServer(address=f"{listen.host}:{listen.ops_port}", registry=metrics, checks=checks, liveness=liveness)
            )
            typer.echo(f"operations:   http://{listen.host}:{server.port} (/metrics /healthz /readyz)")
        yield Running(store=store, api=api, planner=planner, agent=agent, metrics=metrics, ops=server)


async def server_probes(
    stack: contextlib.AsyncExitStack, store: PostgresEventStore, nc: Client | None, metrics: Registry
) -> list[Check]:
    """Probe the store (and the bus) every second; their readiness checks."""
    running = [await stack.enter_async_context(probes.store_probe(store))]
    if nc is not None:
        running.insert(0, await stack.enter_async_context(probes.bus_probe(nc)))
    ops.instrument_probes(metrics, running)
    return [probe.check() for probe in running]


async def bus_services(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    store: PostgresEventStore,
    nc: Client,
    registry: EventRegistry,
    metrics: Registry,
    appended: Counter,
    embedded_nats: NatsServer | None,
) -> tuple[Relay, ObservationIngest, DesiredState]:
    """What the API side runs on the bus: the relay (log → bus; one leader among
    processes), observation ingest (bus → log), desired-state answers for fresh agents,
    and the agents' consumers (and, on the embedded NATS, their users). The secret
    responder, which needs the API's keyring and catalog, joins once the API runs
    (`secret_responder`), answering from the same desired state."""
    instance = settings.instance
    relay_settings = RelaySettings(instance=instance, replicas=settings.nats_replicas, retention=settings.events_retention)
    relay = await stack.enter_async_context(Relay(store=store, nc=nc, settings=relay_settings))
    ops.instrument_relay(metrics, relay)
    ingest = await stack.enter_async_context(
        ObservationIngest(nc=nc, store=ops.counted(store, appended, "ingest"), instance=instance, registry=registry)
    )
    ops.instrument_ingest(metrics, ingest)
    desired = await stack.enter_async_context(DesiredState(nc=nc, store=store, instance=instance, registry=registry))
    await stack.enter_async_context(
        NatsAuthSync(
            store=store,
            nc=nc,
            instance=instance,
            server=embedded_nats,
            system_password=natsauth.system_password(settings.state_dir) if embedded_nats else None,
            registry=registry,
        )
    )
    return relay, ingest, desired


def secret_responder(nc: Client, instance: str, desired: DesiredState, api: ApiServer) -> SecretResponder:
    """Convoy-kept secrets for agents whose desired state names them, sealed to the
    asking agent's key, read with this API's keyring (explicitly: its SecretSealer)."""
    return SecretResponder(
        nc=nc, instance=instance, desired=desired, resolve=api.secrets.resolver(lambda: api.projection.state)
    )


@contextlib.asynccontextmanager
async def api_process(settings: Settings, database_url: str, listen: Listen) -> AsyncIterator[ApiServer]:
    """`convoy api` on external servers: the API and, when CONVOY_NATS_URL is set, its bus
    side (`bus_services`) and dry runs through a planner on the bus. Several may run: the
    relay elects one leader, ingest consumers share a durable consumer."""
    metrics = Registry()
    appended = ops.events_appended(metrics)
    registry = convoy_registry()
    async with contextlib.AsyncExitStack() as stack:
        store = await PostgresEventStore.open(PostgresSettings(dsn=database_url, schema=settings.instance, pool_max=API_POOL))
        stack.push_async_callback(store.close)
        await stack.enter_async_context(ReceiptPurge(store=store, ttl=settings.idempotency_ttl))
        planner = None
        heartbeats: Callable[[str], HeartbeatSeen | None] | None = None
        desired: DesiredState | None = None
        nc = None
        if settings.nats_url:
            nc = await connect(settings, settings.nats_url, name=f"convoy-api:{settings.instance}")
            stack.push_async_callback(nc.close)
            await bus.ensure_streams(
                nc.jetstream(), settings.instance, replicas=settings.nats_replicas, retention=settings.events_retention
            )
            await leases.ensure_bucket(nc.jetstream(), settings.instance, replicas=settings.nats_replicas)
            ops.instrument_nats(metrics, nc)
        checks = await server_probes(stack, store, nc, metrics)
        if nc is not None:
            relay, ingest, desired = await bus_services(stack, settings, store, nc, registry, metrics, appended, None)
            planner = NatsPlannerClient(nc=nc, instance=settings.instance)
            checks += [ops.relay_check(relay), ops.ingest_check(ingest)]
            heartbeats = ingest.last_heartbeat
        else:
            typer.echo("no CONVOY_NATS_URL: serving the API only (no relay, observation ingest or dry runs)")
        counted = ops.counted(store, appended, "api")
        api = await stack.enter_async_context(
            api_server(
                counted, settings.state_dir, listen, planner=planner, metrics=metrics, heartbeats=heartbeats, checks=checks,
                token_key=store.instance_key("tokens"), oidc=oidc_of(settings),
                snapshots=PostgresSnapshotStore(pool=store.pool),
                snapshot_policy=policy_every(settings.snapshot_every),
            )
        )
        await stack.enter_async_context(follow.follower(api))
        if nc is not None and desired is not None:
            await stack.enter_async_context(secret_responder(nc, settings.instance, desired, api))
        if listen.ops_port is not None:
            server = await stack.enter_async_context(
                OpsServer(address=f"{listen.host}:{listen.ops_port}", registry=metrics, checks=api.checks())
            )
            typer.echo(f"operations:   http://{listen.host}:{server.port} (/metrics /healthz /readyz)")
        yield api


def oidc_of(settings: Settings) -> OidcConfig | None:
    """The SSO issuers of CONVOY_OIDC_CONFIG / --oidc-config (None: SSO is off)."""
    return oidc_config.load(settings.oidc_config) if settings.oidc_config is not None else None


@contextlib.asynccontextmanager
async def api_server(
    store: EventStore,
    state_dir: Path,
    listen: Listen,
    *,
    planner: NatsPlannerClient | None = None,
    metrics: Registry | None = None,
    heartbeats: Callable[[str], HeartbeatSeen | None] | None = None,
    checks: list[Check] | None = None,
    token_key: bytes | None = None,
    oidc: OidcConfig | None = None,
    snapshots: SnapshotStore | None = None,
    snapshot_policy: SnapshotPolicy | None = None,
) -> AsyncIterator[ApiServer]:
    """Start the API, print where it answers (and whether in plain text) and record that in `<state_dir>/endpoint.json`
    (how the CLI finds a local instance); the file is removed again on stop. `checks` join
    the API's own readiness check on its /readyz."""
    server = ApiServer(
        store=store,
        state_dir=state_dir,
        grpc_address=f"{listen.host}:{listen.grpc_port}",
        http_address=f"{listen.host}:{listen.http_port}",
        planner=planner,
        metrics=metrics,
        heartbeats=heartbeats,
        checks=checks or (),
        token_key=token_key,
        oidc=oidc,
        tls=listen.tls,
        snapshots=snapshots,
        snapshot_policy=snapshot_policy,
    )
    ports = await server.start()
    grpc_scheme, http_scheme = ("grpcs://", "https") if listen.tls is not None else ("", "http")
    endpoint = localstate.Endpoint(
        grpc=f"{grpc_scheme}{listen.host}:{ports.grpc}", rest=f"{http_scheme}://{listen.host}:{ports.http}"
    )
    endpoint_file = localstate.write_endpoint(state_dir, endpoint)
    try:
        typer.echo(f"API (gRPC):   {endpoint.grpc}")
        typer.echo(f"API (REST):   {endpoint.rest}")
        typer.echo(f"web UI:       {endpoint.rest}/ (sign in with a token)")
        notice, warning = transport_notice(listen)
        typer.echo(notice, err=warning)
        token_file = state_dir / localstate.ADMIN_TOKEN_FILE
        if token_file.exists():
            typer.echo(f"admin token:  {token_file} (keep it secret)")
        else:
            typer.echo("admin token:  none written (an admin token already exists)")
        yield server
    finally:
        with contextlib.suppress(OSError):
            endpoint_file.unlink()
        await server.stop()
