"""An agent's liveness: fails once the bus has been lost for longer than a threshold.

An agent that cannot reach NATS cannot hear intents or report anything, yet a short
reconnect (a NATS restart, a network blip) is normal and must not get it killed. So the
endpoint answers 200 while connected or disconnected for less than `threshold` seconds,
and 503 after that; a supervisor (Kubernetes liveness probe, systemd) restarts it then.
The clock is injected, so tests decide what time it is.

`bus_check` makes it the `/healthz` check of the agent's `eventstore.opsserver.OpsServer`,
which also answers `/readyz` (the agent consumes its intents and has the bus) and
`/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from eventstore import metrics

Clock = Callable[[], float]


class BusLiveness:
    """Tracks since when the bus connection is down (`connected` is asked each time)."""

    def __init__(self, *, connected: Callable[[], bool], threshold: float, clock: Clock = time.monotonic) -> None:
        self._connected = connected
        self.threshold = threshold
        self._clock = clock
        self._lost_since: float | None = None

    def disconnected(self) -> None:
        if self._lost_since is None:
            self._lost_since = self._clock()

    def reconnected(self) -> None:
        self._lost_since = None

    def lost_for(self) -> float:
        """Seconds the bus has been lost (0 while connected)."""
        if self._connected():
            self._lost_since = None
            return 0.0
        self.disconnected()
        assert self._lost_since is not None
        return self._clock() - self._lost_since

    def healthy(self) -> bool:
        return self.lost_for() <= self.threshold


def bus_check(liveness: BusLiveness) -> metrics.Check:
    """The agent's liveness check for `OpsServer`: fails once the bus is lost too long."""

    def probe() -> tuple[bool, str]:
        lost = liveness.lost_for()
        if lost == 0:
            return True, "connected"
        return lost <= liveness.threshold, f"bus lost for {lost:.1f}s (threshold {liveness.threshold:g}s)"

    return metrics.Check("bus", probe)
