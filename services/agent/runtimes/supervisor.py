"""One supervised local process: started, health-checked, restarted when it crashes.

This is what a container runtime and kubelet do for one container, for the local runtime:
the process runs in its own process group; its output goes to a log file (its tail shows
in the status); its HealthCheck runs every `period` (faster until it first passes) and
`failure_threshold` failures in a row make it unready; when it exits it is restarted after
an exponential backoff, and `crash_loop_after` crashes in a row without ever becoming
ready is a crash loop (it keeps being restarted, at the capped backoff, like Kubernetes'
CrashLoopBackOff).

A process killed by SIGTERM, SIGKILL or SIGINT that the supervisor did not send was stopped
by someone on purpose: that is drift (the live workload no longer matches what was
applied), so it is not restarted behind their back; `revive()` (apply with repair) starts
it again.

A supervisor may start from a process adopted from a crashed agent
(`processes.Adopted`, verified by the runtime before) instead of spawning one: it checks
it at once (a process that was ready is ready again after one passing check, not after a
restart) and supervises it like its own — except that its exit status cannot be known (it
is not our child), so any exit of an adopted process counts as a crash and is restarted.
Each spawned process gets a random token in its environment (`processes.TOKEN_ENV`): with its start
time, it is how the next agent tells this very process from one that reused its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import secrets
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from eventstore.tasks import describe
from schemas.convoy.v1 import resources_pb2
from services.agent import checks
from services.agent.runtimes import processes
from services.agent.runtimes.base import MAX_MESSAGE

log = structlog.get_logger("convoy.agent.supervisor")

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
    log_limit: int = 4 * 1024 * 1024
    """A process's log file is cut back to its last `output_limit`·4 bytes beyond this size."""
    log_trim_interval: float = 30.0


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
    log: Path
    """Where its stdout and stderr go (appended; kept bounded)."""
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
    start: int | None = None
    """The running process's start time (clock ticks since boot), None when none runs."""
    token: str = ""
    """The running process's `processes.TOKEN_ENV` ('' when none runs)."""

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY


