"""Per-principal limits on the reads that cost the server most: as-of folds, PlanDeploy
and Watch streams.

A viewer may ask for the log as of any moment (a fold of the log up to there), dry-run
deploys (a planner round trip) or hold Watch streams open; a loop doing that could load
the API for everyone. Each such kind of call gets, per principal, a concurrency cap (how
many may run at once) and a token bucket (how many may start per second, with a burst);
past either, the call is refused at once with `ResourceExhausted`, naming the limit and
saying when to retry (gRPC RESOURCE_EXHAUSTED with `retry-after` metadata, HTTP 429 with
`Retry-After`).

Pure core: `Limiter` holds counters and buckets and reads time from the clock it is
given; the handler layer takes a `Lease` around the call and releases it when the call
(or the stream) ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from eventstore.errors import ConvoyError


class ResourceExhausted(ConvoyError):
    """A per-principal limit was reached. Retry after `retry_after` seconds (or when one
    of your other calls of that kind has ended)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Limit:
    """`concurrent` calls at once; `rate` starts per second with bursts of `burst`
    (rate 0: no rate limit)."""

    concurrent: int
    rate: float = 0.0
    burst: int = 0


WATCH: Final = "Watch streams"
AS_OF: Final = "as-of reads"
PLAN: Final = "PlanDeploy calls"

DEFAULT_LIMITS: Final[dict[str, Limit]] = {
    WATCH: Limit(concurrent=16, rate=2.0, burst=20),
    AS_OF: Limit(concurrent=4, rate=5.0, burst=30),
    PLAN: Limit(concurrent=4, rate=2.0, burst=20),
}
"""A person with a few UI tabs and a CLI `watch` stays far below these; a runaway loop does not."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class Lease:
    """One admitted call; `release()` once when it ends (idempotent)."""

    _limiter: Limiter
    _key: tuple[str, str]
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(slots=True)
class Limiter:
    limits: dict[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    clock: Callable[[], float] = time.monotonic
    _active: dict[tuple[str, str], int] = field(default_factory=dict)
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    def active(self, principal: str, kind: str) -> int:
        """Calls of `kind` by `principal` running now."""
        return self._active.get((principal, kind), 0)

    def acquire(self, principal: str, kind: str) -> Lease:
        """Admit one call, or raise ResourceExhausted naming the limit."""
        limit = self.limits.get(kind)
        key = (principal, kind)
        if limit is None:
            self._active[key] = self._active.get(key, 0) + 1
            return Lease(self, key)
        running = self._active.get(key, 0)
        if running >= limit.concurrent:
            raise ResourceExhausted(
                f"limit reached: at most {limit.concurrent} {kind} at once per principal, and {principal} "
                f"has {running} running; retry when one has ended",
                retry_after=1.0,
            )
        if limit.rate > 0:
            now = self.clock()
            capacity = float(max(limit.burst, 1))
            bucket = self._buckets.get(key) or _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * limit.rate)
            bucket.stamp = now
            self._buckets[key] = bucket
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / limit.rate
                raise ResourceExhausted(
                    f"limit reached: at most {limit.rate:g} {kind} per second per principal (bursts of "
                    f"{int(capacity)}); retry in {math.ceil(wait)}s",
                    retry_after=wait,
                )
            bucket.tokens -= 1.0
        self._active[key] = running + 1
        return Lease(self, key)

    def _release(self, key: tuple[str, str]) -> None:
        left = self._active.get(key, 0) - 1
        if left > 0:
            self._active[key] = left
        else:
            self._active.pop(key, None)
