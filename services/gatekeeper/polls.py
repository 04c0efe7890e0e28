"""Change-ticket gates, the pure part: which gates are open, when each polls next, how an
answer is judged and what event records it.

The planner asks for a gate with ExternalApprovalRequested; the gatekeeper polls it and
records every poll as ExternalApprovalPolled (event id from check id and attempt, so a
crash and redelivery never records one poll twice); ExternalApprovalClosed, or a poll
that passed or failed, ends it. `GateBook` folds those events, so a restarted gatekeeper
derives the gates to resume from the log alone. `judge` applies the protection's
expressions to one answer: failure first (terminal), then success, otherwise pending —
and an unreachable endpoint or a 5xx is pending too, never an instant failure: a
ticketing system's bad minute must not fail a release. The timeout is not decided here
but by the planner (services/planner/checks.py), from the recorded polls.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from google.protobuf.message import Message

from schemas.convoy.v1 import events_pb2, resources_pb2
from services import expressions

PENDING = resources_pb2.EXTERNAL_APPROVAL_OUTCOME_PENDING
PASSED = resources_pb2.EXTERNAL_APPROVAL_OUTCOME_PASSED
FAILED = resources_pb2.EXTERNAL_APPROVAL_OUTCOME_FAILED

DEFAULT_INTERVAL = timedelta(minutes=1)
DEFAULT_TIMEOUT = timedelta(hours=1)
DEFAULT_REQUEST_TIMEOUT = timedelta(seconds=10)
MAX_DETAIL = 300
MAX_BODY = 1024 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH")

_NAMESPACE = uuid.UUID("6b8f7f39-4f0e-4f57-9a53-5d3c43f3a1c2")
_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


def outcome_name(outcome: int) -> str:
    return resources_pb2.ExternalApprovalOutcome.Name(outcome).removeprefix("EXTERNAL_APPROVAL_OUTCOME_").lower()


def gate_stream(application: str, service: str, channel: str) -> str:
    return f"gate/{application}/{service}/{channel}"


def poll_event_id(check_id: str, attempt: int) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{check_id}/{attempt}")


def interval_of(approval: resources_pb2.ExternalApproval) -> timedelta:
    return approval.poll_interval.ToTimedelta() if approval.HasField("poll_interval") else DEFAULT_INTERVAL


def timeout_of(approval: resources_pb2.ExternalApproval) -> timedelta:
    return approval.timeout.ToTimedelta() if approval.HasField("timeout") else DEFAULT_TIMEOUT


def request_timeout_of(approval: resources_pb2.ExternalApproval) -> timedelta:
    return approval.request_timeout.ToTimedelta() if approval.HasField("request_timeout") else DEFAULT_REQUEST_TIMEOUT


class TemplateError(ValueError):
    """A placeholder names a value that this gate does not have (a configuration error)."""


# -- which gates are open ------------------------------------------------------------


@dataclass(slots=True)
class Gate:
    request: events_pb2.ExternalApprovalRequested
    attempts: int = 0
    last_polled_at: datetime | None = None
    decided: bool = False
    closed: bool = False

    @property
    def check_id(self) -> str:
        return self.request.check_id

    @property
    def open(self) -> bool:
        return not self.decided and not self.closed

    def next_poll_at(self, now: datetime) -> datetime:
        """At once for a gate never polled, else one interval after the last poll."""
        if self.last_polled_at is None:
            return now
        return self.last_polled_at + interval_of(self.request.approval)


@dataclass(slots=True)
class GateBook:
    gates: dict[str, Gate] = field(default_factory=dict)

    def fold(self, message: Message) -> Gate | None:
        """Apply one gate event; return the gate it touched."""
        if isinstance(message, events_pb2.ExternalApprovalRequested):
            gate = self.gates.get(message.check_id)
            if gate is None:
                gate = self.gates[message.check_id] = Gate(message)
            return gate
        if isinstance(message, events_pb2.ExternalApprovalPolled):
            gate = self.gates.get(message.check_id)
            if gate is None or message.attempt <= gate.attempts:
                return gate
            gate.attempts = message.attempt
            gate.last_polled_at = message.polled_at.ToDatetime(tzinfo=UTC)
            gate.decided = message.outcome in (PASSED, FAILED)
            return gate
        if isinstance(message, events_pb2.ExternalApprovalClosed):
            gate = self.gates.get(message.check_id)
            if gate is not None:
                gate.closed = True
            return gate
        return None

    def open_gates(self) -> list[Gate]:
        return [g for g in self.gates.values() if g.open]


# -- the request ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    body: str
    headers: dict[str, str] = field(repr=False)


def values_of(request: events_pb2.ExternalApprovalRequested) -> dict[str, str]:
    values = {
        "Application": request.application,
        "Service": request.service,
        "Channel": request.channel,
        "Version": request.version,
        "ReleaseId": request.release_id,
    }
    values.update({f"Params.{k}": v for k, v in request.parameters.items()})
    return values


def render(text: str, values: Mapping[str, str], *, encode: bool = False) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join(f"{{{{.{k}}}}}" for k in sorted(values))
            raise TemplateError(f"unknown placeholder {match.group(0)} (known here: {known})")
        return quote(values[name], safe="") if encode else values[name]

    return _PLACEHOLDER.sub(substitute, text)


def build_request(request: events_pb2.ExternalApprovalRequested, secret_headers: Mapping[str, str]) -> Request:
    approval = request.approval
    values = values_of(request)
    headers = {name: render(value, values) for name, value in approval.headers.items()}
    headers.update(secret_headers)
    return Request(
        method=(approval.method or "GET").upper(),
        url=render(approval.url, values, encode=True),
        body=render(approval.body, values),
        headers=headers,
    )


# -- judging an answer ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: int
    http_status: int = 0
    ticket: str = ""
    detail: str = ""


def judge(approval: resources_pb2.ExternalApproval, answer: Answer, *, secrets: Iterable[str] = ()) -> Verdict:
    """Failure first, then success, else pending. A 5xx is pending whatever the
    expressions say: the ticketing system is having trouble, not deciding."""
    try:
        body: Any = json.loads(answer.text) if answer.text else None
    except ValueError:
        body = None
    detail = redact(f"{answer.status}: {answer.text}", secrets)
    ticket = _ticket(approval, answer, body)
    if answer.status >= 500:
        return Verdict(PENDING, answer.status, ticket, detail)
    failure = approval.failure and expressions.parse(approval.failure)
    if failure and failure.holds(status=answer.status, body=body, headers=answer.headers):
        return Verdict(FAILED, answer.status, ticket, detail)
    success = expressions.parse(approval.success)
    if success.holds(status=answer.status, body=body, headers=answer.headers):
        return Verdict(PASSED, answer.status, ticket, detail)
    return Verdict(PENDING, answer.status, ticket, detail)


def unreachable(what: str) -> Verdict:
    """No answer (refused, reset, timed out): keep polling."""
    return Verdict(PENDING, 0, "", what[:MAX_DETAIL])


def misconfigured(what: str, *, secrets: Iterable[str] = ()) -> Verdict:
    """The gate cannot be polled as configured (an unknown placeholder, a secret that
    cannot be resolved and never will): a retry cannot help, so the check fails."""
    return Verdict(FAILED, 0, "", redact(what, secrets))


def _ticket(approval: resources_pb2.ExternalApproval, answer: Answer, body: Any) -> str:
    if not approval.ticket:
        return ""
    value = expressions.parse(approval.ticket).evaluate(status=answer.status, body=body, headers=answer.headers)
    return "" if value is None or isinstance(value, dict | list) else str(value)[:100]


def redact(text: str, secrets: Iterable[str]) -> str:
    """Truncate, and remove every secret value (an endpoint may echo a header back)."""
    for secret in secrets:
        # The whole value, and its credential part alone ("Bearer <token>", "Basic <…>").
        for part in sorted({secret, secret.split()[-1] if secret.split() else ""}, key=len, reverse=True):
            if len(part) >= 4:
                text = text.replace(part, "***")
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def poll_event(gate: Gate, verdict: Verdict, at: datetime) -> events_pb2.ExternalApprovalPolled:
    request = gate.request
    event = events_pb2.ExternalApprovalPolled(
        check_id=request.check_id,
        attempt=gate.attempts + 1,
        outcome=verdict.outcome,  # type: ignore[arg-type]
        http_status=verdict.http_status,
        ticket=verdict.ticket,
        detail=verdict.detail,
        application=request.application,
        service=request.service,
        channel=request.channel,
        release_id=request.release_id,
    )
    event.polled_at.FromDatetime(at)
    return event
