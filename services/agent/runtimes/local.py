"""The local process runtime: services run as supervised processes on this machine.

It is what the embedded default uses (`convoy up` with no configuration), so the whole
product works on a laptop. A runtime of `kind: exec` whose apply command is `convoy-local`
(`is_builtin`) is this runtime, run inside the agent instead of as a command.

Each replica of each program is a supervised process (supervisor.py) with its env and a
free local port for each declared port (`{{.Port}}` is the first, `{{.Ports.<name>}}` any);
the ports show in the status message (`endpoints: web-0=41234 …`, see `parse_endpoints`)
so probes can reach them. Rollouts start new replicas next to the old and stop an old one
once its replacement is ready (replicaset.py).

State: what is applied (spec, generation, hash, intent) is kept in `state_dir`
(localstate.py), so generations, `live()` and stale-intent refusal survive restarts.

Restarts: a clean stop (close(): `convoy down`, Ctrl-C, SIGTERM) stops the processes, and
the next start runs the recorded specs again. A crash of the agent (kill -9, OOM, a
crashed `convoy up`) must not cost the workloads anything — a fault of Convoy's own is
never charged to a release — so the processes outlive it (processes.spawn: own session,
no death signal, output to log files rather than pipes) and the next agent adopts them
(`open`): a process recorded as running the applied generation, proven to be that very
process (its start time in /proc and the token in its environment, so a reused pid is
never taken for it), keeps running on its ports and is supervised as before — its exit
seen through a pidfd, a crash restarted, stopped on delete or rollout — and reports
HEALTHY after one passing health check, without a restart. What does not match (an older
generation, a workload whose state is gone, a process never recorded) is killed as an
orphan; a replica whose process died meanwhile is started again.

Drift, for processes: a replica someone stopped by hand (SIGTERM/SIGKILL/SIGINT the
supervisor did not send) is not restarted behind their back — the workload is reported
drifted until `apply(repair=True)` restarts it — and a state file edited by hand is drift
that repair rewrites. A process that crashes on its own is restarted (that is not drift).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes import processes, replicaset, secretenv
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    RuntimeUnavailable,
    same_generation,
    Workload,
    WorkloadKey,
    WorkloadStatus,
)
from services.agent.runtimes.localstate import STATE_ENV, ProcessRecord, StateStore
from services.agent.runtimes.replicaset import LocalWorkload, parse_endpoints
from services.agent.runtimes.supervisor import SupervisorSettings

log = structlog.get_logger("convoy.agent.local")

BUILTIN_COMMAND = "convoy-local"

__all__ = ["BUILTIN_COMMAND", "LocalRuntime", "LocalSettings", "is_builtin", "parse_endpoints", "probe_values"]


def is_builtin(config: resources_pb2.ExecRuntimeConfig) -> bool:
    """An exec runtime whose apply command is `convoy-local` is the built-in local runtime."""
    return bool(config.apply) and config.apply[0] == BUILTIN_COMMAND


def probe_values(status: WorkloadStatus) -> dict[str, str]:
    """Template values a protection probe of a local workload may use: `{{.Port}}` is the
    first replica's first port (from the status message), `{{.Ports.<replica>}}` each one."""
    endpoints = parse_endpoints(status.message)
    if not endpoints:
        return {}
    return {"Port": str(next(iter(endpoints.values()))), **{f"Ports.{k}": str(v) for k, v in endpoints.items()}}


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalSettings:
    state_dir: Path
    """Where applied specs (and process work directories) are kept across agent restarts."""
    name: str = "local"
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    default_progress_deadline: float = 600.0
    """Used when a spec sets no progress deadline (Kubernetes' default)."""
    watch_interval: float = 1.0
    """How often a watch looks again without being told (state files edited by hand)."""
    check_timeout: float = 1.0
    """Health check timeout when the check sets none."""
    host: str = "127.0.0.1"
    """Where processes listen and health checks connect."""
    base_env: Mapping[str, str] | None = None
    """The environment processes start from (None: the agent's own); program env goes on top."""
    convoy_secrets: secretenv.ConvoySecrets | None = None
    """How `convoy:` secret references are resolved (the agent's SecretClient.fetch; None:
    refused). Values go only to the processes' environment, never into the state files."""


