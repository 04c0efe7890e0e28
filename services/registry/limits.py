"""How fast to talk to a registry: a client-side request spacing (`requests_per_second`),
and how long to wait after a 429 or a failure.

Registries throttle by quota (Docker Hub: `ratelimit-limit: 100;w=21600`, `ratelimit-remaining`)
and answer 429 with `Retry-After` (seconds or an HTTP date). Discovery polls many
repositories, so the client spaces its own requests and honours what the registry asks,
instead of finding the limit by hitting it. Clock and sleep are injected: tests are instant
and exact.
"""

from __future__ import annotations

import email.utils
from collections.abc import Awaitable, Callable, Mapping

MAX_BACKOFF = 30.0
BASE_BACKOFF = 0.5


class RequestSpacing:
    """A token bucket of depth one: request k+1 starts no earlier than 1/rate after request k.
    `hold(until)` defers every request until a clock value (a quota that is used up)."""

    def __init__(
        self,
        *,
        rate: float | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[object]],
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"requests_per_second must be positive, not {rate}")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")

    async def acquire(self) -> None:
        now = self._clock()
        at = max(now, self._next)
        # Reserve the slot before waiting, so concurrent callers queue behind each other.
        self._next = at + self._interval
        if at > now:
            await self._sleep(at - now)

    def hold(self, until: float) -> None:
        self._next = max(self._next, until)


def _first_number(text: str) -> float | None:
    head = text.split(";", 1)[0].split(",", 1)[0].strip()
    try:
        value = float(head)
    except ValueError:
        return None
    return value if value >= 0 else None


def retry_after(headers: Mapping[str, str], *, wall_now: float) -> float | None:
    """Seconds the registry asks us to wait: `Retry-After` (delta seconds or an HTTP date,
    measured against the answer's own `Date` when it has one, so clock skew does not matter),
    else `ratelimit-reset`/`x-ratelimit-reset` (delta seconds, or a Unix time when it is
    large). None when the answer does not say."""
    reference = wall_now
    date = headers.get("Date")
    if date:
        try:
            reference = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    value = headers.get("Retry-After")
    if value is not None:
        seconds = _first_number(value)
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(value.strip()).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None:
            return max(0.0, when - reference)
    for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
        value = headers.get(name)
        if value is None:
            continue
        seconds = _first_number(value)
        if seconds is None:
            continue
        if seconds > 1_000_000_000:  # a Unix time (GitHub style), not a delta
            return max(0.0, seconds - reference)
        return seconds
    return None


def quota_exhausted(headers: Mapping[str, str]) -> bool:
    """The answer says no requests are left in the window (`ratelimit-remaining: 0;w=21600`)."""
    for name in ("RateLimit-Remaining", "X-RateLimit-Remaining"):
        value = headers.get(name)
        if value is not None:
            remaining = _first_number(value)
            return remaining is not None and remaining < 1
    return False


def backoff(attempt: int, jitter: float) -> float:
    """Delay before retry number `attempt` (1, 2, …) after a failure: exponential, capped,
    scaled by `jitter` in [0, 1) into [50 %, 100 %] so many clients do not retry in step."""
    return min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (attempt - 1)) * (0.5 + jitter / 2)
