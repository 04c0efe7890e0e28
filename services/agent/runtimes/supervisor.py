"""One supervised local process: started, health-checked, restarted when it crashes.

This is what a container runtime and kubelet do for one container, for the local runtime:
the process runs in its own process group; its output is kept (the tail only); its
HealthCheck runs every `period` (faster until it first passes) and `failure_threshold`
failures in a row make it unready; when it exits it is restarted after an exponential
backoff, and `crash_loop_after` crashes in a row without ever becoming ready is a crash
loop (it keeps being restarted, at the capped backoff, like Kubernetes' CrashLoopBackOff).

A process killed by SIGTERM, SIGKILL or SIGINT that the supervisor did not send was stopped
by someone on purpose: that is drift (the live workload no longer matches what was
applied), so it is not restarted behind their back; `revive()` (apply with repair) starts
it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.convoy.v1 import resources_pb2
from services.agent import checks
from services.agent.runtimes import processes
from services.agent.runtimes.base import MAX_MESSAGE

OUT_OF_BAND_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT})
"""Exit by one of these, not sent by the supervisor: someone stopped the process on purpose."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SupervisorSettings:
    restart_backoff: float = 1.0
    """Delay before the second restart in a row; doubled for each further crash."""
    restart_backoff_cap: float = 60.0
    crash_loop_after: int = 3
    """Crashes in a row without becoming ready that make a crash loop."""
    stop_grace: float = 5.0
    """SIGTERM, then SIGKILL after this many seconds."""
    startup_check_period: float = 0.5
    """Health check interval until the first pass (at most the check's own period)."""
    default_check_period: float = 10.0
    default_check_timeout: float = 1.0
    default_failure_threshold: int = 3
    ready_without_check_after: float = 1.0
    """A program without a health check is ready once it has run this long."""
    output_limit: int = MAX_MESSAGE


def restart_delay(crashes: int, *, base: float, cap: float) -> float:
    """Wait before restarting after `crashes` crashes in a row: 0, base, 2·base, 4·base … cap.

    The first restart is immediate (a one-off crash costs nothing); a crash loop slows down."""
    if crashes <= 1:
        return 0.0
    return min(cap, base * 2.0 ** min(crashes - 2, 64))


class ReplicaState(enum.Enum):
    STARTING = "starting"
    """Running, has not passed its health check yet."""
    READY = "ready"
    UNREADY = "unready"
    """Was ready; has failed its health check `failure_threshold` times in a row since."""
    BACKOFF = "backoff"
    """Exited; waiting to be restarted."""
    STOPPED_OUT_OF_BAND = "stopped_out_of_band"
    """Killed by someone else: drift; not restarted until revived."""
    STOPPED = "stopped"
    """Stopped by the supervisor."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessSpec:
    """A rendered program replica: exactly what to run."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None
    cwd: Path
    ports: Mapping[str, int] = field(default_factory=dict)
    health_check: resources_pb2.HealthCheck | None = None
    check_context: checks.CheckContext = field(default_factory=checks.CheckContext)


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    name: str
    state: ReplicaState
    pid: int | None
    ports: Mapping[str, int]
    crashes: int
    """Crashes in a row since it was last ready."""
    restarts: int
    crash_looping: bool
    last_exit: int | None
    output: str
    check_message: str

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY


