"""The `convoy` command line.

The composition root: it reads settings from flags and the environment (the only place
that does), builds the components explicitly and runs them. `up` and `api` run servers;
the client commands (`cli.commands.*`) talk to an API through `cli.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from cli import controlplane, demo, localstate
from cli import logging as convoy_logging
from cli.client import CliError
from cli.commands import agent as agent_command
from cli.commands import (
    catalog,
    configs,
    convergence,
    events,
    lifecycle,
    natsusers,
    notify,
    protections,
    registries,
    releases,
    resources,
    runtimes,
    secrets,
    tokens,
)
from cli.commands import gatekeeper as gatekeeper_command
from cli.commands import instances as instances_command
from cli.commands import planner as planner_command
from eventstore import redaction
from eventstore.embedded import EmbeddedServers
from eventstore.errors import EmbeddedServerError, InvalidInput
from eventstore.settings import Settings, environ
from services.api.oidc_config import OidcConfigError
from services.api.oidc_config import load as load_oidc_config
from services.api.tls import ServerTls
from services.notifier.webhook import Webhook

app = typer.Typer(
    name="convoy",
    help="Convoy: ordered, protected, auditable releases across many clusters.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """Convoy: ordered, protected, auditable releases across many clusters.

    Client commands find the API from --endpoint/--token, CONVOY_ENDPOINT/CONVOY_TOKEN,
    ~/.config/convoy/config.toml (endpoint = "...", token = "..."), or a local `convoy up`.
    Exit codes: 1 failed, 2 invalid input, 3 not found, 4 conflict or not allowed yet,
    5 unauthenticated or permission denied, 6 API unavailable.
    """


StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where Convoy keeps its data (default: ~/.local/share/convoy)."),
]


GrpcPort = Annotated[int, typer.Option("--grpc-port", help="The API's gRPC port on 127.0.0.1 (0 = any free port).")]
HttpPort = Annotated[int, typer.Option("--http-port", help="The API's REST port on 127.0.0.1 (0 = any free port).")]


OidcConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--oidc-config",
        help="SSO: a YAML file of trusted OIDC issuers and group→role mappings (default: $CONVOY_OIDC_CONFIG; docs/security.md).",
    ),
]


@app.command()
def up(
    state_dir: StateDir = None,
    grpc_port: GrpcPort = 7070,
    http_port: HttpPort = 8080,
    local_runtime: Annotated[
        str, typer.Option("--local-runtime", help="Run an agent for this runtime of local processes ('' = none).")
    ] = "local",
    demo: Annotated[
        bool, typer.Option("--demo", help="Apply the example application and deploy its first release.")
    ] = False,
    demo_dir: Annotated[Path, typer.Option("--demo-dir", help="The example --demo applies.")] = Path("examples/shop"),
    ops_port: Annotated[
        int, typer.Option("--ops-port", help="/metrics, /healthz, /readyz of the whole control plane on 127.0.0.1 (0 = any free port).")
    ] = 9090,
    notify_format: Annotated[
        str,
        typer.Option(
            "--notify-format",
            help=f"With ${notify.ENV_WEBHOOK} set: also send status changes there, as json or slack (see `convoy notify`).",
        ),
    ] = "json",
    log_format: convoy_logging.LogFormatOpt = None,
    oidc_config: OidcConfigOpt = None,
) -> None:
    """Start Convoy's control plane (API, planner, relay, ingest, a local agent) on the embedded NATS and PostgreSQL (Ctrl-C stops it).

    Its API is plain HTTP/gRPC on 127.0.0.1 only; `convoy api --tls-cert/--tls-key` serves other machines."""
    convoy_logging.setup(log_format)
    settings = _with_oidc(Settings.from_env(environ(), state_dir=state_dir, oidc_config=oidc_config))
    try:
        webhook = notify.webhook_from(fmt=notify_format)
    except InvalidInput as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    extra = "" if settings.nats_url else controlplane.nats_auth_config(settings.state_dir, settings.instance)
    embedded = EmbeddedServers(
        state_dir=settings.state_dir, database_url=settings.database_url, nats_url=settings.nats_url,
        nats_config_extra=extra,
    )
    try:
        embedded.start()
    except EmbeddedServerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    with embedded as servers:
        typer.echo(f"state folder: {settings.state_dir}")
        typer.echo(f"PostgreSQL:   {redaction.redact_url(servers.database_url)}")
        typer.echo(f"NATS:         {redaction.redact_url(servers.nats_url)}")
        listen = controlplane.Listen(grpc_port=grpc_port, http_port=http_port, ops_port=ops_port)
        asyncio.run(_serve(settings, servers, listen, local_runtime or None, demo_dir if demo else None, webhook))
    typer.echo("stopped")


@app.command()
def api(
    state_dir: StateDir = None,
    grpc_port: GrpcPort = 7070,
    http_port: HttpPort = 8080,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 in a container; mind the firewall).")
    ] = "127.0.0.1",
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            help="Serve gRPC and REST+UI over TLS with this PEM certificate (chain) (else CONVOY_TLS_CERT).",
            show_default=False,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key", help="The certificate's unencrypted PEM private key (else CONVOY_TLS_KEY).", show_default=False
        ),
    ] = None,
    log_format: convoy_logging.LogFormatOpt = None,
    oidc_config: OidcConfigOpt = None,
) -> None:
    """Run the API (gRPC + REST) on CONVOY_DATABASE_URL; with CONVOY_NATS_URL also its bus side.

    With NATS it also runs the relay, observation ingest, desired-state answers for agents
    and their consumers, and sends dry runs to the planner. Its REST port also answers
    /metrics, /healthz and /readyz. With --tls-cert/--tls-key both listeners serve TLS only
    (clients use grpcs://host:port and https://); without them they are plain text, which
    it warns about on any --host but loopback."""
    convoy_logging.setup(log_format)
    env = environ()
    settings = _with_oidc(Settings.from_env(env, state_dir=state_dir, oidc_config=oidc_config))
    try:
        tls = server_tls(tls_cert or _path(env.get("CONVOY_TLS_CERT")), tls_key or _path(env.get("CONVOY_TLS_KEY")))
    except InvalidInput as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if not settings.database_url:
        typer.echo(
            "error: CONVOY_DATABASE_URL is not set; set it to the PostgreSQL URL Convoy stores its events in "
            "(e.g. postgresql://user:password@host:5432/convoy), or run `convoy up` for an embedded one",
            err=True,
        )
        raise typer.Exit(2)
    typer.echo(f"PostgreSQL:   {redaction.redact_url(settings.database_url)}")
    listen = controlplane.Listen(grpc_port=grpc_port, http_port=http_port, host=host, tls=tls)
    try:
        asyncio.run(_serve_api(settings, settings.database_url, listen))
    except planner_command.STARTUP_REFUSALS as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo("stopped")


def _with_oidc(settings: Settings) -> Settings:
    """Check the SSO configuration before starting anything (a wrong file is exit 2)."""
    if settings.oidc_config is not None:
        try:
            config = load_oidc_config(settings.oidc_config)
        except OidcConfigError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"SSO:          {len(config.issuers)} OIDC issuer(s) from {settings.oidc_config}")
    return settings


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def server_tls(cert: Path | None, key: Path | None) -> ServerTls | None:
    """The API's TLS pair from --tls-cert/--tls-key (or the environment): both or neither."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if cert is not None else ("--tls-key", "--tls-cert")
        raise InvalidInput(
            f"{given} needs {missing} too (or CONVOY_TLS_CERT and CONVOY_TLS_KEY): TLS takes a certificate and its key"
        )
    return ServerTls.load(cert, key)


async def _serve(
    settings: Settings,
    servers: EmbeddedServers,
    listen: controlplane.Listen,
    local_runtime: str | None,
    demo_dir: Path | None,
    webhook: Webhook | None = None,
) -> None:
    with _stop_on_signals() as stop:
        async with controlplane.control_plane(
            settings, servers, listen, local_runtime=local_runtime, webhook=webhook
        ) as running:
            await running.planner.ready.wait()
            pid_file = localstate.write_pid(settings.state_dir)
            if demo_dir is not None:
                try:
                    await asyncio.to_thread(demo.run, settings.state_dir, demo_dir, echo=typer.echo)
                except CliError as error:
                    typer.echo(f"demo: {error}", err=True)
                typer.echo("demo: follow it with `convoy status shop` and `convoy why shop/web`")
            agent = f"; local agent for runtime {local_runtime!r}" if running.agent else ""
            typer.echo(f"control plane ready at position {await running.store.head()}{agent}; press Ctrl-C to stop")
            await stop.wait()
            pid_file.unlink(missing_ok=True)


async def _serve_api(settings: Settings, database_url: str, listen: controlplane.Listen) -> None:
    with _stop_on_signals() as stop:
        async with controlplane.api_process(settings, database_url, listen):
            typer.echo("API ready; press Ctrl-C to stop")
            await stop.wait()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


app.command("agent")(agent_command.agent)
app.command()(lifecycle.down)
for command in (configs.apply, configs.delete, configs.validate, configs.diff):
    app.command()(command)
for group in (
    catalog.apps,
    catalog.services,
    catalog.channels,
    runtimes.runtimes,
    protections.protections,
    resources.resources,
    registries.registries,
    catalog.releases,
    tokens.tokens,
    secrets.secrets,
    instances_command.instances,
):
    app.add_typer(group)
for command in (
    releases.deploy,
    releases.approve,
    releases.reject,
    releases.bypass,
    releases.pause,
    releases.resume,
    releases.rollback,
    events.events,
    convergence.status,
    convergence.why,
    planner_command.planner,
    planner_command.replay,
):
    app.command()(command)
app.command("nats-users")(natsusers.nats_users)
app.command()(notify.notify)
app.command()(gatekeeper_command.gatekeeper)


if __name__ == "__main__":
    app()