class Supervisor:
    """Keeps one ProcessSpec running until `stop()`."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        settings: SupervisorSettings,
        on_change: Callable[[], None],
        adopted: processes.Adopted | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._on_change = on_change
        self._state = ReplicaState.STARTING
        self._process: processes.Service | None = None
        self._identity: tuple[int, str] | None = None
        """(start time, token) of the running process."""
        self._adopted = adopted
        self.adopting = adopted is not None
        """It started from an adopted process (not one it spawned)."""
        self.checked = asyncio.Event()
        """Set once the current process had its first health check (or exited)."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._output = processes.read_tail(spec.log, settings.output_limit)
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
        """Stop the process (SIGTERM, SIGKILL after the grace) and the supervision; its
        log goes with it."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a broken supervision must not wedge every later rollout
                log.error("the supervision of a replica had failed", replica=self.spec.name, error=describe(error))
                if self._process is not None:
                    await processes.stop(self._process, grace=self.settings.stop_grace)
        elif self._adopted is not None:  # adopted but never started: stop it all the same
            adopted, self._adopted = self._adopted, None
            await processes.stop(adopted, grace=self.settings.stop_grace)
            adopted.close()
        self._state = ReplicaState.STOPPED
        with contextlib.suppress(OSError):
            self.spec.log.unlink()

    def snapshot(self) -> ReplicaSnapshot:
        process = self._process
        alive = process is not None and processes.running(process)
        identity = self._identity if alive else None
        return ReplicaSnapshot(
            name=self.spec.name,
            state=self._state,
            pid=process.pid if alive and process is not None else None,
            start=identity[0] if identity else None,
            token=identity[1] if identity else "",
            ports=self.spec.ports,
            crashes=self._crashes,
            restarts=self._restarts,
            crash_looping=self._crashes >= self.settings.crash_loop_after,
            last_exit=self._last_exit,
            output=self._output,
            check_message=self._check_message,
        )

    # ---- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            adopted, self._adopted = self._adopted, None
            if adopted is not None:
                process: processes.Service | None = adopted
                self._identity = (adopted.start, adopted.token)
            else:
                process = await self._spawn()
            if process is not None and await self._supervise(process):
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

    async def _spawn(self) -> asyncio.subprocess.Process | None:
        """Start the program with a fresh token; None (a crash) if it cannot start."""
        spec = self.spec
        token = secrets.token_hex(16)
        env = {**(spec.env if spec.env is not None else os.environ), processes.TOKEN_ENV: token}
        processes.trim_log(spec.log, limit=self.settings.log_limit, keep=self.settings.output_limit * 4)
        try:
            process = await processes.spawn(spec.argv, env=env, cwd=spec.cwd, log=spec.log)
        except (OSError, ValueError, TypeError) as error:  # ValueError: an argument the OS cannot take
            detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            self._note(f"cannot start {spec.argv[0]}: {detail}")
            self.checked.set()
            self._crashed(exit_code=None, was_ready=False)
            return None
        start = processes.process_start_time(process.pid)
        self._identity = (start, token) if start is not None else None
        return process

    async def _supervise(self, process: processes.Service) -> bool:
        """Run one process until it exits or the supervisor stops; True if stopped out of band."""
        adopted = isinstance(process, processes.Adopted)
        self._process = process
        self._state = ReplicaState.STARTING
        self.checked.clear()
        self._changed()
        was_ready = False

        def became_ready() -> None:
            nonlocal was_ready
            was_ready = True

        checker = asyncio.create_task(self._check(became_ready, adopted=adopted), name=f"check {self.spec.name}")
        trimmer = asyncio.create_task(self._trim_log(), name=f"log {self.spec.name}")
        exited = asyncio.create_task(processes.exited(process), name=f"wait {self.spec.name}")
        stopping = asyncio.create_task(self._stopping.wait(), name=f"stop {self.spec.name}")
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (checker, trimmer, exited, stopping):
                task.cancel()
            await processes.stop(process, grace=self.settings.stop_grace)
            await asyncio.gather(checker, trimmer, exited, stopping, return_exceptions=True)
            if isinstance(process, processes.Adopted):
                process.close()
            self.checked.set()
        if self._stopping.is_set():
            return False
        code = process.returncode
        if code is not None and code < 0 and -code in OUT_OF_BAND_SIGNALS:
            self._last_exit = code
            self._state = ReplicaState.STOPPED_OUT_OF_BAND
            self._note(f"[convoy] stopped out of band by signal {-code}")
            self._changed()
            return True
        if adopted:
            self._note("[convoy] exited (an adopted process: its exit code is known only to its parent)")
        else:
            self._note(f"[convoy] exited with code {code}")
        self._crashed(exit_code=code, was_ready=was_ready)
        return False

    def _crashed(self, *, exit_code: int | None, was_ready: bool) -> None:
        self._last_exit = exit_code
        self._crashes = 1 if was_ready else self._crashes + 1
        self._restarts += 1
        self._changed()

    async def _check(self, became_ready: Callable[[], None], *, adopted: bool) -> None:
        """Health-check the running process until cancelled. An adopted process is
        checked at once; one without a check has run long enough already."""
        check = self.spec.health_check
        settings = self.settings
        if check is None:
            if not adopted:
                await asyncio.sleep(settings.ready_without_check_after)
            self._set_state(ReplicaState.READY)
            self._crashes = 0
            became_ready()
            self.checked.set()
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
            self.checked.set()
            ready = self._state is ReplicaState.READY
            await asyncio.sleep(period if ready else min(period, settings.startup_check_period))

    async def _trim_log(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.log_trim_interval)
            processes.trim_log(self.spec.log, limit=settings.log_limit, keep=settings.output_limit * 4)

    def _note(self, line: str) -> None:
        """Add a line to the process's log and refresh the tail the status shows."""
        processes.append_line(self.spec.log, line)
        self._output = processes.read_tail(self.spec.log, self.settings.output_limit)

    def _set_state(self, state: ReplicaState) -> None:
        if state is not self._state:
            self._state = state
            self._changed()

    def _changed(self) -> None:
        self._on_change()


def _seconds(duration: object) -> float:
    return float(getattr(duration, "seconds", 0)) + getattr(duration, "nanos", 0) / 1e9
