"""Change-ticket gates in the planner: folding the gatekeeper's polls into a check's verdict.

An `external_approval` protection is polled by the gatekeeper (services/gatekeeper), not
by agents: the planner asks with ExternalApprovalRequested and reads every poll back as
ExternalApprovalPolled. A poll that passed passes the check; one that failed fails the
stage, terminally whatever the attachment's failure behaviour (a rejected change does not
become approved by waiting). Pending polls keep it waiting until the timeout.

The timeout is the planner's own, and it measures the gate, not Convoy: it starts at the
first recorded poll (a gatekeeper that is down before it has not started the clock), and
a gap between two polls longer than `stale_after` (the gatekeeper was killed, the bus or
the database was out) extends the deadline by the time no poll was recorded. When the
deadline timer fires while the last poll is stale, the gate does not fail: it waits for
the next poll, which extends the deadline. So Convoy's own outage never eats a ticket's
approval window silently. Time comes only from recorded events: the polls' `polled_at`
(the gatekeeper's clock) and TimerFired. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.convoy.v1 import events_pb2, resources_pb2

PENDING = resources_pb2.EXTERNAL_APPROVAL_OUTCOME_PENDING
PASSED = resources_pb2.EXTERNAL_APPROVAL_OUTCOME_PASSED
FAILED = resources_pb2.EXTERNAL_APPROVAL_OUTCOME_FAILED

DEFAULT_INTERVAL = timedelta(minutes=1)
DEFAULT_TIMEOUT = timedelta(hours=1)
STALE_GRACE = timedelta(seconds=30)


@dataclass(slots=True)
class GateProgress:
    """What the log says about one gate's polls."""

    request: events_pb2.ExternalApprovalRequested
    interval: timedelta
    timeout: timedelta
    attempts: int = 0
    outcome: int = 0
    ticket: str = ""
    detail: str = ""
    http_status: int = 0
    first_poll_at: datetime | None = None
    last_poll_at: datetime | None = None
    deadline: datetime | None = None

    @property
    def stale_after(self) -> timedelta:
        """No poll for this long = the gatekeeper is not polling (not the ticket's fault)."""
        return 2 * self.interval + STALE_GRACE

    @property
    def decided(self) -> bool:
        return self.outcome in (PASSED, FAILED)


def progress_for(request: events_pb2.ExternalApprovalRequested) -> GateProgress:
    approval = request.approval
    interval = approval.poll_interval.ToTimedelta() if approval.HasField("poll_interval") else DEFAULT_INTERVAL
    timeout = approval.timeout.ToTimedelta() if approval.HasField("timeout") else DEFAULT_TIMEOUT
    return GateProgress(request=request, interval=interval, timeout=timeout)


def record_poll(gate: GateProgress, poll: events_pb2.ExternalApprovalPolled, at: datetime) -> bool:
    """Fold one poll; False for a duplicate or a poll after the gate was decided."""
    if gate.decided or poll.attempt <= gate.attempts:
        return False
    if gate.first_poll_at is None or gate.deadline is None:
        gate.first_poll_at = at
        gate.deadline = at + gate.timeout
    elif gate.last_poll_at is not None and at - gate.last_poll_at > gate.stale_after:
        gate.deadline += (at - gate.last_poll_at) - gate.interval
    gate.attempts = poll.attempt
    gate.last_poll_at = at
    gate.outcome = poll.outcome
    gate.http_status = poll.http_status
    gate.detail = poll.detail
    if poll.ticket:
        gate.ticket = poll.ticket
    return True


@dataclass(frozen=True, slots=True)
class GateVerdict:
    passed: bool = False
    failure: str = ""
    waiting: str = ""
    wake_at: datetime | None = None
    """When the planner must look again (the deadline)."""


def evaluate(protection: str, gate: GateProgress, now: datetime) -> GateVerdict:
    ticket = f"ticket {gate.ticket}" if gate.ticket else "the change"
    if gate.outcome == PASSED:
        return GateVerdict(passed=True)
    if gate.outcome == FAILED:
        return GateVerdict(failure=f"protection {protection} failed: {ticket} was not approved ({last_answer(gate)})")
    if gate.deadline is None or gate.last_poll_at is None:
        return GateVerdict(waiting=f"{protection}: waiting for the gatekeeper's first poll of {ticket}")
    if now >= gate.deadline:
        if now - gate.last_poll_at <= gate.stale_after:
            return GateVerdict(
                failure=f"protection {protection} failed: {ticket} not approved within {duration(gate.timeout)} "
                f"({last_answer(gate)})"
            )
        return GateVerdict(
            waiting=f"{protection}: {ticket} pending; no poll recorded since {gate.last_poll_at:%H:%M:%S} UTC "
            "(the gatekeeper is not polling; that time does not count against the timeout)"
        )
    return GateVerdict(
        waiting=f"{protection}: {ticket} pending approval (times out at {gate.deadline:%H:%M:%S} UTC)",
        wake_at=gate.deadline,
    )


def last_answer(gate: GateProgress) -> str:
    if gate.http_status:
        return f"last answer: {gate.detail}"
    return f"last answer: none ({gate.detail})" if gate.detail else "no answer"


def duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "") or "0s"