class Supervisor:
    """Keeps one ProcessSpec running until `stop()`."""

    def __init__(
        self, spec: ProcessSpec, *, settings: SupervisorSettings, on_change: Callable[[], None]
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._on_change = on_change
        self._state = ReplicaState.STARTING
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._tail = processes.OutputTail(settings.output_limit)
        self._crashes = 0
        self._restarts = 0
        self._last_exit: int | None = None
        self._check_message = ""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._state = ReplicaState.STARTING
            self._task = asyncio.create_task(self._run(), name=f"supervise {self.spec.name}")

    def revive(self) -> bool:
        """Start a process someone stopped out of band again; True if it was stopped."""
        if self._state is not ReplicaState.STOPPED_OUT_OF_BAND or self._stopping.is_set():
            return False
        self._crashes = 0
        self.start()
        self._changed()
        return True

    async def stop(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after the grace) and the supervision."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        self._state = ReplicaState.STOPPED

    def snapshot(self) -> ReplicaSnapshot:
        process = self._process
        return ReplicaSnapshot(
            name=self.spec.name,
            state=self._state,
            pid=process.pid if process is not None and process.returncode is None else None,
            ports=self.spec.ports,
            crashes=self._crashes,
            restarts=self._restarts,
            crash_looping=self._crashes >= self.settings.crash_loop_after,
            last_exit=self._last_exit,
            output=self._tail.text(),
            check_message=self._check_message,
        )

    # ---- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=dict(self.spec.env) if self.spec.env is not None else None,
                    cwd=self.spec.cwd,
                    start_new_session=True,
                )
            except OSError as error:
                self._tail.add(f"cannot start {self.spec.argv[0]}: {error.strerror or error}\n".encode())
                self._crashed(exit_code=None, was_ready=False)
            else:
                if await self._supervise(process):
                    return  # stopped out of band: wait for revive()
            if self._stopping.is_set():
                break
            delay = restart_delay(
                self._crashes, base=self.settings.restart_backoff, cap=self.settings.restart_backoff_cap
            )
            self._state = ReplicaState.BACKOFF
            self._changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self._state = ReplicaState.STOPPED

    async def _supervise(self, process: asyncio.subprocess.Process) -> bool:
        """Run one process until it exits or the supervisor stops; True if stopped out of band."""
        self._process = process
        self._state = ReplicaState.STARTING
        self._changed()
        was_ready = False

        def became_ready() -> None:
            nonlocal was_ready
            was_ready = True

        reader = asyncio.create_task(processes.drain(process.stdout, self._tail), name=f"output {self.spec.name}")
        checker = asyncio.create_task(self._check(became_ready), name=f"check {self.spec.name}")
        exited = asyncio.create_task(processes.exited(process), name=f"wait {self.spec.name}")
        stopping = asyncio.create_task(self._stopping.wait(), name=f"stop {self.spec.name}")
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (checker, exited, stopping):
                task.cancel()
            await processes.stop(process, grace=self.settings.stop_grace)
            await asyncio.gather(checker, exited, stopping, return_exceptions=True)
            await processes.finish_output(process, [reader], grace=1.0)
        if self._stopping.is_set():
            return False
        code = process.returncode
        if code is not None and code < 0 and -code in OUT_OF_BAND_SIGNALS:
            self._last_exit = code
            self._state = ReplicaState.STOPPED_OUT_OF_BAND
            self._tail.add(f"[convoy] stopped out of band by signal {-code}\n".encode())
            self._changed()
            return True
        self._tail.add(f"[convoy] exited with code {code}\n".encode())
        self._crashed(exit_code=code, was_ready=was_ready)
        return False

    def _crashed(self, *, exit_code: int | None, was_ready: bool) -> None:
        self._last_exit = exit_code
        self._crashes = 1 if was_ready else self._crashes + 1
        self._restarts += 1
        self._changed()

    async def _check(self, became_ready: Callable[[], None]) -> None:
        check = self.spec.health_check
        settings = self.settings
        if check is None:
            await asyncio.sleep(settings.ready_without_check_after)
            self._set_state(ReplicaState.READY)
            self._crashes = 0
            became_ready()
            return
        period = _seconds(check.period) or settings.default_check_period
        threshold = check.failure_threshold or settings.default_failure_threshold
        context = self.spec.check_context
        failures = 0
        while True:
            result = await checks.run_check(check, context=context)
            message_changed = result.message != self._check_message
            self._check_message = result.message
            if result.passed:
                failures = 0
                if self._state is not ReplicaState.READY:
                    self._crashes = 0
                    became_ready()
                    self._set_state(ReplicaState.READY)
            else:
                failures += 1
                if self._state is ReplicaState.READY and failures >= threshold:
                    self._set_state(ReplicaState.UNREADY)
                elif message_changed and self._state is not ReplicaState.READY:
                    self._changed()
            ready = self._state is ReplicaState.READY
            await asyncio.sleep(period if ready else min(period, settings.startup_check_period))

    def _set_state(self, state: ReplicaState) -> None:
        if state is not self._state:
            self._state = state
            self._changed()

    def _changed(self) -> None:
        self._on_change()


def _seconds(duration: object) -> float:
    return float(getattr(duration, "seconds", 0)) + getattr(duration, "nanos", 0) / 1e9
