"""The bus layout on NATS JetStream, as pure functions, plus the one call that creates it.

Several Convoy instances may share one NATS, so every name derives from the instance:
subjects live under `convoy.<instance>.` and stream names end in `_<INSTANCE>`. Events are
published on `convoy.<instance>.evt.<category>.<part>…` — one subject token per stream-id
segment — so an intent stream `intent/<runtime>/…` lands on
`convoy.<instance>.evt.intent.<runtime>.…` and a runtime's NATS permissions and its agent's
consumer filter select exactly its own intents. Subject tokens are escaped reversibly
(`~XX` per UTF-8 byte for anything but letters, digits, `_ - : @`), because stream ids may
contain dots and a dot would split a token; a token too long for a subject is hashed, and
the `Convoy-Stream-Id` header stays the truth.

The envelope travels in headers (`Nats-Msg-Id` = event id, for JetStream's dedupe) and the
payload is the event's protobuf bytes, so a consumer never needs PostgreSQL.
This module is also the edge where nats-py exceptions become Convoy errors.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client, Server
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from eventstore import natstls
from eventstore.errors import BusRejected, ConvoyError, InvalidInput, Unavailable
from eventstore.types import RecordedEvent, validate_stream_id

log = structlog.get_logger("convoy.bus")
_T = TypeVar("_T")

H_MSG_ID: Final = "Nats-Msg-Id"
H_EXPECTED_LAST_MSG_ID: Final = "Nats-Expected-Last-Msg-Id"
H_POSITION: Final = "Convoy-Position"
H_STREAM_ID: Final = "Convoy-Stream-Id"
H_VERSION: Final = "Convoy-Version"
H_TYPE: Final = "Convoy-Type"
H_SCHEMA_VERSION: Final = "Convoy-Schema-Version"
H_ACTOR: Final = "Convoy-Actor"
H_CAUSATION_ID: Final = "Convoy-Causation-Id"
H_CORRELATION_ID: Final = "Convoy-Correlation-Id"
H_RECORDED_AT: Final = "Convoy-Recorded-At"

DEFAULT_DUPLICATE_WINDOW: Final = 120.0
"""Seconds JetStream remembers a `Nats-Msg-Id`. The relay does not rely on it across
restarts: it reconciles its checkpoint with the stream's last message first."""

OBSERVATIONS_MAX_AGE: Final = 7 * 24 * 3600.0
"""Seconds the observations stream keeps a message (the log keeps it for good)."""
EVENTS_MAX_AGE: Final = 7 * 24 * 3600.0
"""Seconds the events stream keeps a message by default: an agent or integration offline
longer than a week resyncs (agents) or reads the log (integrations)."""
EVENTS_MAX_MSGS: Final = 10_000_000
"""Messages the events stream keeps by default: about 7 GB per replica at the ~680 bytes a
message takes (docs/production.md, "How big each store grows")."""
DLQ_MAX_AGE: Final = 30 * 24 * 3600.0
"""Seconds dead letters are kept for someone to look at."""

_INSTANCE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_PLAIN_TOKEN = re.compile(r"^[A-Za-z0-9_:@-]+$")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_:@-]")
_MAX_TOKEN = 128
_ACTOR_SAFE = ":/@!$&'()*+,;=.-_~"
_PLAIN_ACTOR = re.compile(r"^[A-Za-z0-9:/@!$&'()*+,;=._~-]+$")


# -- names -------------------------------------------------------------------------


def validate_instance(instance: str) -> str:
    if not isinstance(instance, str) or not _INSTANCE.fullmatch(instance):
        raise InvalidInput(
            f"invalid Convoy instance name {instance!r}: use 1-32 lower-case letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    return instance


def events_stream(instance: str) -> str:
    return f"CONVOY_EVENTS_{validate_instance(instance).upper()}"


def observations_stream(instance: str) -> str:
    return f"CONVOY_OBSERVATIONS_{validate_instance(instance).upper()}"


def dlq_stream(instance: str) -> str:
    return f"CONVOY_DLQ_{validate_instance(instance).upper()}"


def encode_token(text: str) -> str:
    """One safe subject token for `text`: reversible unless it had to be hashed."""
    if _PLAIN_TOKEN.fullmatch(text):
        token = text
    elif not text:
        return "~"
    else:
        token = _UNSAFE_CHAR.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode()), text)
    if len(token) > _MAX_TOKEN:
        return "~H" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return token


