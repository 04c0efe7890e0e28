"""Time travel: `?at=POSITION|TIME` turned into the API's `AsOf`.

Every page takes `at`: a log position (`?at=1234`) or a time (`?at=2026-12-01T10:00:00Z`,
the last event recorded at or before it). The page then reads every query with that
`as_of`, so it shows the log as it stood then; the API validates the value (a position
beyond the head, a time it cannot read) with the same errors as any other caller.
"""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.convoy.v1 import api_pb2
from services.api.errors import invalid


def parse(value: str | None) -> api_pb2.AsOf | None:
    """`None` for the present; otherwise the AsOf `value` names (InvalidArgument if neither
    a positive integer nor an ISO-8601 time)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        position = int(text)
        if not 0 < position < 2**63:
            raise invalid("at", "a position is from 1 to 2^63-1")
        return api_pb2.AsOf(position=position)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise invalid("at", "expected a log position (e.g. 120) or an ISO-8601 time (e.g. 2026-12-01T10:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    as_of = api_pb2.AsOf()
    as_of.time.FromDatetime(when.astimezone(UTC))
    return as_of


def label(as_of: api_pb2.AsOf | None) -> str:
    """The `at` value that names `as_of` again (for links that keep the page in the past)."""
    if as_of is None:
        return ""
    if as_of.HasField("time"):
        return as_of.time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(as_of.position)
