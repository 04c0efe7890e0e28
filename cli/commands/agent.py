"""`convoy agent --runtime NAME`: run one runtime's agent (it only dials out, to NATS).

Settings come from flags or the environment (CONVOY_NATS_URL, CONVOY_INSTANCE,
CONVOY_AGENT_CREDENTIAL_FILE, CONVOY_STATE_DIR, CONVOY_NATS_CA) and are passed down explicitly.
The agent uses TLS whenever the server offers it (and insists on it for a tls:// URL or
a CA file), verifying the server with the CA file or the system store (eventstore.natstls). The
credential file holds the secret that `IssueAgentCredential` returned (the bare secret,
or the JSON answer with a "secret" field); the agent logs in to NATS as
`<instance>-agent-<runtime>` with it and receives only on its own inbox prefix.

Several may run for one runtime (replicas, each with its own state folder): each first
takes the runtime's lease on the bus (eventstore.leases); the others wait as standby and
the first to find it free after the active one died takes over (services/agent/agent.py
says why a lease). One that loses its lease stops and exits with code 3, so whatever
supervises it starts it again, as a standby. `--no-lease` runs without one (then run
exactly one per runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from cli import logging as convoy_logging
from cli import ops
from eventstore import bus, natsauth, natstls
from eventstore.errors import InvalidInput
from eventstore.metrics import Registry
from eventstore.settings import default_state_dir, environ
from services.agent.agent import Agent, AgentSettings
from services.agent.state import FolderInUse, Replica
from services.agent.secretclient import SecretClient
from services.agent.selection import build_runtime


def read_secret(path: Path) -> str:
    text = path.read_text().strip()
    if text.startswith("{"):
        secret = json.loads(text).get("secret", "")
        if not isinstance(secret, str) or not secret:
            raise typer.BadParameter(f"{path} has no \"secret\" field")
        return secret
    return text


def agent(
    runtime: Annotated[str, typer.Option("--runtime", help="The runtime this agent serves.", show_default=False)],
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: $CONVOY_NATS_URL).")] = None,
    credential_file: Annotated[
        Path | None,
        typer.Option("--credential-file", help="File with the agent credential's secret (default: $CONVOY_AGENT_CREDENTIAL_FILE)."),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where the agent keeps its state.")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="Convoy instance (default: $CONVOY_INSTANCE or convoy).")] = None,
    health: Annotated[
        str, typer.Option("--health", help="host:port of /healthz, /readyz and /metrics ('' = off).")
    ] = "127.0.0.1:9464",
    nats_ca: Annotated[
        Path | None,
        typer.Option("--nats-ca", help="CA file that verifies NATS's TLS certificate (default: $CONVOY_NATS_CA, else the system store)."),
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="Override the runtime implementation (memory, local, exec, kubernetes).")] = "",
    lease: Annotated[
        bool,
        typer.Option(
            "--lease/--no-lease",
            help="Hold the runtime's lease on the bus, so that further agents of the runtime (each with its own "
            "--state-dir) wait as standby and take over when this one dies.",
        ),
    ] = True,
    log_format: convoy_logging.LogFormatOpt = None,
) -> None:
    """Run the agent of one runtime: apply its intents, report what it sees (Ctrl-C stops it)."""
    convoy_logging.setup(log_format)
    env = environ()
    url = nats_url or env.get("CONVOY_NATS_URL") or ""
    if not url:
        typer.echo("error: give --nats-url or set CONVOY_NATS_URL (the control plane's NATS)", err=True)
        raise typer.Exit(2)
    inst = instance or env.get("CONVOY_INSTANCE", "convoy")
    cred = credential_file or (Path(env["CONVOY_AGENT_CREDENTIAL_FILE"]) if env.get("CONVOY_AGENT_CREDENTIAL_FILE") else None)
    folder = state_dir or (Path(env["CONVOY_STATE_DIR"]) if env.get("CONVOY_STATE_DIR") else default_state_dir(env)) / "agents"
    secret = read_secret(cred) if cred is not None else None
    ca = nats_ca or (Path(env["CONVOY_NATS_CA"]) if env.get("CONVOY_NATS_CA") else None)
    try:
        replica = Replica(folder, runtime)
    except FolderInUse as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    settings = AgentSettings(
        instance=inst, runtime=runtime, agent_id=replica.agent_id, state_dir=folder, health_address=health or None,
        lease=lease,
    )
    try:
        lost = asyncio.run(_run(url, secret, settings, kind, natstls.NatsTls(ca)))
    except (natstls.TlsRefused, InvalidInput) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    finally:
        replica.close()
    if lost:
        typer.echo(f"stopped: the lease of runtime {runtime!r} was lost; start again to wait as standby", err=True)
        raise typer.Exit(3)
    typer.echo("stopped")


async def _run(url: str, secret: str | None, settings: AgentSettings, kind: str, tls: natstls.NatsTls | None = None) -> bool:
    """Run the agent until a signal (answer False) or until it lost its lease (True)."""
    options: dict[str, object] = {"inbox_prefix": natsauth.agent_inbox_prefix(settings.instance, settings.runtime)}
    if secret is not None:
        options.update(user=natsauth.agent_user(settings.instance, settings.runtime), password=secret)
    nc = await bus.connect(url, name=f"convoy-agent:{settings.runtime}", tls=tls, **options)
    state_dir = settings.state_dir or Path(".")

    secrets = SecretClient(nc=nc, instance=settings.instance, runtime=settings.runtime)

    async def factory(config):  # type: ignore[no-untyped-def]
        return await build_runtime(
            config, state_dir=state_dir / settings.runtime, override_kind=kind, convoy_secrets=secrets.fetch
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics = Registry()
    try:
        async with Agent(nc=nc, settings=settings, runtime_factory=factory, metrics=metrics) as running:
            ops.instrument_agent(metrics, running)
            ops.instrument_nats(metrics, nc)
            stream = bus.events_stream(settings.instance)
            ops.instrument_consumers(metrics, nc, durables=[(stream, natsauth.agent_consumer(settings.runtime))])
            typer.echo(
                f"agent of runtime {settings.runtime} started as replica {settings.agent_id}; "
                f"/healthz on port {running.health_port}"
            )
            stopped = asyncio.create_task(stop.wait(), name="convoy-agent:signal")
            lost = asyncio.create_task(running.lost.wait(), name="convoy-agent:lease-lost")
            try:
                await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stopped, lost):
                    task.cancel()
                await asyncio.gather(stopped, lost, return_exceptions=True)
            return running.lost.is_set()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await nc.close()