class LocalRuntime:
    """Runs workloads as local processes. Build it with `await LocalRuntime.open(settings=…)`."""

    @staticmethod
    def probe_values(status: WorkloadStatus) -> dict[str, str]:
        """`{{.Port}}` and friends for protection probes (see the module function)."""
        return probe_values(status)

    def __init__(self, *, settings: LocalSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._state = StateStore(settings.state_dir)
        self._workloads: dict[WorkloadKey, LocalWorkload] = {}
        self._errors: dict[WorkloadKey, str] = {}
        self._saved_pids: dict[WorkloadKey, list[ProcessRecord]] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed = False

    @classmethod
    async def open(cls, *, settings: LocalSettings) -> LocalRuntime:
        """A runtime running every workload recorded in `settings.state_dir`: adopting the
        processes a crashed agent left running, starting the rest. It returns once each
        adopted process had its first health check, so a workload that kept running
        reports HEALTHY from the start."""
        runtime = cls(settings=settings)
        await runtime._restore()
        return runtime

    async def _restore(self) -> None:
        workloads = self._state.load()
        recorded = self._state.load_pids()
        adopted: dict[WorkloadKey, dict[str, tuple[ProcessRecord, processes.Adopted]]] = {}
        for workload in workloads:
            for record in recorded.get(workload.key, []):
                if not record.serves(workload) or record.start is None:
                    continue
                handle = processes.adopt(record.pid, start=record.start, token=record.token)
                if handle is not None:
                    adopted.setdefault(workload.key, {})[record.name] = (record, handle)
        self._state.kill_orphans(recorded, keep={h.pid for found in adopted.values() for _, h in found.values()})
        for workload in workloads:
            mine = adopted.get(workload.key, {})
            try:
                await self._start(workload, existing=None, adopted=mine)
            except ApplyRejected as rejected:
                # Recorded, but cannot run any more (an executable went away): report it.
                for _, handle in mine.values():
                    await processes.stop(handle, grace=self.settings.supervisor.stop_grace)
                    handle.close()
                self._workloads[workload.key] = self._new_workload(workload)
                self._errors[workload.key] = str(rejected)
            log.info(
                "restored workload", workload=str(workload.key), generation=workload.generation,
                adopted=sorted(h.pid for _, h in mine.values()),
            )
        await asyncio.gather(*(self._workloads[key].adopted_checked() for key in adopted if key in self._workloads))

    # ---- Runtime -------------------------------------------------------------------------

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        async with self._lock:
            self._check_open()
            key = workload.key
            existing = self._workloads.get(key)
            if existing is not None:
                live = existing.workload
                if same_generation(key, live.generation, live.spec_hash, workload):
                    if repair and key in self._errors:  # restored but could not start: try again
                        await self._start(live, existing=existing)
                    elif repair:
                        if self._state.changed(key):
                            self._state.save(live)
                        if existing.repair():
                            log.info("restarted processes stopped out of band", workload=str(key))
                        self._notify()
                    return self._status(key)
            self._state.path(key)  # rejects names that cannot be paths before anything starts
            await self._start(workload, existing=existing)
            return self._status(key)

    async def status(self, key: WorkloadKey) -> WorkloadStatus:
        self._check_open()
        return self._status(key)

    async def watch(self, key: WorkloadKey) -> AsyncIterator[WorkloadStatus]:
        last: WorkloadStatus | None = None
        while not self._closed:
            changed = self._changed
            status = self._status(key)
            if status != last:
                yield status
                last = status
            if self._closed:
                return
            try:
                await asyncio.wait_for(changed.wait(), self.settings.watch_interval)
            except TimeoutError:
                pass

    async def delete(self, key: WorkloadKey) -> None:
        async with self._lock:
            self._check_open()
            local = self._workloads.pop(key, None)
            self._errors.pop(key, None)
            self._saved_pids.pop(key, None)
            if local is not None:
                await local.stop()
            try:
                self._state.remove(key)
            except ApplyRejected:
                pass  # a name that cannot be a path was never applied here
            self._notify()

    async def live(self) -> list[WorkloadStatus]:
        self._check_open()
        return [self._status(key) for key in sorted(self._workloads)]

    async def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after the grace); keep the state folder."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        async with self._lock:
            workloads = list(self._workloads.values())
            self._workloads.clear()
            await asyncio.gather(*(w.stop() for w in workloads))
            for key in list(self._saved_pids):
                self._state.save_pids(key, [])
        self._notify()

    # ---- for probes and tests ------------------------------------------------------------

    def pids(self, key: WorkloadKey) -> list[int]:
        """The process ids running `key` now (each leads its own process group)."""
        local = self._workloads.get(key)
        return local.pids() if local is not None else []

    def endpoints(self, key: WorkloadKey) -> dict[str, int]:
        """Each current replica's first port: {"web-0": 41234, …}."""
        return parse_endpoints(self._status(key).message)

    # ---- inside --------------------------------------------------------------------------

    async def _start(
        self,
        workload: Workload,
        *,
        existing: LocalWorkload | None,
        adopted: Mapping[str, tuple[ProcessRecord, processes.Adopted]] | None = None,
    ) -> None:
        """Render every replica (raising ApplyRejected before touching anything), record
        the spec, then roll to it. An adopted process (by its name) keeps the ports it was
        recorded with; every other port is a free one."""
        settings = self.settings
        adopted = adopted or {}
        workdir = self._state.workdir(workload.key)
        kept = {f"{name}/{port}": value for name, (record, _) in adopted.items() for port, value in record.ports.items()}
        secrets = await secretenv.resolve_all(workload, environ=settings.base_env, convoy=settings.convoy_secrets)
        replicas = [
            replicaset.render_replica(
                workload,
                index,
                host=settings.host,
                base_env=settings.base_env,
                cwd=workdir,
                logs=self._state.logdir(workload.key),
                check_timeout=settings.check_timeout,
                ports=lambda label: kept.get(label) or replicaset.free_port(settings.host),
                extra_env={STATE_ENV: self._state.marker},
                secret_env=secrets,
            )
            for index in range(workload.spec.replicas)
        ]
        self._state.save(workload)
        local = existing or self._new_workload(workload)
        self._workloads[workload.key] = local
        self._errors.pop(workload.key, None)
        deadline = workload.spec.progress_deadline
        seconds = deadline.seconds + deadline.nanos / 1e9 or settings.default_progress_deadline
        await local.roll_to(
            workload, replicas, progress_deadline=seconds, adopted={name: handle for name, (_, handle) in adopted.items()}
        )
        log.info("applying", workload=str(workload.key), generation=workload.generation, replicas=len(replicas))

    def _new_workload(self, workload: Workload) -> LocalWorkload:
        key = workload.key

        def changed() -> None:
            self._record_pids(key)
            self._notify()

        return LocalWorkload(workload, settings=self.settings.supervisor, on_change=changed)

    def _status(self, key: WorkloadKey) -> WorkloadStatus:
        local = self._workloads.get(key)
        if local is None:
            return WorkloadStatus(key=key, phase=Phase.ABSENT)
        status = local.status(state_changed=self._state.changed(key))
        error = self._errors.get(key)
        if error:
            return WorkloadStatus(
                key=key,
                phase=Phase.FAILED,
                generation=status.generation,
                spec_hash=status.spec_hash,
                intent_id=status.intent_id,
                reason=FailureReason.APPLY_ERROR,
                message=f"cannot start again after an agent restart: {error}",
                desired_replicas=status.desired_replicas,
            )
        return status

    def _record_pids(self, key: WorkloadKey) -> None:
        local = self._workloads.get(key)
        if local is None:
            return
        records = local.records()
        if self._saved_pids.get(key) != records:
            self._saved_pids[key] = records
            self._state.save_pids(key, records)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeUnavailable(f"the {self.name} runtime is closed")