def decode_token(token: str) -> str:
    if token == "~":
        return ""
    if token.startswith("~H"):
        raise InvalidInput(f"subject token {token!r} is a hash; read the {H_STREAM_ID} header instead")
    if "~" not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "~":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(token[i].encode())
            i += 1
    return out.decode()


def events_subjects(instance: str) -> str:
    return f"convoy.{validate_instance(instance)}.evt.>"


_PLAIN_STREAM_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}(?:/[A-Za-z0-9][A-Za-z0-9_:@-]{0,127}){0,8}$")
"""A valid stream id (eventstore.types) whose every part is already a plain subject token
(no '.', at most `_MAX_TOKEN` characters): its subject is the id with '/' read as '.'."""


@functools.lru_cache(maxsize=64)
def _events_prefix(instance: str) -> str:
    return f"convoy.{validate_instance(instance)}.evt."


def event_subject(instance: str, stream_id: str) -> str:
    """`convoy.<instance>.evt.<category>.<part>…` for an event of `stream_id`.

    The relay asks once per event, and a fleet release has a stream per workload and
    runtime (more than any cache of recent ids holds), so the common case — every part
    a plain token — is one regex match and a replace; only ids with parts to escape or
    hash take the token-by-token way."""
    if _PLAIN_STREAM_ID.fullmatch(stream_id):
        return _events_prefix(instance) + stream_id.replace("/", ".")
    return _escaped_event_subject(instance, stream_id)


@functools.lru_cache(maxsize=4096)
def _escaped_event_subject(instance: str, stream_id: str) -> str:
    validate_stream_id(stream_id)
    tokens = ".".join(encode_token(part) for part in stream_id.split("/"))
    return _events_prefix(instance) + tokens


def stream_id_from_subject(instance: str, subject: str) -> str:
    prefix = f"convoy.{validate_instance(instance)}.evt."
    if not subject.startswith(prefix):
        raise InvalidInput(f"subject {subject!r} is not an event subject of instance {instance!r}")
    return "/".join(decode_token(t) for t in subject[len(prefix) :].split("."))


def category_filter(instance: str, category: str) -> str:
    """Every event of one stream category (`convergence`, `release` …): for integrations."""
    return f"convoy.{validate_instance(instance)}.evt.{encode_token(category)}.>"


def intent_filter(instance: str, runtime: str) -> list[str]:
    """Consumer filter subjects selecting exactly one runtime's intents (the stream
    `intent/<runtime>` itself and every `intent/<runtime>/…`)."""
    base = f"convoy.{validate_instance(instance)}.evt.intent.{encode_token(runtime)}"
    return [base, f"{base}.>"]


def observations_subjects(instance: str) -> str:
    return f"convoy.{validate_instance(instance)}.obs.>"


def observation_subject(instance: str, runtime: str, *parts: str) -> str:
    tokens = "".join("." + encode_token(p) for p in parts)
    return f"convoy.{validate_instance(instance)}.obs.{encode_token(runtime)}{tokens}"


def observation_filter(instance: str, runtime: str) -> str:
    return f"convoy.{validate_instance(instance)}.obs.{encode_token(runtime)}.>"


def dlq_subjects(instance: str) -> str:
    return f"convoy.{validate_instance(instance)}.dlq.>"


def dlq_subject(instance: str, consumer: str) -> str:
    return f"convoy.{validate_instance(instance)}.dlq.{encode_token(consumer)}"


# -- the envelope in headers -------------------------------------------------------


def event_headers(event: RecordedEvent) -> dict[str, str]:
    headers = {
        H_MSG_ID: str(event.event_id),
        H_POSITION: str(event.position),
        H_STREAM_ID: event.stream_id,
        H_VERSION: str(event.version),
        H_TYPE: event.type,
        H_SCHEMA_VERSION: str(event.schema_version),
        H_ACTOR: event.actor if _PLAIN_ACTOR.fullmatch(event.actor) else quote(event.actor, safe=_ACTOR_SAFE),
        H_RECORDED_AT: event.recorded_at.isoformat(),
    }
    if event.causation_id is not None:
        headers[H_CAUSATION_ID] = str(event.causation_id)
    if event.correlation_id is not None:
        headers[H_CORRELATION_ID] = str(event.correlation_id)
    return headers


