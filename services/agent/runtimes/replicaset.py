"""One local workload's processes: the generation it serves and the rollout towards it.

A workload of `replicas` replicas runs, per replica, one supervised process per program.
Rolling to a new generation starts every new replica at once next to the old ones (each
with fresh ports) and stops an old replica only once its replacement is ready, so a new
generation that never becomes ready leaves the old one serving. How the workload is doing
is a pure function of its replicas' snapshots (`assess`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.agent import checks
from services.agent.runtimes import processes, templates
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    Workload,
    WorkloadStatus,
    truncate,
)
from services.agent.runtimes.localstate import ProcessRecord
from services.agent.runtimes.supervisor import (
    ProcessSpec,
    ReplicaSnapshot,
    ReplicaState,
    Supervisor,
    SupervisorSettings,
)

log = structlog.get_logger("convoy.agent.local")


def free_port(host: str) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _texts(argv: list[str], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every string a process is started with, named for an error message."""
    return [(f"argument {i}", a) for i, a in enumerate(argv)] + [
        item for k, v in env.items() for item in ((f"environment variable name {k!r}", k), (f"environment variable {k}", v))
    ]


def render_replica(
    workload: Workload,
    index: int,
    *,
    host: str,
    base_env: Mapping[str, str] | None,
    cwd: Path,
    logs: Path,
    check_timeout: float,
    ports: Callable[[str], int],
    extra_env: Mapping[str, str] | None = None,
    secret_env: Sequence[Mapping[str, str]] = (),
) -> list[ProcessSpec]:
    """The processes of replica `index`: commands, env and checks with placeholders filled;
    each logs to `logs/g<generation>-<name>.log`; `extra_env` goes on top of the env
    Convoy sets; `secret_env[i]` holds program i's resolved secret variables (secretenv.py),
    which go only into the process environment. `ports("<name>/<port name or number>")` gives each declared port its
    local port.

    Raises ApplyRejected when a program cannot run here (no command, unknown placeholder,
    missing executable, a NUL byte in an argument or the environment) — before anything
    starts, so the live generation keeps serving."""
    spec, key = workload.spec, workload.key
    inherited = dict(os.environ) if base_env is None else dict(base_env)  # what children inherit anyway
    result = []
    for position, program in enumerate(spec.programs):
        name = f"{program.name or spec.service}-{index}"
        argv_template = [*program.command, *program.args]
        if not program.command:
            what = f"image {program.image!r}" if program.image else "nothing"
            raise ApplyRejected(f"{key}: program {program.name!r} has no command (the local runtime runs commands, not {what})")
        allocated = {port.name or str(port.port): ports(f"{name}/{port.name or port.port}") for port in program.ports}
        values = templates.workload_values(spec, namespace=key.namespace, ports=allocated, replica=index)
        try:
            argv = templates.render_all(argv_template, values)
            env = {**inherited, **{k: templates.render(v, values) for k, v in program.env.items()}}
        except templates.TemplateError as error:
            raise ApplyRejected(f"{key}: program {program.name!r}: {error}") from None
        if position < len(secret_env):
            env.update(secret_env[position])
        env.update(
            CONVOY_NAMESPACE=key.namespace,
            CONVOY_APPLICATION=key.application,
            CONVOY_SERVICE=key.service,
            CONVOY_CHANNEL=workload.channel or spec.channel,
            CONVOY_VERSION=spec.version,
            CONVOY_GENERATION=str(workload.generation),
            CONVOY_REPLICA=str(index),
        )
        env.update(extra_env or {})
        if "Port" in values:
            env.setdefault("PORT", values["Port"])
        nul = next((what for what, text in _texts(argv, env) if "\0" in text), None)
        if nul is not None:
            raise ApplyRejected(f"{key}: program {program.name!r}: {nul} holds a NUL byte, which no process can take")
        if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
            raise ApplyRejected(f"{key}: program {program.name!r}: {argv[0]!r} is not an executable found on PATH")
        declared = {port.port: local for port, local in zip(program.ports, allocated.values(), strict=True)}
        context = checks.CheckContext(
            values=values, ports=declared, host=host, env=env, cwd=None, default_timeout=check_timeout
        )
        has_check = program.HasField("health_check") and program.health_check.WhichOneof("kind") is not None
        result.append(
            ProcessSpec(
                name=name,
                argv=tuple(argv),
                env=env,
                cwd=cwd,
                log=logs / f"g{workload.generation}-{name}.log",
                ports=allocated,
                health_check=program.health_check if has_check else None,
                check_context=context,
            )
        )
    return result


