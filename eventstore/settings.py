"""Where Convoy's servers are and where it keeps its state.

Read from the environment once, at the edge (the CLI), and passed down explicitly:
nothing deeper in the code reads environment variables. With no URLs configured,
Convoy runs its embedded NATS and PostgreSQL in the state folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from eventstore.bus import EVENTS_MAX_AGE, EVENTS_MAX_MSGS, EventsRetention
from eventstore.errors import InvalidInput

_INSTANCE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_DURATION_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_UNLIMITED = "unlimited"
IDEMPOTENCY_TTL = 24 * 3600.0
"""Seconds an idempotency receipt is kept by default: a client must retry within it."""
MIN_IDEMPOTENCY_TTL = 60.0


def default_state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(base) / "convoy"


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    database_url: str | None = None
    nats_url: str | None = None
    instance: str = "convoy"
    """Isolates Convoy instances sharing one NATS and one PostgreSQL: it names the
    database schema and prefixes every NATS subject and stream."""
    nats_replicas: int = 1
    """JetStream replicas of Convoy's streams (3 on a NATS cluster for availability)."""
    nats_ca: Path | None = None
    """CONVOY_NATS_CA: the CA file that verifies NATS's TLS certificate (default: the
    system store; TLS is used whenever the server offers it, eventstore.natstls)."""
    nats_password: str | None = field(default=None, repr=False)
    """CONVOY_NATS_PASSWORD: the instance's control-plane password on an external NATS
    (`convoy instances create` writes it to the instance's env file); with it the control
    plane connects as `natsauth.system_user(instance)`, without it as CONVOY_NATS_URL says."""
    oidc_config: Path | None = None
    """The SSO (OIDC) issuers the API trusts (CONVOY_OIDC_CONFIG; docs/security.md)."""
    events_retention: EventsRetention = field(default_factory=EventsRetention)
    """CONVOY_EVENTS_MAX_AGE / _MAX_BYTES / _MAX_MSGS: what the JetStream events stream
    keeps (PostgreSQL keeps everything); applied to an existing stream at start."""
    idempotency_ttl: float = IDEMPOTENCY_TTL
    """CONVOY_IDEMPOTENCY_TTL: how long an idempotency receipt is kept (a retry must come
    within it; after it the same key is a new command)."""

    snapshot_every: int = 10_000
    """CONVOY_SNAPSHOT_EVERY: the API and the planner snapshot their folded state after
    this many log positions (0: never; eventstore.snapshots)."""

    def __post_init__(self) -> None:
        if not self.idempotency_ttl >= MIN_IDEMPOTENCY_TTL:
            raise InvalidInput(
                f"CONVOY_IDEMPOTENCY_TTL must be at least {MIN_IDEMPOTENCY_TTL:.0f}s (clients retry within it), "
                f"not {self.idempotency_ttl}s"
            )
        if self.snapshot_every < 0:
            raise InvalidInput(f"CONVOY_SNAPSHOT_EVERY must be 0 (off) or a number of events, not {self.snapshot_every}")
        if not 1 <= self.nats_replicas <= 5:
            raise InvalidInput(f"CONVOY_NATS_REPLICAS must be 1 to 5 (JetStream's limit), not {self.nats_replicas}")
        if not _INSTANCE.fullmatch(self.instance):
            raise InvalidInput(
                f"invalid instance name {self.instance!r}: use 1-31 lower-case letters, digits or '_', "
                "starting with a letter"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> Settings:
        settings = cls(
            state_dir=Path(environ["CONVOY_STATE_DIR"]) if environ.get("CONVOY_STATE_DIR") else default_state_dir(environ),
            database_url=environ.get("CONVOY_DATABASE_URL") or None,
            nats_url=environ.get("CONVOY_NATS_URL") or None,
            instance=environ.get("CONVOY_INSTANCE", "convoy"),
            nats_replicas=_replicas(environ.get("CONVOY_NATS_REPLICAS", "1")),
            nats_ca=Path(environ["CONVOY_NATS_CA"]) if environ.get("CONVOY_NATS_CA") else None,
            nats_password=environ.get("CONVOY_NATS_PASSWORD") or None,
            oidc_config=Path(environ["CONVOY_OIDC_CONFIG"]) if environ.get("CONVOY_OIDC_CONFIG") else None,
            events_retention=events_retention(environ),
            idempotency_ttl=_ttl(environ),
            snapshot_every=_whole("CONVOY_SNAPSHOT_EVERY", environ.get("CONVOY_SNAPSHOT_EVERY", "10000")),
        )
        present = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **present) if present else settings  # type: ignore[arg-type]


def _replicas(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"CONVOY_NATS_REPLICAS must be a number of replicas (1, 3 or 5), not {text!r}") from None


def events_retention(environ: Mapping[str, str]) -> EventsRetention:
    """The events stream's limits: CONVOY_EVENTS_MAX_AGE (a duration: `7d`, `36h`, `90m`,
    `3600` seconds), CONVOY_EVENTS_MAX_BYTES (`20GiB`, `500M`, bytes), CONVOY_EVENTS_MAX_MSGS
    (a count); each may be `unlimited`."""
    return EventsRetention(
        max_age=_duration(environ, "CONVOY_EVENTS_MAX_AGE", EVENTS_MAX_AGE, unlimited=True),
        max_bytes=_size(environ, "CONVOY_EVENTS_MAX_BYTES"),
        max_msgs=_count(environ, "CONVOY_EVENTS_MAX_MSGS", EVENTS_MAX_MSGS),
    )


def _ttl(environ: Mapping[str, str]) -> float:
    ttl = _duration(environ, "CONVOY_IDEMPOTENCY_TTL", IDEMPOTENCY_TTL, unlimited=False)
    assert ttl is not None  # `unlimited` is refused
    return ttl


def _duration(environ: Mapping[str, str], name: str, default: float, *, unlimited: bool) -> float | None:
    text = environ.get(name, "").strip().lower()
    if not text:
        return default
    if unlimited and text == _UNLIMITED:
        return None
    match = _DURATION.fullmatch(text)
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else 0.0
    if seconds <= 0:
        also = " or `unlimited`" if unlimited else ""
        raise InvalidInput(f"{name} must be a positive duration such as 7d, 36h, 90m or 3600 (seconds){also}, not {text!r}")
    return seconds


def _size(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text or text.lower() == _UNLIMITED:
        return None
    match = _SIZE.fullmatch(text)
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()] if match else 0
    if size <= 0:
        raise InvalidInput(f"{name} must be a positive size such as 20GiB, 500M or 1048576 (bytes), or `unlimited`, not {text!r}")
    return size


def _count(environ: Mapping[str, str], name: str, default: int) -> int | None:
    text = environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    if text.lower() == _UNLIMITED:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"{name} must be a positive number of messages, or `unlimited`, not {text!r}")
    return int(text)


def _whole(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, not {text!r}") from None


def environ() -> Mapping[str, str]:
    """The process environment; only the CLI entry point calls this."""
    return os.environ
