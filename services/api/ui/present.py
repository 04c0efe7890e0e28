"""How values read on a page: status words, one-sentence reasons, times.

Pure functions shared by the views, so a status reads the same on every page and in
every cell (and a probe's HTML body never lands in a table: a reason is cut to its first
sentence; the whole text is on the release page and in `convoy why`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from google.protobuf import timestamp_pb2

from schemas.convoy.v1 import convergence_pb2
from services.api import summaries

S = convergence_pb2

STATUS_WORDS: Final[dict[int, str]] = {
    S.INSTANCE_STATUS_UNSPECIFIED: "unknown",
    S.INSTANCE_STATUS_PENDING: "pending",
    S.INSTANCE_STATUS_WAITING_PRECONDITIONS: "waiting for preconditions",
    S.INSTANCE_STATUS_WAITING_APPROVAL: "waiting for approval",
    S.INSTANCE_STATUS_DEPLOYING: "deploying",
    S.INSTANCE_STATUS_VERIFYING: "verifying",
    S.INSTANCE_STATUS_CONVERGED: "converged",
    S.INSTANCE_STATUS_FAILED: "failed",
    S.INSTANCE_STATUS_ROLLING_BACK: "rolling back",
    S.INSTANCE_STATUS_ROLLED_BACK: "rolled back",
    S.INSTANCE_STATUS_PAUSED: "paused",
    S.INSTANCE_STATUS_REPLACED: "replaced",
}

IN_FLIGHT: Final = frozenset(
    {
        S.INSTANCE_STATUS_PENDING,
        S.INSTANCE_STATUS_WAITING_PRECONDITIONS,
        S.INSTANCE_STATUS_WAITING_APPROVAL,
        S.INSTANCE_STATUS_DEPLOYING,
        S.INSTANCE_STATUS_VERIFYING,
        S.INSTANCE_STATUS_ROLLING_BACK,
        S.INSTANCE_STATUS_PAUSED,
    }
)
WAITING_FOR_A_PERSON: Final = frozenset({S.INSTANCE_STATUS_WAITING_APPROVAL})
BAD: Final = frozenset({S.INSTANCE_STATUS_FAILED, S.INSTANCE_STATUS_ROLLED_BACK, S.INSTANCE_STATUS_ROLLING_BACK})

TONE: Final[dict[int, str]] = {
    S.INSTANCE_STATUS_CONVERGED: "ok",
    S.INSTANCE_STATUS_FAILED: "bad",
    S.INSTANCE_STATUS_ROLLED_BACK: "bad",
    S.INSTANCE_STATUS_ROLLING_BACK: "bad",
    S.INSTANCE_STATUS_WAITING_APPROVAL: "wait",
    S.INSTANCE_STATUS_WAITING_PRECONDITIONS: "wait",
    S.INSTANCE_STATUS_PAUSED: "wait",
}

MAX_REASON: Final = 100
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n|<")


def status(value: int) -> str:
    return STATUS_WORDS.get(value, "unknown")


def tone(value: int) -> str:
    return TONE.get(value, "busy" if value in IN_FLIGHT else "none")


def short(reason: str, limit: int = MAX_REASON) -> str:
    """A reason's first sentence (or line), at most `limit` characters: what fits in a cell.
    Anything from a '<' on (an HTML body of a probe answer) is left out."""
    text = " ".join(reason.split("\n", 1)[0].split())
    match = _SENTENCE_END.search(reason.strip())
    if match is not None:
        text = " ".join(reason.strip()[: match.start()].split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def when(ts: timestamp_pb2.Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ts: timestamp_pb2.Timestamp | None, now: datetime) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    seconds = int((now - ts.ToDatetime(tzinfo=UTC)).total_seconds())
    if seconds < 0:
        return "just now"
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60}m ago"
    if seconds < 36 * 3600:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def sentence(text: str) -> str:
    """A `services.api.summaries` sentence as a page shows it: the CLI's pointer to `convoy
    why` becomes an ellipsis (the page links to the release, which shows the whole text)."""
    return text.replace(f" {summaries.DETAIL}", "…")


def seconds_until(ts: timestamp_pb2.Timestamp, now: datetime) -> int | None:
    """Whole seconds from `now` to a set timestamp (None when unset)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return max(0, int((ts.ToDatetime(tzinfo=UTC) - now).total_seconds()))