def event_header_block(event: RecordedEvent) -> str:
    """`event_headers` rendered as NATS header lines ("Key: value\r\n" each), for the
    relay's fast path. Every value is free of CR/LF by construction."""
    actor = event.actor
    if not _PLAIN_ACTOR.fullmatch(actor):
        actor = quote(actor, safe=_ACTOR_SAFE)
    causation, correlation = event.causation_id, event.correlation_id
    return (
        f"Convoy-Position: {event.position}\r\nConvoy-Stream-Id: {event.stream_id}\r\n"
        f"Convoy-Version: {event.version}\r\nConvoy-Type: {event.type}\r\n"
        f"Convoy-Schema-Version: {event.schema_version}\r\nConvoy-Actor: {actor}\r\n"
        f"Convoy-Recorded-At: {event.recorded_at.isoformat()}\r\n"
        + ("" if causation is None else f"Convoy-Causation-Id: {causation}\r\n")
        + ("" if correlation is None else f"Convoy-Correlation-Id: {correlation}\r\n")
    )  # the H_* names spelled out: one f-string, no global lookups per event


def event_from_message(headers: Mapping[str, str] | None, data: bytes) -> RecordedEvent:
    """The stored event a relayed message carries; `InvalidInput` if it is not one."""
    if not headers:
        raise InvalidInput("message has no headers: not a relayed Convoy event")
    try:
        causation = headers.get(H_CAUSATION_ID)
        correlation = headers.get(H_CORRELATION_ID)
        return RecordedEvent(
            position=int(headers[H_POSITION]),
            stream_id=headers[H_STREAM_ID],
            version=int(headers[H_VERSION]),
            event_id=uuid.UUID(headers[H_MSG_ID]),
            type=headers[H_TYPE],
            schema_version=int(headers[H_SCHEMA_VERSION]),
            data=bytes(data),
            actor=unquote(headers[H_ACTOR]),
            causation_id=uuid.UUID(causation) if causation else None,
            correlation_id=uuid.UUID(correlation) if correlation else None,
            recorded_at=datetime.fromisoformat(headers[H_RECORDED_AT]),
        )
    except (KeyError, ValueError) as error:
        raise InvalidInput(f"malformed Convoy event headers: {type(error).__name__}: {error}") from error


# -- errors at the edge ------------------------------------------------------------

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.errors.FlushTimeoutError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
"""nats-py failures that mean "the bus cannot do it right now"."""

NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, *UNAVAILABLE_ERRORS)
"""Everything nats-py raises that `translate` turns into a Convoy error."""


def translate(error: BaseException, what: str) -> ConvoyError:
    """The Convoy error for a nats-py exception raised while doing `what`."""
    if isinstance(error, ConvoyError):
        return error
    if isinstance(error, UNAVAILABLE_ERRORS):
        return Unavailable(f"NATS unavailable during {what}: {type(error).__name__}: {error}")
    if isinstance(error, nats.js.errors.APIError):
        return BusRejected(
            f"JetStream refused {what}: {error.description or type(error).__name__} "
            f"(code {error.code}, error code {error.err_code})",
            code=error.err_code,
        )
    return BusRejected(f"NATS refused {what}: {type(error).__name__}: {error}")


async def guarded(what: str, op: Callable[[], Awaitable[_T]]) -> _T:
    """Run a NATS operation, translating nats-py exceptions into Convoy errors."""
    try:
        return await op()
    except NATS_ERRORS as error:
        raise translate(error, what) from error


PING_INTERVAL: Final = 10
"""Seconds between the client's PINGs. nats-py's default (120 s, 2 outstanding) keeps a
connection to a frozen server (SIGSTOP, a hung VM, a half-open TCP connection after a
network partition) "connected" for 4-6 minutes, with every request timing out; with 10 s
and 2 outstanding it is declared stale, and reconnecting starts, 20-30 s after the server
stopped answering (tests/integration/test_embedded.py measures it). A PING costs the
server next to nothing, and readiness does not wait for this: it probes the bus itself
(eventstore.probes)."""
MAX_OUTSTANDING_PINGS: Final = 2
RECONNECT_BASE_DELAY: Final = 0.1
RECONNECT_MAX_DELAY: Final = 2.0
"""Reconnect attempts back off 0, 0.1, 0.2, 0.4 … 2 s (with jitter): a restarted server is
found within a second, and a dead one is not hammered (nats-py's own loop retries every
`reconnect_time_wait`, forever at the same pace)."""


