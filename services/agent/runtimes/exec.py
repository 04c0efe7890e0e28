"""The exec runtime: services run wherever the runtime's own commands put them.

Prodvana's custom runtimes: a runtime names an `apply`, a `fetch` and a `delete` command
(ExecRuntimeConfig) and Convoy runs them. Each command gets the workload as JSON on stdin
(documents.py: proto3 JSON of the WorkloadSpec plus namespace, application, service,
channel, generation, spec_hash, intent_id) and the same identity in its environment:
CONVOY_RUNTIME, CONVOY_ACTION (apply | fetch | delete), CONVOY_NAMESPACE,
CONVOY_APPLICATION, CONVOY_SERVICE, CONVOY_CHANNEL, CONVOY_VERSION, CONVOY_GENERATION,
CONVOY_SPEC_HASH, CONVOY_INTENT_ID, CONVOY_REPAIR (1 for a repair). What fetch answers is
described in execstatus.py (exit 0 in sync, 2 drifted, or a JSON status; 75 = try later).

Secrets: the stdin document carries a program's `secretEnv` as references only (where the
value lives, never the value). The apply command gets each secret variable NAME, resolved
on the agent's machine, as the environment variable CONVOY_SECRET_NAME (secretenv.py);
fetch and delete get none. A reference that cannot be resolved fails the apply before the
command runs, naming the reference.

Every command runs in its own process group and is killed (SIGTERM, then SIGKILL) at the
configured timeout; timeouts and exit 75 are retried `retries` times with backoff.

What was applied (generation, spec hash, intent) is recorded in `state_dir`, one document
per workload (localstate.StateStore): it is what refuses an older generation and makes a
repeated apply a no-op without running anything, and `live()` lists it — commands need
not keep that bookkeeping, and a listing command is not part of the contract. A fetch
that reports its own `generation`/`spec_hash` overrides the record in statuses.

Progress deadline: a workload that fetch still calls progressing when the spec's progress
deadline (default 10 minutes) has passed since its apply is FAILED with reason
`progress_deadline`, as Kubernetes does for a Deployment. The runtime judges it, where the
workload runs: the planner never fails a target for want of news (a lost bus is not a
failed release). After an agent restart the clock of a workload not yet healthy starts
again.

An agent can die between running apply and recording it. So the apply is written ahead
(`save_pending`); when the same generation comes again and a write-ahead record says it
was being applied, fetch is asked first (with that workload on stdin, as always), and
if it answers in sync at that generation the apply is recorded, not run again. Commands
still running when the agent dies are killed with it (processes.run), so no orphaned
apply races the restarted agent.

The same question is asked when this runtime has no record of the workload at all — an
agent replica that takes over from another (services/agent/agent.py), or one whose
state folder was lost: fetch is run first, and when it reports *its own* `generation`
and `spec_hash` equal to the intent's, in sync, the apply is recorded without running.
Only a fetch that names them counts here (one that does not is trusted only with a
write-ahead record of this very apply); so a fetch that does not report them, with
replicas, re-runs an apply the dead replica had already made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from eventstore.tasks import Backoff
from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes import documents, execstatus, processes, secretenv
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    RuntimeUnavailable,
    same_generation,
    Workload,
    WorkloadKey,
    WorkloadStatus,
    truncate,
)
from services.agent.runtimes.localstate import StateStore

log = structlog.get_logger("convoy.agent.exec")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecSettings:
    name: str
    """The runtime's name (CONVOY_RUNTIME)."""
    config: resources_pb2.ExecRuntimeConfig
    state_dir: Path
    """Where applied workloads are recorded (see the module docstring)."""
    default_timeout: float = 120.0
    """Per command, when the config sets no timeout."""
    retry_backoff: float = 1.0
    retry_backoff_cap: float = 30.0
    kill_grace: float = 5.0
    """A command that timed out gets SIGTERM, then SIGKILL after this long."""
    poll_interval: float = 5.0
    """How often a watch runs fetch."""
    default_progress_deadline: float = 600.0
    """Used when a spec sets no progress deadline (Kubernetes' default)."""
    base_env: Mapping[str, str] | None = None
    """The environment commands start from (None: the agent's own)."""
    cwd: Path | None = None
    convoy_secrets: secretenv.ConvoySecrets | None = None
    """How `convoy:` secret references are resolved (the agent's SecretClient.fetch; None:
    refused). Values reach only the apply command's environment."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    exit_code: int
    output: str


async def open_runtime(
    *, config: resources_pb2.Runtime, state_dir: Path, convoy_secrets: secretenv.ConvoySecrets | None = None
) -> ExecRuntime:
    """The exec runtime an agent runs for a registered runtime (services.agent.selection)."""
    return await ExecRuntime.open(
        settings=ExecSettings(
            name=config.name, config=config.exec, state_dir=state_dir / "exec", convoy_secrets=convoy_secrets
        )
    )


class ExecRuntime:
    """Runs a runtime's apply / fetch / delete commands. `await ExecRuntime.open(settings=…)`."""

    def __init__(self, *, settings: ExecSettings) -> None:
        if not settings.config.apply or not settings.config.fetch or not settings.config.delete:
            raise ValueError(f"exec runtime {settings.name!r} needs apply, fetch and delete commands")
        self.settings = settings
        self.name = settings.name
        self._state = StateStore(settings.state_dir)
        self._applied: dict[WorkloadKey, Workload] = {}
        self._progress: dict[WorkloadKey, tuple[int, str, float]] = {}
        """(generation, spec hash, monotonic deadline) of a workload not yet seen healthy."""
        self._locks: dict[WorkloadKey, asyncio.Lock] = {}
        self._closed = asyncio.Event()
        timeout = settings.config.timeout
        self._timeout = timeout.seconds + timeout.nanos / 1e9 or settings.default_timeout

    @classmethod
    async def open(cls, *, settings: ExecSettings) -> ExecRuntime:
        runtime = cls(settings=settings)
        runtime._applied = {w.key: w for w in runtime._state.load()}
        for workload in runtime._applied.values():  # an agent restart starts their clocks again
            runtime._start_deadline(workload)
        return runtime

    # ---- Runtime -------------------------------------------------------------------------

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        self._check_open()
        key = workload.key
        async with self._lock(key):
            live = self._applied.get(key)
            if live is not None:
                if same_generation(key, live.generation, live.spec_hash, workload):
                    if not repair:
                        return await self._fetch(key, live)
                    workload = live
            self._state.path(key)  # rejects names that cannot be paths before running anything
            if not repair:
                done = await self._applied_before(workload)
                if done is None and live is None:
                    done = await self._applied_elsewhere(workload)
                if done is not None:
                    return done
            self._state.save_pending(workload)
            outcome = await self._run("apply", self.settings.config.apply, workload, repair=repair)
            if outcome.exit_code != 0:
                self._state.clear_pending(key)
                raise ApplyRejected(
                    truncate(f"{key}: apply exited with code {outcome.exit_code}: {outcome.output.strip()}"),
                    reason=FailureReason.COMMAND_EXIT,
                )
            self._record(workload)
            log.info("applied", runtime=self.name, workload=str(key), generation=workload.generation)
            if execstatus.find_json(outcome.output) is not None:  # apply may report a status too
                with contextlib.suppress(execstatus.StatusFormatError):
                    return execstatus.parse_status(key, exit_code=0, output=outcome.output, applied=workload)
            return WorkloadStatus(
                key=key,
                phase=Phase.PROGRESSING,
                generation=workload.generation,
                spec_hash=workload.spec_hash,
                intent_id=workload.intent_id,
                message=truncate(outcome.output.strip()),
                desired_replicas=workload.spec.replicas,
            )

    async def _applied_before(self, workload: Workload) -> WorkloadStatus | None:
        """After a crash between running apply and recording it: if the write-ahead record
        says this very generation was being applied and fetch finds it live and in sync,
        record it and answer its status instead of running apply a second time."""
        key = workload.key
        pending = self._state.pending(key)
        if pending is None or (pending.generation, pending.spec_hash) != (workload.generation, workload.spec_hash):
            return None
        status = await self._fetch(key, workload)
        if (
            status.phase in (Phase.ABSENT, Phase.FAILED)
            or status.drifted
            or (status.generation, status.spec_hash) != (workload.generation, workload.spec_hash)
        ):
            return None
        self._record(workload)
        log.info("found applied before a restart", runtime=self.name, workload=str(key), generation=workload.generation)
        return status

    async def _applied_elsewhere(self, workload: Workload) -> WorkloadStatus | None:
        """With no record of the workload here: if fetch reports this very generation and
        spec hash of its own, live and in sync (applied by another replica, or before the
        state folder was lost), record it instead of applying again."""
        key = workload.key
        outcome = await self._run("fetch", self.settings.config.fetch, workload)
        if outcome.exit_code != execstatus.IN_SYNC:
            return None
        try:
            reported = execstatus.parse_status(key, exit_code=outcome.exit_code, output=outcome.output, applied=None)
        except execstatus.StatusFormatError:
            return None
        if (
            reported.phase in (Phase.ABSENT, Phase.FAILED)
            or reported.drifted
            or (reported.generation, reported.spec_hash) != (workload.generation, workload.spec_hash)
        ):
            return None
        self._record(workload)
        log.info("found applied already (another replica)", runtime=self.name, workload=str(key), generation=workload.generation)
        return execstatus.parse_status(key, exit_code=outcome.exit_code, output=outcome.output, applied=workload)

    def _record(self, workload: Workload) -> None:
        """`workload` is applied: record it (the write-ahead record is done with)."""
        self._state.save(workload)
        self._state.clear_pending(workload.key)
        self._applied[workload.key] = workload
        self._start_deadline(workload)

    def _start_deadline(self, workload: Workload) -> None:
        """The workload's progress deadline runs from its apply, on this machine's clock:
        the verdict on its progress is the runtime's (the planner only waits for it)."""
        deadline = workload.spec.progress_deadline
        seconds = deadline.seconds + deadline.nanos / 1e9 or self.settings.default_progress_deadline
        self._progress[workload.key] = (workload.generation, workload.spec_hash, time.monotonic() + seconds)

    def _judged(self, status: WorkloadStatus, applied: Workload) -> WorkloadStatus:
        """A status that is still progressing past the deadline becomes FAILED
        (PROGRESS_DEADLINE); once healthy, the generation is never judged again."""
        pending = self._progress.get(status.key)
        if pending is None or pending[:2] != (applied.generation, applied.spec_hash):
            return status
        if status.phase is Phase.HEALTHY:
            del self._progress[status.key]
            return status
        if status.phase is not Phase.PROGRESSING or time.monotonic() < pending[2]:
            return status
        seconds = applied.spec.progress_deadline.ToTimedelta().total_seconds() or self.settings.default_progress_deadline
        detail = f": {status.message}" if status.message else ""
        return dataclasses.replace(
            status,
            phase=Phase.FAILED,
            reason=FailureReason.PROGRESS_DEADLINE,
            message=truncate(f"not healthy within the {seconds:g}s progress deadline{detail}"),
        )

    async def status(self, key: WorkloadKey) -> WorkloadStatus:
        self._check_open()
        applied = self._known(key)
        if applied is None:
            return WorkloadStatus(key=key, phase=Phase.ABSENT)
        return self._judged(await self._fetch(key, applied), applied)

    def _known(self, key: WorkloadKey) -> Workload | None:
        """What was applied — or, after a crash before it was recorded, what was being
        applied (fetch, asked with it, says whether it took effect)."""
        found = self._applied.get(key)
        if found is None:
            with contextlib.suppress(ApplyRejected):  # a name that cannot be a path was never applied
                found = self._state.pending(key)
        return found

    async def watch(self, key: WorkloadKey) -> AsyncIterator[WorkloadStatus]:
        last: WorkloadStatus | None = None
        while not self._closed.is_set():
            try:
                status = await self.status(key)
            except RuntimeUnavailable:
                if self._closed.is_set():
                    return
                raise
            if status != last:
                yield status
                last = status
            try:
                await asyncio.wait_for(self._closed.wait(), self.settings.poll_interval)
            except TimeoutError:
                pass

    async def delete(self, key: WorkloadKey) -> None:
        self._check_open()
        async with self._lock(key):
            applied = self._known(key)
            outcome = await self._run("delete", self.settings.config.delete, applied, key=key)
            if outcome.exit_code != 0:
                raise RuntimeUnavailable(
                    truncate(f"{key}: delete exited with code {outcome.exit_code}: {outcome.output.strip()}")
                )
            self._applied.pop(key, None)
            self._progress.pop(key, None)
            try:
                self._state.remove(key)
            except ApplyRejected:
                pass  # a name that cannot be a path was never applied here

    async def live(self) -> list[WorkloadStatus]:
        self._check_open()
        return list(await asyncio.gather(*(self.status(key) for key in sorted(self._applied))))

    async def close(self) -> None:
        """Nothing runs between commands; open watches end."""
        self._closed.set()

    # ---- inside --------------------------------------------------------------------------

    async def _fetch(self, key: WorkloadKey, applied: Workload) -> WorkloadStatus:
        outcome = await self._run("fetch", self.settings.config.fetch, applied)
        if outcome.exit_code not in (execstatus.IN_SYNC, execstatus.DRIFTED):
            return self._failed(applied, f"fetch exited with code {outcome.exit_code}: {outcome.output.strip()}")
        try:
            return execstatus.parse_status(key, exit_code=outcome.exit_code, output=outcome.output, applied=applied)
        except execstatus.StatusFormatError as error:
            return self._failed(applied, f"fetch printed a status Convoy cannot read: {error}")

    def _failed(self, applied: Workload, message: str) -> WorkloadStatus:
        return WorkloadStatus(
            key=applied.key,
            phase=Phase.FAILED,
            generation=applied.generation,
            spec_hash=applied.spec_hash,
            intent_id=applied.intent_id,
            reason=FailureReason.COMMAND_EXIT,
            message=truncate(message),
            desired_replicas=applied.spec.replicas,
        )

    async def _run(
        self,
        action: str,
        argv: Sequence[str],
        workload: Workload | None,
        *,
        key: WorkloadKey | None = None,
        repair: bool = False,
    ) -> _Outcome:
        """Run one command, retrying timeouts and exit 75 with backoff.

        Raises RuntimeUnavailable once retries are spent (ApplyRejected for an apply that
        keeps timing out: that spec does not converge here), ApplyRejected when the
        command cannot be started at all."""
        command = list(argv)
        key = workload.key if workload is not None else key
        assert key is not None
        env = self._environment(action, key, workload, repair=repair)
        if workload is not None and action == "apply":
            # Secret values reach the apply command only as its environment, never in the document.
            env.update(
                await secretenv.for_command(workload, environ=self.settings.base_env, convoy=self.settings.convoy_secrets)
            )
        stdin = (json.dumps(documents.to_document(workload)) if workload is not None else "{}").encode()
        backoff = Backoff(base=self.settings.retry_backoff, cap=self.settings.retry_backoff_cap)
        attempts = max(0, self.settings.config.retries) + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), backoff.next())
            self._check_open()
            try:
                result = await processes.run(
                    command,
                    env=env,
                    stdin=stdin,
                    timeout=self._timeout,
                    cwd=self.settings.cwd,
                    grace=self.settings.kill_grace,
                )
            except OSError as error:
                raise ApplyRejected(
                    f"{self.name}: cannot start {action} command {command[0]!r}: {error.strerror or error}",
                    reason=FailureReason.APPLY_ERROR,
                ) from error
            if result.timed_out:
                problem = f"{action} timed out after {self._timeout:g}s: {result.output.strip()}"
            elif result.exit_code == execstatus.TEMPFAIL:
                problem = f"{action} says the runtime is unavailable (exit 75): {result.output.strip()}"
            else:
                return _Outcome(exit_code=result.exit_code or 0, output=result.output)
            log.warning("exec command will be retried", runtime=self.name, action=action, attempt=attempt + 1)
        message = truncate(f"{key}: {problem} ({attempts} attempts)")
        if action == "apply" and "timed out" in problem:
            raise ApplyRejected(message, reason=FailureReason.TIMEOUT)
        raise RuntimeUnavailable(message)

    def _environment(self, action: str, key: WorkloadKey, workload: Workload | None, *, repair: bool) -> dict[str, str]:
        env = dict(os.environ) if self.settings.base_env is None else dict(self.settings.base_env)
        env.update(
            CONVOY_RUNTIME=self.name,
            CONVOY_ACTION=action,
            CONVOY_NAMESPACE=key.namespace,
            CONVOY_APPLICATION=key.application,
            CONVOY_SERVICE=key.service,
            CONVOY_REPAIR="1" if repair else "0",
        )
        if workload is not None:
            env.update(
                CONVOY_CHANNEL=workload.channel or workload.spec.channel,
                CONVOY_VERSION=workload.spec.version,
                CONVOY_GENERATION=str(workload.generation),
                CONVOY_SPEC_HASH=workload.spec_hash,
                CONVOY_INTENT_ID=workload.intent_id,
            )
        return env

    def _lock(self, key: WorkloadKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeUnavailable(f"the {self.name} runtime is closed")