class Replica:
    """One replica: a supervisor per program."""

    def __init__(self, workload: Workload, index: int, supervisors: list[Supervisor]) -> None:
        self.generation = workload.generation
        self.spec_hash = workload.spec_hash
        self.index = index
        self.supervisors = supervisors

    def records(self) -> list[ProcessRecord]:
        """Its running processes, as the state folder records them."""
        return [
            ProcessRecord(
                pid=s.pid,
                start=s.start,
                token=s.token,
                generation=self.generation,
                spec_hash=self.spec_hash,
                replica=self.index,
                name=s.name,
                ports=dict(s.ports),
            )
            for s in self.snapshots()
            if s.pid is not None and s.start is not None
        ]

    def start(self) -> None:
        for supervisor in self.supervisors:
            supervisor.start()

    def snapshots(self) -> list[ReplicaSnapshot]:
        return [s.snapshot() for s in self.supervisors]

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.snapshots())

    def revive(self) -> bool:
        return any([s.revive() for s in self.supervisors])

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.supervisors))


@dataclass(frozen=True, slots=True)
class Progress:
    """What `assess` needs besides the snapshots."""

    completed: bool
    """Every old replica is gone and every new one was ready once."""
    deadline_passed: bool
    progress_deadline: float
    state_changed: bool
    """The state file was edited by hand."""


def assess(workload: Workload, replicas: Mapping[int, list[ReplicaSnapshot]], progress: Progress) -> WorkloadStatus:
    """The status of a workload from its replicas' snapshots (pure)."""
    desired = workload.spec.replicas
    ready = sum(1 for i in range(desired) if i in replicas and all(s.ready for s in replicas[i]))
    snapshots = [s for i in sorted(replicas) for s in replicas[i]]
    stopped = [s for s in snapshots if s.state is ReplicaState.STOPPED_OUT_OF_BAND]
    looping = [s for s in snapshots if s.crash_looping and s.state is not ReplicaState.READY]
    unready = [s for s in snapshots if s.state is ReplicaState.UNREADY]
    notes = []
    reason = ""
    if progress.completed and ready == desired and not stopped:
        phase = Phase.HEALTHY
    elif looping:
        phase, reason = Phase.FAILED, FailureReason.CRASH_LOOP
        s = looping[0]
        notes.append(f"{s.name} crashed {s.crashes} times in a row (last exit code {s.last_exit}); output:\n{s.output}")
    elif not progress.completed and progress.deadline_passed:
        phase, reason = Phase.FAILED, FailureReason.PROGRESS_DEADLINE
        waiting = [s for s in snapshots if not s.ready]
        detail = "; ".join(f"{s.name}: {s.state.value}, {s.check_message or 'no check result yet'}" for s in waiting)
        notes.append(f"not ready within the {progress.progress_deadline:g}s progress deadline: {detail}")
    elif progress.completed and unready:
        phase, reason = Phase.FAILED, FailureReason.HEALTH_CHECK
        notes.extend(f"{s.name} fails its health check: {s.check_message}" for s in unready)
    else:
        phase = Phase.PROGRESSING
    notes.extend(
        f"{s.name} was stopped out of band (signal {-(s.last_exit or 0)}); apply with repair to restart it"
        for s in stopped
    )
    if progress.state_changed:
        notes.append("the state file was changed by hand; apply with repair to rewrite it")
    summary = f"{ready}/{desired} ready"
    endpoints = endpoints_line(replicas)
    message = "\n".join([f"{summary}; {endpoints}" if endpoints else summary, *notes])
    return WorkloadStatus(
        key=workload.key,
        phase=phase,
        generation=workload.generation,
        spec_hash=workload.spec_hash,
        intent_id=workload.intent_id,
        drifted=bool(stopped) or progress.state_changed,
        reason=reason,
        message=truncate(message),
        ready_replicas=ready,
        desired_replicas=desired,
    )


def endpoints_line(replicas: Mapping[int, list[ReplicaSnapshot]]) -> str:
    """`endpoints: web-0=41234 web-1=41235` — each replica's first port (parse_endpoints)."""
    parts = [
        f"{s.name}={next(iter(s.ports.values()))}" for i in sorted(replicas) for s in replicas[i] if s.ports
    ]
    return "endpoints: " + " ".join(parts) if parts else ""


def parse_endpoints(message: str) -> dict[str, int]:
    """The local port of each replica's first declared port, from a status message."""
    first = message.split("\n", 1)[0]
    _, _, listed = first.partition("endpoints: ")
    found = {}
    for item in listed.split():
        name, _, port = item.rpartition("=")
        if name and port.isdigit():
            found[name] = int(port)
    return found



