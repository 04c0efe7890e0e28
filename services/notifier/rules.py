"""What is worth telling people, and how to say it: the notifier's pure core.

The planner records every status change of a release in a channel
(InstanceStatusChanged, old → new, with its reason). People want to hear about a few of
them — a release waits for their approval, it failed or was rolled back, it reached a
channel — and integrations (chat, ticketing, paging) want the same facts structured.
`decide` picks the channel-level changes a `Rule` asks for; `payload` renders one as the
JSON a webhook receives. No I/O here: services/notifier/webhook.py delivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from eventstore.types import RecordedEvent
from schemas.convoy.v1 import convergence_pb2, events_pb2

S = convergence_pb2

DEFAULT_STATUSES: Final = frozenset(
    {
        S.INSTANCE_STATUS_WAITING_APPROVAL,
        S.INSTANCE_STATUS_CONVERGED,
        S.INSTANCE_STATUS_FAILED,
        S.INSTANCE_STATUS_ROLLED_BACK,
        S.INSTANCE_STATUS_PAUSED,
    }
)
"""Someone must act (approve, look at a failure, resume) or a release arrived."""

FORMATS: Final = ("json", "slack")


def status_name(value: int) -> str:
    return S.InstanceStatus.Name(value).removeprefix("INSTANCE_STATUS_")


def parse_statuses(text: str) -> frozenset[int]:
    """"waiting_approval,failed" → statuses; ValueError naming the unknown ones."""
    names = [part.strip().upper().removeprefix("INSTANCE_STATUS_") for part in text.split(",") if part.strip()]
    known = {status_name(v): v for v in S.InstanceStatus.values() if v}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"unknown status {', '.join(unknown) or '(none given)'}; statuses: {', '.join(sorted(known)).lower()}"
        )
    return frozenset(known[n] for n in names)


@dataclass(frozen=True, slots=True)
class Rule:
    statuses: frozenset[int] = DEFAULT_STATUSES
    applications: frozenset[str] = frozenset()
    """Empty: every application."""
    channels: frozenset[str] = frozenset()
    """Empty: every channel."""


@dataclass(frozen=True, slots=True)
class Notification:
    event_id: str
    position: int
    recorded_at: str
    application: str
    service: str
    channel: str
    release_id: str
    version: str
    old_status: str
    status: str
    reason: str

    @property
    def text(self) -> str:
        what = f"{self.application}/{self.service} {self.version} in {self.channel}: {self.status}"
        return f"{what} — {self.reason}" if self.reason else what


def decide(rule: Rule, event: RecordedEvent, message: object) -> Notification | None:
    """The notification `rule` wants for this event, if any (channel-level changes only:
    per-runtime changes would repeat it once per runtime)."""
    if not isinstance(message, events_pb2.InstanceStatusChanged) or message.target.runtime:
        return None
    if message.new_status not in rule.statuses or message.new_status == message.old_status:
        return None
    if rule.applications and message.application not in rule.applications:
        return None
    if rule.channels and message.channel not in rule.channels:
        return None
    return Notification(
        event_id=str(event.event_id),
        position=event.position,
        recorded_at=event.recorded_at.isoformat(),
        application=message.application,
        service=message.service,
        channel=message.channel,
        release_id=message.release_id,
        version=message.version,
        old_status=status_name(message.old_status) if message.old_status else "",
        status=status_name(message.new_status),
        reason=message.reason,
    )


def payload(notification: Notification, fmt: str) -> dict[str, Any]:
    """The webhook body: `slack` is an incoming-webhook message; `json` is every field plus
    the same `text` (so chat tools that read only `text` still show something useful)."""
    if fmt == "slack":
        return {"text": notification.text}
    if fmt != "json":
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return {
        "text": notification.text,
        "event_id": notification.event_id,
        "position": notification.position,
        "recorded_at": notification.recorded_at,
        "application": notification.application,
        "service": notification.service,
        "channel": notification.channel,
        "release_id": notification.release_id,
        "version": notification.version,
        "old_status": notification.old_status,
        "status": notification.status,
        "reason": notification.reason,
    }
