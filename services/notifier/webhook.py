"""The notifier's shell: a durable consumer of the convergence events, POSTing to a webhook.

It follows `convoy.<instance>.evt.convergence.>` on the events stream with its own durable
consumer (`notify-<name>`, created at the stream's end: a new notifier does not replay
history), asks `rules.decide` what to say, and POSTs it. Delivery is at least once:
a message is acked only after the webhook answered 2xx, a failure (non-2xx, timeout,
refused connection) is retried with backoff and dead-lettered after `max_deliver`
attempts (eventstore.subscriptions), so a receiver that is down for a while loses
nothing. Receivers deduplicate by the `Convoy-Event-Id` header, and, when a secret is
set, verify `Convoy-Webhook-Signature: t=<unix>,v1=<hex>` — the HMAC-SHA256 of
`<timestamp>.<body>`, signed at each attempt, so a receiver can refuse replays
(services.notifier.signatures). The body-only `Convoy-Signature: sha256=<hex>` is still
sent for one release, deprecated.

The webhook URL is a secret (chat webhooks carry their token in the path): it is never
logged; logs name its host.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import structlog
from nats.aio.client import Client

from eventstore import bus
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.errors import ConvoyError, InvalidInput
from eventstore.subscriptions import Delivery, DurableSubscription, SubscriptionSettings
from services.notifier import signatures
from services.notifier.rules import FORMATS, Rule, decide, payload

log = structlog.get_logger("convoy.notifier")

H_EVENT_ID = "Convoy-Event-Id"
H_WEBHOOK_SIGNATURE = "Convoy-Webhook-Signature"
"""`t=<unix>,v1=<hex>`: the signature receivers should check (services.notifier.signatures)."""
H_SIGNATURE = "Convoy-Signature"
"""Deprecated (body only, replayable): `sha256=<hex>`; dropped in the release after next."""
H_ATTEMPT = "Convoy-Delivery-Attempt"

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")

DEFAULT_SUBSCRIPTION = SubscriptionSettings(
    max_deliver=8, ack_wait=60.0, batch=20, retry_delay=1.0, max_retry_delay=60.0, start="new"
)


class WebhookFailed(ConvoyError):
    """The webhook did not take a notification (retried, then dead-lettered)."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    format: str = "json"
    secret: str = field(default="", repr=False)
    timeout: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("the webhook URL must be an http:// or https:// URL with a host")
        if self.format not in FORMATS:
            raise InvalidInput(f"unknown webhook format {self.format!r}; formats: {', '.join(FORMATS)}")
        if self.timeout <= 0:
            raise InvalidInput("the webhook timeout must be positive")

    @property
    def host(self) -> str:
        """What logs may say about the URL."""
        return urlsplit(self.url).hostname or "?"

    def sign(self, body: bytes) -> str:
        """The deprecated body-only signature (`Convoy-Signature`)."""
        return signatures.sign_body_only(self.secret, body)

    def signature_headers(self, body: bytes, *, now: float) -> dict[str, str]:
        """Both signature headers for `body` sent at `now` (none without a secret)."""
        if not self.secret:
            return {}
        return {
            H_WEBHOOK_SIGNATURE: signatures.sign(self.secret, body, timestamp=int(now)),
            H_SIGNATURE: self.sign(body),
        }


@dataclass(slots=True)
class NotifierStats:
    seen: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    """Events that could not be decoded (logged and acknowledged: a retry cannot help)."""


class Notifier:
    """`await start()` … `await stop()`."""

    def __init__(
        self,
        nc: Client,
        *,
        instance: str,
        webhook: Webhook,
        rule: Rule = Rule(),
        name: str = "default",
        registry: EventRegistry | None = None,
        settings: SubscriptionSettings = DEFAULT_SUBSCRIPTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"invalid notifier name {name!r}: 1-41 lower-case letters, digits or '-'")
        self.name = name
        self.webhook = webhook
        self.rule = rule
        self.stats = NotifierStats()
        self._clock = clock
        self._registry = registry or convoy_registry()
        self._session: aiohttp.ClientSession | None = None
        self._subscription = DurableSubscription(
            nc,
            instance=instance,
            stream=bus.events_stream(instance),
            durable=f"notify-{name}",
            filter_subjects=[bus.category_filter(instance, "convergence")],
            handler=self._handle,
            settings=settings,
        )

    @property
    def running(self) -> bool:
        return self._subscription.running

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.webhook.timeout))
        await self._subscription.start()
        log.info("notifier started", notifier=self.name, webhook_host=self.webhook.host, format=self.webhook.format)

    async def stop(self) -> None:
        await self._subscription.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Notifier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, delivery: Delivery) -> None:
        self.stats.seen += 1
        try:
            event = delivery.event()
            message = self._registry.decode(event).message
        except ConvoyError as error:
            self.stats.skipped += 1
            log.error("notifier skips an event it cannot decode", subject=delivery.subject, error=str(error))
            return
        notification = decide(self.rule, event, message)
        if notification is None:
            return
        body = json.dumps(payload(notification, self.webhook.format)).encode("utf-8")
        headers = {"Content-Type": "application/json", H_EVENT_ID: notification.event_id, H_ATTEMPT: str(delivery.attempt)}
        headers |= self.webhook.signature_headers(body, now=self._clock())
        await self._post(body, headers, notification.text)

    async def _post(self, body: bytes, headers: dict[str, str], text: str) -> None:
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self.webhook.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    self.stats.sent += 1
                    log.info("notification sent", webhook_host=self.webhook.host, text=text)
                    return
                detail = f"answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            detail = f"{type(error).__name__}"  # not str(error): it may quote the URL
        self.stats.failed += 1
        log.warning("webhook did not take a notification; retrying", webhook_host=self.webhook.host, detail=detail)
        raise WebhookFailed(f"webhook at {self.webhook.host} {detail}")