class LocalWorkload:
    """The replicas of one workload and the rollout to its latest generation."""

    def __init__(self, workload: Workload, *, settings: SupervisorSettings, on_change: Callable[[], None]) -> None:
        self.workload = workload
        self.settings = settings
        self.current: dict[int, Replica] = {}
        self.old: dict[int, Replica] = {}
        self.completed = False
        self.deadline = 0.0
        self.progress_deadline = 0.0
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def status(self, *, state_changed: bool) -> WorkloadStatus:
        replicas = {i: r.snapshots() for i, r in self.current.items()}
        progress = Progress(
            completed=self.completed,
            deadline_passed=time.monotonic() >= self.deadline,
            progress_deadline=self.progress_deadline,
            state_changed=state_changed,
        )
        return assess(self.workload, replicas, progress)

    def pids(self) -> list[int]:
        """The running processes of the current generation (and of old replicas still serving)."""
        replicas = [*self.current.values(), *self.old.values()]
        return sorted(s.pid for r in replicas for s in r.snapshots() if s.pid is not None)

    def records(self) -> list[ProcessRecord]:
        """Every running process (current and old replicas), for the state folder."""
        found = [record for r in (*self.current.values(), *self.old.values()) for record in r.records()]
        return sorted(found, key=lambda r: r.pid)

    async def adopted_checked(self) -> None:
        """Wait until each adopted process had its first health check (each check has
        its timeout, so this ends), and complete a rollout that this made ready."""
        supervisors = [s for r in self.current.values() for s in r.supervisors if s.adopting]
        await asyncio.gather(*(s.checked.wait() for s in supervisors))
        self._complete_if_ready()

    async def roll_to(
        self,
        workload: Workload,
        replicas: list[list[ProcessSpec]],
        *,
        progress_deadline: float,
        adopted: Mapping[str, processes.Adopted] | None = None,
    ) -> None:
        """Start `workload`'s replicas next to what serves now; stop each old one when its
        replacement is ready (the rollout task). A process named in `adopted` (by its
        ProcessSpec name) is supervised as it runs instead of being started."""
        adopted = adopted or {}
        await self._stop_rollout()
        serving: dict[int, Replica] = {}
        discarded: list[Replica] = []
        for i in sorted({*self.current, *self.old}):
            new, old = self.current.get(i), self.old.get(i)
            keep = new if new is not None and new.ready else (old if old is not None else new)
            serving[i] = keep  # type: ignore[assignment]
            discarded.extend(r for r in (new, old) if r is not None and r is not keep)
        await asyncio.gather(*(r.stop() for r in discarded))
        self.old = serving
        self.workload = workload
        self.completed = False
        self.progress_deadline = progress_deadline
        self.deadline = time.monotonic() + progress_deadline
        self._timer = asyncio.get_running_loop().call_later(progress_deadline, self._changed)
        self.current = {
            i: Replica(
                workload,
                i,
                [
                    Supervisor(p, settings=self.settings, on_change=self._changed, adopted=adopted.get(p.name))
                    for p in specs
                ],
            )
            for i, specs in enumerate(replicas)
        }
        for replica in self.current.values():
            replica.start()
        self._task = asyncio.create_task(self._rollout(), name=f"rollout {workload.key} g{workload.generation}")
        self._changed()

    def repair(self) -> bool:
        """Restart the processes someone stopped by hand; True if there were any."""
        return any([r.revive() for r in (*self.current.values(), *self.old.values())])

    async def stop(self) -> None:
        await self._stop_rollout()
        replicas = [*self.current.values(), *self.old.values()]
        self.current, self.old = {}, {}
        await asyncio.gather(*(r.stop() for r in replicas))

    async def _rollout(self) -> None:
        while True:
            self._wake.clear()
            for i, replica in list(self.current.items()):
                if i in self.old and replica.ready:
                    await self.old[i].stop()  # stays listed until stopped: a cancelled rollout's stop() finishes it
                    del self.old[i]
                    self._changed()
            if all(r.ready for r in self.current.values()):
                await asyncio.gather(*(r.stop() for r in self.old.values()))  # scaled down
                self.old.clear()
                self._complete_if_ready()
                return
            await self._wake.wait()

    def _complete_if_ready(self) -> None:
        if self.completed or self.old or not all(r.ready for r in self.current.values()):
            return
        self.completed = True
        self._cancel_timer()
        self._changed()
        log.info("rolled out", workload=str(self.workload.key), generation=self.workload.generation)

    async def _stop_rollout(self) -> None:
        self._cancel_timer()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _changed(self) -> None:
        self._wake.set()
        self._on_change()
