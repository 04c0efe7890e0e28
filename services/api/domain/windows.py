"""Deploy windows: when a channel may start deploying.

A `DeployWindow` names days, a start and an end time of day and an IANA time zone. The
planner decides whether "now" (from a recorded timer event) falls inside; this module
only checks that a window means something: known day names, real 24-hour times with the
start before the end (windows do not wrap past midnight — write two windows), and a time
zone that exists in this build's tz database (so the planner can evaluate it).

A channel may list several windows; together they form one precondition — deploying is
allowed inside any of them — and one bypass target, `precondition:deploy_window`.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.validation import duplicates, q

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@functools.cache
def _timezones() -> frozenset[str]:
    # available_timezones() lists real zone files only (not "posixrules", "zone.tab" or
    # directories), so membership is a precise and side-effect-free check.
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def is_timezone(name: str) -> bool:
    return name in _timezones()


def minutes(hhmm: str) -> int | None:
    """Minutes after midnight for "HH:MM", or None if it is not a 24-hour time."""
    match = _TIME.fullmatch(hhmm)
    if match is None:
        return None
    return int(match.group(1)) * 60 + int(match.group(2))


def check_window(problems: Problems, field: str, window: resources_pb2.DeployWindow) -> None:
    for i, day in enumerate(window.days):
        if day not in DAYS:
            problems.add(f"{field}.days[{i}]", f"{q(day)} is not a day: use one of {', '.join(DAYS)}")
    for day in duplicates(window.days):
        problems.add(f"{field}.days", f"{q(day)} is listed twice")
    start = _check_time(problems, f"{field}.start", window.start)
    end = _check_time(problems, f"{field}.end", window.end)
    if start is not None and end is not None and start >= end:
        problems.add(
            f"{field}.end",
            f"the window must end after it starts ({window.start}–{window.end}); a window across "
            "midnight is two windows, e.g. 22:00–23:59 and 00:00–06:00 on the next day",
        )
    if window.timezone and not is_timezone(window.timezone):
        problems.add(
            f"{field}.timezone",
            f"{q(window.timezone)} is not a known IANA time zone (e.g. \"Europe/Berlin\", \"UTC\"; "
            "names are case-sensitive); leave it empty for UTC",
        )


def _check_time(problems: Problems, field: str, value: str) -> int | None:
    if not value:
        problems.add(field, "required: a 24-hour time \"HH:MM\"")
        return None
    result = minutes(value)
    if result is None:
        problems.add(field, f"{q(value)} is not a 24-hour time \"HH:MM\" (00:00 to 23:59)")
    return result
