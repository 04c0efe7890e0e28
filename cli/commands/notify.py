"""`convoy notify`: push the convergence record to a webhook (chat, ticketing, paging).

Runs the notifier (services/notifier) as its own process against the control plane's
NATS. The webhook URL is a secret (chat webhooks carry a token in the path), so it comes
from the environment (`CONVOY_NOTIFY_WEBHOOK`) or a file rather than the command line,
where `ps` would show it. `convoy up --notify` runs the same notifier inside `convoy up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from cli import logging as convoy_logging
from cli.commands.common import read_text_file
from eventstore import bus
from eventstore.errors import InvalidInput
from eventstore.settings import environ
from services.notifier.rules import DEFAULT_STATUSES, FORMATS, Rule, parse_statuses, status_name
from services.notifier.webhook import Notifier, Webhook

ENV_WEBHOOK = "CONVOY_NOTIFY_WEBHOOK"
ENV_SECRET_FILE = "CONVOY_NOTIFY_SECRET_FILE"
DEFAULT_ON = ",".join(sorted(status_name(s).lower() for s in DEFAULT_STATUSES))


def webhook_from(env: dict[str, str] | None = None, *, url_file: Path | None = None, fmt: str = "json") -> Webhook | None:
    """The webhook the environment (or `url_file`) names; None when none is set."""
    env = dict(environ()) if env is None else env
    url = read_text_file(url_file, "webhook URL") if url_file is not None else env.get(ENV_WEBHOOK, "")
    if not url:
        return None
    secret_file = env.get(ENV_SECRET_FILE)
    secret = read_text_file(Path(secret_file), "webhook secret") if secret_file else ""
    return Webhook(url=url, format=fmt, secret=secret)


def notify(
    on: Annotated[
        str, typer.Option("--on", help="Statuses to notify about, comma-separated.")
    ] = DEFAULT_ON,
    app: Annotated[
        list[str] | None, typer.Option("--app", help="Only these applications (repeatable; default all).", show_default=False)
    ] = None,
    channel: Annotated[
        list[str] | None, typer.Option("--channel", help="Only these channels (repeatable; default all).", show_default=False)
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"Body: {' or '.join(FORMATS)} (slack: an incoming-webhook message).")] = "json",
    url_file: Annotated[
        Path | None,
        typer.Option("--webhook-file", help=f"File holding the webhook URL (default: ${ENV_WEBHOOK}).", show_default=False),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Names this notifier's durable consumer (one per webhook).")] = "default",
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: $CONVOY_NATS_URL).")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="Convoy instance (default: $CONVOY_INSTANCE or convoy).")] = None,
    log_format: convoy_logging.LogFormatOpt = None,
) -> None:
    """Send chosen status changes (approval needed, failed, rolled back, converged …) to a webhook.

    Signed with HMAC-SHA256 over timestamp and body when $CONVOY_NOTIFY_SECRET_FILE names a
    secret (header Convoy-Webhook-Signature: t=<unix>,v1=<hex>; receivers refuse stale ones);
    delivered at least once (receivers dedupe by Convoy-Event-Id)."""
    convoy_logging.setup(log_format)
    env = dict(environ())
    try:
        rule = Rule(statuses=parse_statuses(on), applications=frozenset(app or ()), channels=frozenset(channel or ()))
        webhook = webhook_from(env, url_file=url_file, fmt=fmt)
    except (ValueError, InvalidInput) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if webhook is None:
        typer.echo(f"error: no webhook: set {ENV_WEBHOOK} or give --webhook-file", err=True)
        raise typer.Exit(2)
    url = nats_url or env.get("CONVOY_NATS_URL") or ""
    if not url:
        typer.echo("error: give --nats-url or set CONVOY_NATS_URL (the control plane's NATS)", err=True)
        raise typer.Exit(2)
    asyncio.run(_run(url, instance or env.get("CONVOY_INSTANCE", "convoy"), webhook, rule, name))
    typer.echo("stopped")


async def _run(url: str, instance: str, webhook: Webhook, rule: Rule, name: str) -> None:
    nc = await bus.connect(url, name=f"convoy-notify:{name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Notifier(nc, instance=instance, webhook=webhook, rule=rule, name=name):
            statuses = ", ".join(sorted(status_name(s) for s in rule.statuses))
            typer.echo(f"notifying {webhook.host} of {statuses}; press Ctrl-C to stop")
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await nc.close()