def reconnect_delay(failed_attempts: int, *, jitter: float = 1.0) -> float:
    """Seconds to wait before the next reconnect attempt to a server that failed
    `failed_attempts` times in a row (0: the connection just dropped, try at once).
    `jitter` (0.8-1.0 in use) spreads many clients apart."""
    if failed_attempts <= 0:
        return 0.0
    return min(RECONNECT_MAX_DELAY, RECONNECT_BASE_DELAY * 2.0 ** (failed_attempts - 1)) * jitter


def next_server(servers: Sequence[Server], *, lost: str | None, jitter: float = 1.0) -> tuple[Server, float]:
    """Where to reconnect, and after how long: the server tried least since it last
    answered, after the backoff its failures earned — among equals, not `lost` (the
    `host:port` of the server the connection just lost). On a cluster every other node
    has a clean record too, and the lost one, killed, frozen or cut off, would cost an
    attempt (up to the connect timeout) before the client moves on."""
    server = min(servers, key=lambda s: (s.reconnects, s.uri.netloc == lost))
    return server, reconnect_delay(server.reconnects, jitter=jitter)


def server_urls(servers: str | Sequence[str]) -> list[str]:
    """The server URLs of `servers`: a list, or one string of comma-separated URLs (how
    CONVOY_NATS_URL names every node of a NATS cluster: `nats://a:4222,nats://b:4222`).
    nats-py would take such a string for one URL and fail to parse it."""
    parts = servers.split(",") if isinstance(servers, str) else [p for s in servers for p in s.split(",")]
    urls = [part.strip() for part in parts if part.strip()]
    if not urls:
        raise InvalidInput(f"no NATS server URL in {servers!r}")
    return urls


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    connect_attempts: int = 3,
    tls: natstls.NatsTls | None = None,
    **options: Any,
) -> Client:
    """A NATS connection that logs (without secrets) through structlog and, once
    connected, reconnects forever, backing off (`reconnect_delay`). The first connection
    fails fast, with `Unavailable`, after `connect_attempts` tries — or with
    `natstls.TlsRefused` when TLS could not be made safely. TLS is used whenever the
    server offers it, verified with `tls` (its CA file, or the system store), and is
    required for tls:// URLs or a CA file (eventstore.natstls). `options` go to
    `nats.connect` (credentials …). `servers` may name several servers of one cluster
    (`server_urls`); the client moves to another when its server goes away."""
    urls = server_urls(servers)
    tls = tls or natstls.NatsTls()
    tls_failures: list[BaseException] = []
    user_error_cb = options.pop("error_cb", None)

    async def on_error(error: Exception) -> None:
        if natstls.is_tls_failure(error):
            tls_failures.append(error)
        log.warning("nats error", connection=name, error=f"{type(error).__name__}: {error}")
        if user_error_cb is not None:
            await user_error_cb(error)

    current: list[str | None] = [None]
    """The `host:port` the connection is on (or was on, while it reconnects)."""

    async def on_disconnected() -> None:
        log.info("nats disconnected", connection=name)

    async def on_reconnected() -> None:
        current[0] = nc.connected_url.netloc if nc.connected_url else None
        log.info("nats reconnected", connection=name, server=current[0])

    def reconnect_to(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        return next_server(servers, lost=current[0], jitter=random.uniform(0.8, 1.0))

    settings: dict[str, Any] = {
        "reconnect_time_wait": 0.25,  # between the first connection's attempts only
        "reconnect_to_server_handler": reconnect_to,
        "connect_timeout": 2,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "tls": tls.context(),
    }
    settings.update(options)
    reconnects = settings.pop("max_reconnect_attempts", -1)
    nc = natstls.Client(require_tls=tls.required_for(urls))
    # nats-py applies max_reconnect_attempts to the first connection too: bound it there.
    try:
        await guarded(
            f"connecting to NATS as {name}",
            lambda: nc.connect(urls, name=name, max_reconnect_attempts=connect_attempts, **settings),
        )
    except Unavailable as error:
        if tls_failures:
            raise natstls.refusal(tls_failures[-1], urls) from error
        raise
    nc.options["max_reconnect_attempts"] = reconnects
    current[0] = nc.connected_url.netloc if nc.connected_url else None
    return nc


# -- the streams ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsRetention:
    """How much of the log the events stream keeps (JetStream limits, oldest dropped first).

    PostgreSQL is the record; the events stream is only how events reach consumers, so it
    may forget. What forgets nothing: the relay finds its place from the stream's last
    message, which limits never drop; an agent that finds its consumer skipped messages
    the stream dropped resyncs from the desired-state snapshot (services/agent/
    continuity.py); integrations that fall further behind than this read the log
    (`convoy events`). `None` is no limit of that kind. A `max_bytes` is reserved by
    JetStream against the account's storage (times the replicas), so it is off by default:
    set it within an instance's `max_storage` (eventstore.natslimits)."""

    max_age: float | None = EVENTS_MAX_AGE
    """Seconds a message is kept."""
    max_bytes: int | None = None
    """Bytes the stream keeps (per replica)."""
    max_msgs: int | None = EVENTS_MAX_MSGS
    """Messages the stream keeps."""

    def __post_init__(self) -> None:
        for name in ("max_age", "max_bytes", "max_msgs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidInput(f"events stream {name} must be positive (or unset: no limit), not {value!r}")

    def limits(self) -> dict[str, Any]:
        """The StreamConfig fields (JetStream's "no limit" is -1 for counts, 0 for age)."""
        return {
            "max_age": self.max_age or 0,
            "max_bytes": self.max_bytes if self.max_bytes is not None else -1,
            "max_msgs": self.max_msgs if self.max_msgs is not None else -1,
        }


def stream_configs(
    instance: str,
    *,
    replicas: int = 1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    retention: EventsRetention | None = None,
) -> list[StreamConfig]:
    """The instance's three streams. The events stream is bounded by `retention`
    (default `EventsRetention()`); observations and dead letters by age."""
    events_limits = (retention or EventsRetention()).limits()
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "retention": RetentionPolicy.LIMITS,
        "discard": DiscardPolicy.OLD,
        "num_replicas": replicas,
        "duplicate_window": duplicate_window,
        "allow_direct": True,
    }
    return [
        StreamConfig(
            name=events_stream(instance),
            description=f"Convoy {instance}: every stored event, in global position order",
            subjects=[events_subjects(instance)],
            **events_limits,
            **common,
        ),
        StreamConfig(
            name=observations_stream(instance),
            description=f"Convoy {instance}: observations reported by agents",
            subjects=[observations_subjects(instance)],
            # Ingest records them in the log within seconds; the stream is only their way
            # there, so it keeps a week (an outage that long is a restore, not a backlog).
            max_age=OBSERVATIONS_MAX_AGE,
            **common,
        ),
        StreamConfig(
            name=dlq_stream(instance),
            description=f"Convoy {instance}: messages no consumer could handle",
            subjects=[dlq_subjects(instance)],
            max_age=DLQ_MAX_AGE,
            **common,
        ),
    ]


async def ensure_streams(
    js: JetStreamContext,
    instance: str,
    *,
    replicas: int = 1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    retention: EventsRetention | None = None,
) -> list[str]:
    """Create the instance's streams, or update them to this configuration (an existing
    events stream gets `retention`'s limits: lowering one drops the oldest messages at
    once). Idempotent. Returns the stream names."""
    names = []
    configs = stream_configs(instance, replicas=replicas, duplicate_window=duplicate_window, retention=retention)
    for config in configs:
        assert config.name is not None
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as error:
            if error.err_code != 10058:  # "stream name already in use with a different configuration"
                raise translate(error, f"creating stream {config.name}") from error
            await guarded(f"updating stream {config.name}", functools.partial(js.update_stream, config))
            log.info("stream updated", stream=config.name)
        except NATS_ERRORS as error:
            raise translate(error, f"creating stream {config.name}") from error
        names.append(config.name)
    return names
