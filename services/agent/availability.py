"""Whether the agent's runtime answers, as every heartbeat tells the control plane.

An agent whose runtime is unavailable (an unreachable cluster, a failing exec command)
retries — intents are redelivered, reconcile and watches try again — but without this
only its log would say so. `Availability` is that one piece of state: available or not,
since when, and the last error (cut to `ERROR_LIMIT` bytes). `ObservedRuntime` keeps it:
it wraps the agent's Runtime, so every call the agent makes — intents, watches,
reconcile, the start-up listing, probes — counts: an answer (a refusal such as
`ApplyRejected` is an answer too) means available, `RuntimeUnavailable` means not.
The heartbeat loop waits on `changed()` as well as on its interval, so a change goes out
at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import (
    ApplyRejected,
    Runtime,
    RuntimeUnavailable,
    StaleGeneration,
    Workload,
    WorkloadKey,
    WorkloadStatus,
)

log = structlog.get_logger("convoy.agent.availability")

ERROR_LIMIT: Final = 1024
"""UTF-8 bytes of the last error a heartbeat carries."""

Beat = convergence_pb2.Heartbeat
UNSPECIFIED: Final = Beat.RUNTIME_AVAILABILITY_UNSPECIFIED
AVAILABLE: Final = Beat.RUNTIME_AVAILABILITY_AVAILABLE
UNAVAILABLE: Final = Beat.RUNTIME_AVAILABILITY_UNAVAILABLE


def truncate(text: str, limit: int = ERROR_LIMIT) -> str:
    """`text` in at most `limit` UTF-8 bytes (cut ones end in "…")."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode("utf-8", "ignore") + "…"


class Availability:
    """The runtime's availability as the agent last found it. Not known until the
    first call; `answered()` / `failed(error)` after each one."""

    def __init__(self, *, runtime: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.runtime = runtime
        self._clock = clock
        self.state: int = UNSPECIFIED
        self.since: datetime | None = None
        """When it became unavailable (None while available or not known)."""
        self.error = ""
        self._changed = asyncio.Event()

    @property
    def available(self) -> bool:
        return self.state != UNAVAILABLE

    def answered(self) -> None:
        if self.state == AVAILABLE:
            return
        if self.state == UNAVAILABLE:
            assert self.since is not None
            log.info("runtime available again", runtime=self.runtime, unavailable_for=str(self._clock() - self.since))
        self.state, self.since, self.error = AVAILABLE, None, ""
        self._changed.set()

    def failed(self, error: BaseException | str) -> None:
        self.error = truncate(str(error) or type(error).__name__)
        if self.state == UNAVAILABLE:
            return  # the same outage: keep its start, note the latest error
        self.state, self.since = UNAVAILABLE, self._clock()
        log.warning("runtime unavailable; the agent retries", runtime=self.runtime, error=self.error)
        self._changed.set()

    async def changed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change; whether there was one."""
        if not self._changed.is_set():
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                return False
        self._changed.clear()
        return True

    def stamp(self, beat: convergence_pb2.Heartbeat) -> None:
        """Write the availability into a heartbeat."""
        beat.runtime_availability = self.state  # type: ignore[assignment]
        if self.state == UNAVAILABLE and self.since is not None:
            beat.runtime_unavailable_since.FromDatetime(self.since)
            beat.runtime_error = self.error


class ObservedRuntime:
    """A Runtime whose every call tells `availability` whether the runtime answered.
    Anything else the wrapped runtime offers (`probe_values`, test steering) passes
    through."""

    def __init__(self, runtime: Runtime, availability: Availability) -> None:
        self.inner = runtime
        self.name = runtime.name
        self._availability = availability

    async def _call(self, call: Any) -> Any:
        try:
            result = await call
        except RuntimeUnavailable as error:
            self._availability.failed(error)
            raise
        except (ApplyRejected, StaleGeneration):
            self._availability.answered()  # a refusal is an answer
            raise
        self._availability.answered()
        return result

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        status: WorkloadStatus = await self._call(self.inner.apply(workload, repair=repair))
        return status

    async def status(self, key: WorkloadKey) -> WorkloadStatus:
        result: WorkloadStatus = await self._call(self.inner.status(key))
        return result

    async def watch(self, key: WorkloadKey) -> AsyncIterator[WorkloadStatus]:
        statuses = self.inner.watch(key)
        try:
            async for status in statuses:
                self._availability.answered()
                yield status
        except RuntimeUnavailable as error:
            self._availability.failed(error)
            raise
        finally:
            close = getattr(statuses, "aclose", None)
            if close is not None:
                await close()

    async def delete(self, key: WorkloadKey) -> None:
        await self._call(self.inner.delete(key))

    async def live(self) -> list[WorkloadStatus]:
        result: list[WorkloadStatus] = await self._call(self.inner.live())
        return result

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _runtime_check(runtime: ObservedRuntime) -> Runtime:
    return runtime  # mypy: ObservedRuntime satisfies the Protocol
