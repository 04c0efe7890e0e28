"""Deploy-window arithmetic: is a moment inside a channel's windows, and when do they
next open?

The planner never reads a clock: "now" is the recorded time of the event it is handling
(or the firing time recorded in a TimerFired), so this module takes the moment as an
argument. When a channel waits for a window, the planner schedules a timer at
`next_opening`, and the recorded TimerFired wakes it. Windows were validated by the API
(known days, HH:MM with start < end, a known time zone).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Final

from schemas.convoy.v1 import resources_pb2

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@cache
def _zone(name: str) -> zoneinfo.ZoneInfo | type[UTC]:
    if not name or name == "UTC":
        return UTC  # type: ignore[return-value]
    return zoneinfo.ZoneInfo(name)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _contains(window: resources_pb2.DeployWindow, moment: datetime) -> bool:
    local = moment.astimezone(_zone(window.timezone))  # type: ignore[arg-type]
    if window.days and DAYS[local.weekday()] not in window.days:
        return False
    minute = local.hour * 60 + local.minute
    return _minutes(window.start) <= minute < _minutes(window.end)


def is_open(windows: Sequence[resources_pb2.DeployWindow], moment: datetime) -> bool:
    """Inside any of the windows (no windows = always open)."""
    return not windows or any(_contains(w, moment) for w in windows)


def next_opening(windows: Sequence[resources_pb2.DeployWindow], moment: datetime) -> datetime | None:
    """The first moment after `moment` at which a window opens (UTC), or None if none
    ever does (cannot happen for validated windows)."""
    best: datetime | None = None
    for window in windows:
        zone = _zone(window.timezone)
        local = moment.astimezone(zone)  # type: ignore[arg-type]
        start = _minutes(window.start)
        for offset in range(8):
            day = (local + timedelta(days=offset)).date()
            if window.days and DAYS[day.weekday()] not in window.days:
                continue
            opening = datetime(day.year, day.month, day.day, start // 60, start % 60, tzinfo=zone)  # type: ignore[arg-type]
            if opening > moment:
                opening = opening.astimezone(UTC)
                if best is None or opening < best:
                    best = opening
                break
    return best


def describe(windows: Sequence[resources_pb2.DeployWindow]) -> str:
    parts = []
    for w in windows:
        days = ",".join(w.days) if w.days else "daily"
        parts.append(f"{days} {w.start}-{w.end} {w.timezone or 'UTC'}")
    return "; ".join(parts)
