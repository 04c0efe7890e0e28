"""The agent: one process per runtime that turns intents into runtime calls and reports
what it sees. It only dials out — to NATS, with a credential that lets it read its own
intents and publish its own observations, nothing else.

What runs, each as a named, supervised, stoppable task:

- the intent subscription: binds to the durable consumer `agent-<runtime>` that the
  control plane created (the agent may not create consumers); each intent is decided
  against what was last applied (`intents.decide`), then RECEIVED, applied through the
  Runtime, APPLIED, and a watcher per workload reports PROGRESSING / HEALTHY / FAILED;
  DELETE intents delete and report DELETED; ChecksRequested (re)starts protection checks.
  An intent the runtime cannot carry out is reported FAILED and recorded; one that finds
  the runtime unavailable is parked and retried for its workload (`handle_intent`);
- convergence from a snapshot: at start (and until it gets one) the agent asks the
  control plane for its runtime's desired state, so a fresh agent converges without
  replaying history (`snapshot`); and again whenever the events stream dropped intents
  its consumer had not delivered yet (`continuity`, checked every `continuity_interval`);
- heartbeats on core NATS `convoy.<i>.hb.<runtime>` every `heartbeat_interval` (not stored),
  carrying whether the runtime answers (`availability`: every runtime call counts), and
  sent at once when that changes;
- reconcile every `reconcile_interval`: drift is reported (DRIFTED) and repaired when the
  intent says `repair_drift`;
- `/healthz` (optional), failing once the bus is lost longer than `bus_loss_threshold`;
  the same server answers `/readyz` and `/metrics` (the `metrics` registry given).

One lock serialises decisions and runtime calls, so the consumer, the snapshot and
reconcile never interleave on a workload.

Replicas (`AgentSettings.lease`): several agent processes may serve one runtime; one is
active, the others wait as standby, and none of them does anything above before it holds
the runtime's lease on the bus (eventstore.leases). The choice, rather than replicas
sharing the durable consumer with `max_ack_pending=1` and an apply made idempotent by
intent id: an agent does more than apply what its consumer delivers — it converges from
the desired-state snapshot at start, watches and reports every workload, repairs drift
and runs protection checks — and two processes doing that at once would report twice,
repair twice and supervise the same workloads twice; a shared consumer would also
serialise every runtime's intents behind one unacknowledged message. With a lease the
standby costs one small read a second. Takeover after the active one died takes at most
the lease's TTL (10 s) plus a poll; the new active agent starts as any restarted agent
does — snapshot, then the consumer's redeliveries — and the runtime's own record makes
what the dead one applied a no-op (the exec runtime asks fetch before applying a
generation it has no record of; Kubernetes' server-side apply is idempotent). An active
agent that cannot renew its lease in time stops acting before anyone can take over
(`lost`): its intents wait for the next holder, unacknowledged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from nats.aio.client import Client

from eventstore import bus, leases, natsauth
from eventstore.codec import EventRegistry, convoy_registry
from eventstore.errors import BusRejected, ConvoyError
from eventstore.metrics import Check, Registry
from eventstore.opsserver import OpsServer
from eventstore.subscriptions import Delivery, DurableSubscription, SubscriptionSettings
from eventstore.tasks import Backoff, describe, stop_task
from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent import continuity, intents, observations, protections, reconcile, snapshot
from services.agent.availability import Availability, ObservedRuntime
from services.agent.health import BusLiveness, bus_check
from services.agent.intents import Action
from services.agent.observations import Kind, Subject
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    Runtime,
    RuntimeUnavailable,
    StaleGeneration,
    WorkloadKey,
    WorkloadStatus,
)
from services.agent.state import StateFile

log = structlog.get_logger("convoy.agent")

AGENT_FETCH_TIMEOUT = 30.0
AGENT_PULL_HEARTBEAT = 2.5

RuntimeFactory = Callable[[resources_pb2.Runtime], Awaitable[Runtime]]
IntentListener = Callable[[intents.Intent, datetime], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentSettings:
    instance: str
    runtime: str
    agent_id: str = field(default_factory=lambda: f"agent-{uuid.uuid4().hex[:12]}")
    state_dir: Path | None = None
    """Where the agent keeps its state file (None: nothing survives a restart)."""
    heartbeat_interval: float = 5.0
    reconcile_interval: float = 30.0
    snapshot_timeout: float = 10.0
    snapshot_retry: float = 2.0
    """Longest wait between desired-state requests while the control plane does not answer."""
    continuity_interval: float = 10.0
    """Seconds between checks that the events stream did not drop intents not yet received."""
    health_address: str | None = None
    """"host:port" of /healthz (None: not served)."""
    bus_loss_threshold: float = 30.0
    unavailable_retry: float = 0.5
    unavailable_retry_cap: float = 30.0
    """Backoff of an intent parked while the runtime is unavailable (first wait, longest)."""
    lease: bool = False
    """Hold the runtime's lease (eventstore.leases) before acting, so that replicas of
    this agent take turns: `convoy agent` does; an agent alone in its process (`convoy
    up`'s) need not."""
    lease_poll: float = 1.0
    """How often a standby looks whether the lease is free."""
    subscription: SubscriptionSettings = field(
        default_factory=lambda: SubscriptionSettings(
            max_deliver=natsauth.AGENT_MAX_DELIVER,
            ack_wait=natsauth.AGENT_ACK_WAIT,
            batch=20,
            fetch_timeout=AGENT_FETCH_TIMEOUT,
            heartbeat=AGENT_PULL_HEARTBEAT,
        )
    )
    """An agent's pull request lives `AGENT_FETCH_TIMEOUT` and asks for an idle heartbeat
    every `AGENT_PULL_HEARTBEAT` (not the 5 s / 1 s of the plane's own consumers): an idle
    agent then costs nats-server and itself 0.43 messages a second instead of 1.2 — with
    a thousand agents, 430 instead of 1,200 (bench/agents.py, docs/performance.md). A pull
    request lost with a restarted server is noticed after 3 missed heartbeats, 7.5 s."""


@dataclass(slots=True)
class AgentStats:
    intents: int = 0
    applied: int = 0
    deleted: int = 0
    duplicates: int = 0
    stale: int = 0
    failed: int = 0
    drifted: int = 0
    repaired: int = 0
    snapshots: int = 0
    malformed: int = 0
    parked: int = 0
    """Intents that found the runtime unavailable and waited for it."""


class LeaseLost(ConvoyError):
    """This replica's lease ran out: it must not touch the runtime any more. Retryable
    by the next holder (the intent stays unacknowledged)."""

    retryable = True


class IntentSubscription(DurableSubscription):
    """A DurableSubscription that only binds: the consumer must exist already (the
    control plane makes it with the runtime's intent filter)."""

    async def ensure_consumer(self) -> None:
        try:
            await bus.guarded(
                f"looking up consumer {self.durable}", lambda: self._js.consumer_info(self.stream, self.durable)
            )
        except BusRejected as error:
            raise BusRejected(
                f"consumer {self.durable} on {self.stream} is missing or not ours ({error}); the control plane "
                "creates it when the runtime is registered — is the runtime registered, and is `convoy up` running?",
                code=error.code,
            ) from error


class Agent:
    """The agent of one runtime. `await start()` … `await stop()`; `ready` is set once it
    has a runtime and consumes its intents."""

    def __init__(
        self,
        *,
        nc: Client,
        settings: AgentSettings,
        runtime: Runtime | None = None,
        runtime_factory: RuntimeFactory | None = None,
        registry: EventRegistry | None = None,
        on_intent: IntentListener | None = None,
        metrics: Registry | None = None,
    ) -> None:
        if (runtime is None) == (runtime_factory is None):
            raise ValueError("give the agent either a runtime or a runtime_factory")
        self._nc = nc
        self.settings = settings
        self.name = settings.runtime
        self.availability = Availability(runtime=settings.runtime)
        self.runtime: Runtime | None = ObservedRuntime(runtime, self.availability) if runtime is not None else None
        self._owns_runtime = runtime is None
        self._factory = runtime_factory
        self._registry = registry or convoy_registry()
        self._on_intent = on_intent
        self._file = StateFile.in_folder(settings.state_dir, settings.runtime)
        self._applied, self._config = self._file.load()
        self._reporter = observations.Reporter(nc, instance=settings.instance, runtime=settings.runtime)
        self._protections = protections.ProtectionRunner(
            report=self._report_check, spec_of=self._spec_of, extra_values=self._probe_values, status_of=self._status_of
        )
        self.liveness = BusLiveness(connected=lambda: nc.is_connected, threshold=settings.bus_loss_threshold)
        self._health = (
            OpsServer(
                address=settings.health_address,
                registry=metrics or Registry(),
                checks=self.checks(),
                liveness=[bus_check(self.liveness)],
                details=self._details,
            )
            if settings.health_address
            else None
        )
        self._subscription = IntentSubscription(
            nc,
            instance=settings.instance,
            stream=bus.events_stream(settings.instance),
            durable=natsauth.agent_consumer(settings.runtime),
            filter_subjects=bus.intent_filter(settings.instance, settings.runtime),
            handler=self._on_delivery,
            settings=settings.subscription,
        )
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: dict[WorkloadKey, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._drifting: dict[WorkloadKey, int] = {}
        self._parked: dict[WorkloadKey, tuple[intents.Intent, asyncio.Task[None]]] = {}
        """Per workload, the intent waiting for an unavailable runtime, and its retry task."""
        self._episodes: dict[WorkloadKey, int] = {}
        self.continuity = continuity.Continuity()
        self.ready = asyncio.Event()
        self.stats = AgentStats()
        self.lease = (
            leases.Lease(
                nc, instance=settings.instance, runtime=settings.runtime, holder=settings.agent_id,
                poll=settings.lease_poll,
            )
            if settings.lease
            else None
        )
        self.standby_for = ""
        """While standby: the replica that holds the lease."""
        self.leading = asyncio.Event()
        """Set once this replica may act (at once without a lease)."""
        self.lost = asyncio.Event()
        """Set when the lease was lost: stop this agent (`convoy agent` exits)."""

    @property
    def health_port(self) -> int:
        return self._health.port if self._health is not None else 0

    @property
    def applied(self) -> intents.Applied:
        return self._applied

    # -- lifecycle -----------------------------------------------------------------------

    async def _probe_values(self, key: WorkloadKey) -> Mapping[str, str]:
        """Template values the runtime knows for a target (where a local workload listens)."""
        values_of = getattr(self.runtime, "probe_values", None)
        if self.runtime is None or values_of is None:
            return {}
        try:
            result: Mapping[str, str] = values_of(await self.runtime.status(key))
        except ConvoyError:
            return {}
        return result

    async def _status_of(self, key: WorkloadKey) -> WorkloadStatus | None:
        """The runtime's status of a target for protection checks (None: no runtime yet, or it cannot tell)."""
        if self.runtime is None:
            return None
        try:
            return await self.runtime.status(key)
        except ConvoyError:
            return None

    async def start(self) -> None:
        if self._health is not None:
            await self._health.start()
        self._spawn(self._main(), "main")

    async def stop(self) -> None:
        await self._subscription.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await stop_task(task)
        await self._protections.stop()
        for key in list(self._watchers):
            await stop_task(self._watchers.pop(key))
        for task in list(self._retiring):
            await stop_task(task)
        parked, self._parked = self._parked, {}
        for _, task in parked.values():
            await stop_task(task)
        if self.lease is not None:
            await self.lease.release()  # a standby takes over at its next poll
        if self._health is not None:
            await self._health.stop()
        if self._owns_runtime and self.runtime is not None:
            await self.runtime.close()
        log.info("agent stopped", runtime=self.name)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"convoy-agent:{self.name}:{what}"))  # type: ignore[arg-type]

    async def _lead(self) -> None:
        """Hold the lease before anything else (returns at once without one)."""
        if self.lease is not None:
            def waiting(holder: str) -> None:
                self.standby_for = holder
                log.info("agent standby: another replica holds the runtime's lease", runtime=self.name, holder=holder)

            await self.lease.acquire(waiting=waiting)
            self.standby_for = ""
            self._spawn(self._keep_lease(), "lease")
        self.leading.set()
        self._spawn(self._heartbeats(), "heartbeat")

    async def _keep_lease(self) -> None:
        assert self.lease is not None
        await self.lease.keep()
        log.error("agent stops acting: its lease is lost (another replica may hold it now)", runtime=self.name)
        self.lost.set()

    def _check_lease(self) -> None:
        """Before touching the runtime: only the lease's holder may."""
        if self.lease is not None and not self.lease.held():
            raise LeaseLost(f"the agent of runtime {self.name!r} no longer holds its lease; the next holder goes on")

    async def _main(self) -> None:
        """Hold the lease, get a runtime, settle the state file against it, converge, then consume."""
        await self._lead()
        first: snapshot.Snapshot | None = None
        if self.runtime is None and self._config is None:
            first = await self._snapshot_until_answered()
            self._remember_config(first.config)
        elif self.runtime is None:
            first = await self._try_snapshot()
            self._remember_config(first.config if first else None)
        else:
            first = await self._try_snapshot()
        if self.runtime is None:
            assert self._factory is not None and self._config is not None
            self.runtime = ObservedRuntime(await self._factory(self._config), self.availability)
        live = await self._retry_runtime(self.runtime.live, "listing live workloads")
        forget = reconcile.settle(self._applied.applied(), live)
        if forget:
            log.info("forgetting workloads that are not live any more", runtime=self.name, count=len(forget))
            self._save(self._applied.without(forget))
        for key, intent in self._applied.applied().items():
            self._watch(key, intent)
        for key, checks in self._applied.checks.items():
            await self._protections.replace(key, checks)
        if first is not None:
            await self.converge(first)
        else:
            self._spawn(self._converge_when_answered(), "snapshot")
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                await self._subscription.start()
                break
            except ConvoyError as error:
                log.warning("cannot bind to the intent consumer yet", runtime=self.name, error=str(error))
                await asyncio.sleep(backoff.next())
        self._spawn(self._reconcile_loop(), "reconcile")
        self._spawn(self._watch_continuity(), "continuity")
        self.ready.set()
        log.info("agent ready", runtime=self.name, workloads=len(self._applied.applied()))

    # -- snapshots -----------------------------------------------------------------------

    async def _try_snapshot(self) -> snapshot.Snapshot | None:
        try:
            return await snapshot.fetch(
                self._nc,
                instance=self.settings.instance,
                runtime=self.name,
                registry=self._registry,
                timeout=self.settings.snapshot_timeout,
            )
        except ConvoyError as error:
            log.warning("no desired state from the control plane yet", runtime=self.name, error=str(error))
            return None

    async def _snapshot_until_answered(self) -> snapshot.Snapshot:
        backoff = Backoff(base=0.1, cap=self.settings.snapshot_retry)
        while True:
            answer = await self._try_snapshot()
            if answer is not None and answer.config is not None:
                return answer
            if answer is not None:
                log.warning("runtime not registered with the control plane yet", runtime=self.name)
            await asyncio.sleep(backoff.next())

    async def _watch_continuity(self) -> None:
        await continuity.watch(
            self.continuity,
            bounds=lambda: snapshot.bounds(self._nc, instance=self.settings.instance, runtime=self.name),
            resync=self._resync,
            interval=self.settings.continuity_interval,
            runtime=self.name,
        )

    async def _resync(self) -> bool:
        """Converge to a fresh snapshot (the stream dropped intents we may not have had)."""
        answer = await self._try_snapshot()
        if answer is None:
            return False
        await self.converge(answer)
        return True

    async def _converge_when_answered(self) -> None:
        await self.converge(await self._snapshot_until_answered())

    async def converge(self, desired: snapshot.Snapshot) -> None:
        """Apply the latest intent and checks of every target (duplicates are no-ops).
        A deleted target's DELETE is carried out like any intent, also where nothing seems
        to be left: an agent killed between deleting and recording it restarts not
        knowing, and the DELETE it records refuses older generations still on their way;
        its observations carry deterministic ids, so reporting a deletion again records
        nothing new."""
        self.stats.snapshots += 1
        for intent in desired.intents:
            await self.handle_intent(intent)
        for checks in desired.checks:
            await self.handle_checks(checks)
        self.continuity.snapshot(desired.stream_last)
        log.info("converged to the desired state", runtime=self.name, intents=len(desired.intents), position=desired.position)

    def _remember_config(self, config: resources_pb2.Runtime | None) -> None:
        if config is not None and config != self._config:
            self._config = config
            self._file.save(self._applied, self._config)

    # -- intents -------------------------------------------------------------------------

    async def _on_delivery(self, delivery: Delivery) -> None:
        self.continuity.delivered(delivery.stream_sequence)
        try:
            item = intents.decode(self._registry, delivery.headers, delivery.data, runtime=self.name)
        except ConvoyError as error:
            # Redelivering a malformed or foreign message cannot help: acknowledge it.
            self.stats.malformed += 1
            log.error("ignoring a message that is not an intent for us", subject=delivery.subject, error=str(error))
            return
        with structlog.contextvars.bound_contextvars(correlation_id=delivery.headers.get(bus.H_CORRELATION_ID)):
            if isinstance(item, intents.Intent):
                if self._on_intent is not None:
                    self._on_intent(item, delivery.event().recorded_at)
                await self.handle_intent(item)
            else:
                await self.handle_checks(item)

    async def handle_intent(self, intent: intents.Intent) -> None:
        """Decide, apply and report one intent. Raises nothing for the runtime's sake:

        - a runtime that is unavailable (a cluster's API down, an exec command's exit 75)
          has the intent parked: retried for its workload with backoff until it is carried
          out or a newer intent of the workload supersedes it, while other workloads' intents
          go on (a redelivery would dead-letter it after a few attempts, and no later intent
          of the workload would be applied meanwhile);
        - a runtime that cannot carry the intent out (it refuses the spec, or fails in a way
          it does not explain) is reported FAILED — an observation the planner acts on —
          and the intent recorded, so the workload's later intents go through.
        """
        with structlog.contextvars.bound_contextvars(intent_id=intent.intent_id):
            try:
                await self._handle_intent(intent)
            except RuntimeUnavailable as error:
                self._park(intent, error)
                return
        self._unpark(intent)

    def _park(self, intent: intents.Intent, error: RuntimeUnavailable) -> None:
        waiting = self._parked.get(intent.key)
        if waiting is not None and waiting[0].generation >= intent.generation and not waiting[1].done():
            return  # that one (or a newer one) is retried already
        self.stats.parked += 1
        log.warning(
            "runtime unavailable; the intent waits for it", workload=str(intent.key), generation=intent.generation,
            error=str(error),
        )
        task = asyncio.create_task(self._retry_parked(intent), name=f"convoy-agent:{self.name}:parked:{intent.key}")
        self._parked[intent.key] = (intent, task)

    def _unpark(self, done: intents.Intent) -> None:
        """`done` was carried out (or decided): an older parked intent of its workload is moot."""
        waiting = self._parked.get(done.key)
        if waiting is not None and waiting[0].generation <= done.generation:
            del self._parked[done.key]  # its task finds itself superseded and ends

    async def _retry_parked(self, intent: intents.Intent) -> None:
        backoff = Backoff(base=self.settings.unavailable_retry, cap=self.settings.unavailable_retry_cap)
        while True:
            await asyncio.sleep(backoff.next())
            waiting = self._parked.get(intent.key)
            if waiting is None or waiting[0] is not intent:
                return  # superseded by a newer intent of the workload
            try:
                with structlog.contextvars.bound_contextvars(intent_id=intent.intent_id):
                    await self._handle_intent(intent)
            except RuntimeUnavailable:
                continue
            except Exception as error:  # noqa: BLE001 - supervised: a bus problem; the snapshot recovers it
                log.error("a parked intent failed", workload=str(intent.key), error=describe(error))
                continue
            if self._parked.get(intent.key, (None,))[0] is intent:
                del self._parked[intent.key]
            log.info("parked intent carried out", workload=str(intent.key), generation=intent.generation)
            return

    async def _handle_intent(self, intent: intents.Intent) -> None:
        assert self.runtime is not None
        self.stats.intents += 1
        async with self._lock:
            self._check_lease()
            action = intents.decide(self._applied.last(intent.key), intent)
            if action is Action.DUPLICATE:
                self.stats.duplicates += 1
                return
            if action is Action.STALE:
                self.stats.stale += 1
                log.info("ignoring an older generation", workload=str(intent.key), generation=intent.generation)
                return
            about = _subject(intent)
            await self._publish(about, Kind.OBSERVATION_KIND_RECEIVED)
            if action is Action.CONFLICT:
                self.stats.failed += 1
                message = f"generation {intent.generation} was already applied with another spec or action"
                await self._publish(about, Kind.OBSERVATION_KIND_FAILED, reason="apply_error", message=message)
                return
            if action is Action.DELETE:
                await self._stop_watch(intent.key)
                try:
                    await self.runtime.delete(intent.key)
                except RuntimeUnavailable:
                    raise
                except Exception as error:  # noqa: BLE001 - a runtime that cannot delete: reported, recorded
                    await self._cannot_carry_out(intent, about, "delete", error)
                    return
                self.stats.deleted += 1
                await self._publish(about, Kind.OBSERVATION_KIND_DELETED)
                self._save(self._applied.with_intent(intent))
                return
            try:
                status = await self.runtime.apply(intent.workload())
            except StaleGeneration as error:
                self.stats.stale += 1
                log.info("the runtime runs a newer generation; dropping the intent", error=str(error))
                return
            except ApplyRejected as rejected:
                self.stats.failed += 1
                await self._publish(about, Kind.OBSERVATION_KIND_FAILED, reason=rejected.reason, message=str(rejected))
                self._save(self._applied.with_intent(intent))
                return
            except RuntimeUnavailable:
                raise
            except Exception as error:  # noqa: BLE001 - a runtime that cannot apply: reported, recorded
                await self._cannot_carry_out(intent, about, "apply", error)
                return
            self.stats.applied += 1
            await self._publish(
                about,
                Kind.OBSERVATION_KIND_APPLIED,
                ready_replicas=status.ready_replicas,
                desired_replicas=status.desired_replicas,
            )
            # Recorded only once reported: a crash in between re-handles the intent, the
            # runtime finds the generation applied, and the report (same id) goes out again.
            self._save(self._applied.with_intent(intent))
            self._watch(intent.key, intent.message)

    async def _cannot_carry_out(self, intent: intents.Intent, about: Subject, action: str, error: Exception) -> None:
        """The runtime failed the intent in a way it did not explain (a bug, or a value it
        cannot use): FAILED with the error, and the intent recorded — retrying the same
        intent would fail the same way, and every later intent of the workload with it."""
        self.stats.failed += 1
        log.error("the runtime could not carry out an intent", workload=str(intent.key), action=action, error=describe(error))
        message = f"the runtime could not {action} generation {intent.generation}: {type(error).__name__}: {error}"
        await self._publish(about, Kind.OBSERVATION_KIND_FAILED, reason=FailureReason.APPLY_ERROR, message=message)
        self._save(self._applied.with_intent(intent))

    async def handle_checks(self, checks: intents.Checks) -> None:
        async with self._lock:
            self._save(self._applied.with_checks(checks))
        await self._protections.replace(checks.key, checks.message)

    # -- watching ------------------------------------------------------------------------

    def _watch(self, key: WorkloadKey, intent: intents.events_pb2.IntentIssued) -> None:
        old = self._watchers.pop(key, None)
        if old is not None:
            old.cancel()  # it ends at its next await; the new watcher reports from now on
            self._retiring.add(old)
            old.add_done_callback(self._retiring.discard)
        self._watchers[key] = asyncio.create_task(
            self._follow(key, intent), name=f"convoy-agent:{self.name}:watch:{key}"
        )

    async def _stop_watch(self, key: WorkloadKey) -> None:
        await stop_task(self._watchers.pop(key, None))

    async def _follow(self, key: WorkloadKey, intent: intents.events_pb2.IntentIssued) -> None:
        """Report each change of the workload's rollout for this intent's generation."""
        assert self.runtime is not None
        about = _subject(intents.Intent(key, intent))
        last: tuple[int, int, int, str] | None = None
        transitions = 0
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                async for status in self.runtime.watch(key):
                    backoff.reset()
                    if status.generation != intent.generation or status.spec_hash != intent.spec_hash:
                        continue
                    kind = _kind_of(status)
                    if kind is None:
                        continue
                    seen = (kind, status.ready_replicas, status.desired_replicas, status.reason)
                    if seen == last:
                        continue
                    if last is None or last[0] != kind:
                        transitions += 1
                    last = seen
                    discriminator = f"{transitions}"
                    if kind == Kind.OBSERVATION_KIND_PROGRESSING:
                        discriminator += f":{status.ready_replicas}/{status.desired_replicas}"
                    await self._publish(
                        about,
                        kind,
                        discriminator=discriminator,
                        reason=status.reason,
                        message=status.message,
                        ready_replicas=status.ready_replicas,
                        desired_replicas=status.desired_replicas,
                    )
                return  # the runtime closed
            except RuntimeUnavailable as error:
                log.info("watch interrupted; watching again", workload=str(key), error=str(error))
            except Exception as error:  # noqa: BLE001 - supervised: a broken watch restarts
                log.error("watch failed; watching again", workload=str(key), error=describe(error))
            await asyncio.sleep(backoff.next())

    # -- reconcile -----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await self.reconcile()
            except RuntimeUnavailable as error:
                log.warning("reconcile skipped: runtime unavailable", error=str(error))
            except Exception as error:  # noqa: BLE001 - supervised: try again next round
                log.error("reconcile failed", error=describe(error))

    async def reconcile(self) -> list[reconcile.Drift]:
        """Compare live workloads with what was applied; report and (if asked) repair."""
        assert self.runtime is not None
        async with self._lock:
            live = await self.runtime.live()
            drifts = reconcile.compare(self._applied.intents, live)
            current = {d.key for d in drifts}
            for key in list(self._drifting):
                if key not in current:
                    del self._drifting[key]
            for drift in drifts:
                await self._handle_drift(drift)
            return drifts

    async def _handle_drift(self, drift: reconcile.Drift) -> None:
        assert self.runtime is not None
        key, intent = drift.key, drift.intent
        if key not in self._drifting:
            self._episodes[key] = self._episodes.get(key, 0) + 1
            self._drifting[key] = self._episodes[key]
            self.stats.drifted += 1
            await self._publish(
                _subject(intents.Intent(key, intent)),
                Kind.OBSERVATION_KIND_DRIFTED,
                discriminator=str(self._drifting[key]),
                message=drift.why,
            )
        if not intent.repair_drift:
            return
        self._check_lease()
        if intent.action == convergence_pb2.INTENT_ACTION_DELETE:
            await self.runtime.delete(key)
        else:
            try:
                await self.runtime.apply(intents.Intent(key, intent).workload(), repair=True)
            except (StaleGeneration, ApplyRejected) as error:
                log.warning("drift not repaired", workload=str(key), error=str(error))
                return
            self._watch(key, intent)
        self.stats.repaired += 1
        log.info("drift repaired", workload=str(key), why=drift.why)

    # -- reporting -----------------------------------------------------------------------

    async def _publish(self, about: Subject, kind: int, **fields: object) -> None:
        await self._reporter.publish(observations.build(self.name, about, kind, **fields))  # type: ignore[arg-type]

    async def _report_check(self, key: WorkloadKey, request: convergence_pb2.CheckRequest, result: object, slot: str) -> None:
        last = self._applied.last(key)
        about = _subject(intents.Intent(key, last)) if last is not None else Subject(key)
        kind = Kind.OBSERVATION_KIND_CHECK_PASSED if getattr(result, "passed") else Kind.OBSERVATION_KIND_CHECK_FAILED
        await self._publish(
            about,
            kind,
            check_id=request.check_id,
            discriminator=slot,
            reason=getattr(result, "reason", ""),
            message=getattr(result, "message", ""),
        )

    def _spec_of(self, key: WorkloadKey) -> convergence_pb2.WorkloadSpec | None:
        last = self._applied.last(key)
        return last.spec if last is not None else None

    async def _heartbeats(self) -> None:
        subject = natsauth.heartbeat_subject(self.settings.instance, self.name)
        while True:
            beat = convergence_pb2.Heartbeat(
                runtime=self.name, agent_id=self.settings.agent_id, workloads=len(self._applied.applied())
            )
            beat.sent_at.FromDatetime(datetime.now(UTC))
            beat.interval.FromTimedelta(timedelta(seconds=self.settings.heartbeat_interval))
            self.availability.stamp(beat)
            try:
                await bus.guarded("heartbeat", lambda: self._nc.publish(subject, beat.SerializeToString()))
            except ConvoyError as error:
                log.debug("heartbeat not sent", error=str(error))
            await self.availability.changed(self.settings.heartbeat_interval)

    # -- helpers -------------------------------------------------------------------------

    def _save(self, applied: intents.Applied) -> None:
        self._applied = applied
        self._file.save(applied, self._config)

    async def _retry_runtime(self, call: Callable[[], Awaitable[list[WorkloadStatus]]], what: str) -> list[WorkloadStatus]:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                return await call()
            except RuntimeUnavailable as error:
                log.warning("runtime unavailable", what=what, error=str(error))
                await asyncio.sleep(backoff.next())

    def checks(self) -> list[Check]:
        """Readiness: consuming intents with a runtime, and connected to the bus."""
        def agent() -> tuple[bool, str]:
            if self.lost.is_set():
                return False, "stopping: the runtime's lease is lost"
            if self.ready.is_set():
                return True, "consuming intents"
            if self.standby_for:
                return False, f"standby: replica {self.standby_for} holds the runtime's lease"
            return False, "starting"

        return [
            Check("agent", agent),
            Check("nats", lambda: (self._nc.is_connected, "connected" if self._nc.is_connected else "not connected")),
        ]

    def _details(self) -> dict[str, object]:
        return {
            "runtime": self.name,
            "ready": self.ready.is_set(),
            "standby_for": self.standby_for,
            "workloads": len(self._applied.applied()),
            "consuming": self._subscription.running,
            "runtime_available": self.availability.available,
        }


def _subject(intent: intents.Intent) -> Subject:
    return Subject(
        key=intent.key,
        intent_id=intent.intent_id,
        generation=intent.generation,
        spec_hash=intent.spec_hash,
        channel=intent.channel,
    )


def _kind_of(status: WorkloadStatus) -> int | None:
    if status.drifted:
        return None  # reconcile reports drift
    if status.phase is Phase.PROGRESSING:
        return Kind.OBSERVATION_KIND_PROGRESSING
    if status.phase is Phase.HEALTHY:
        return Kind.OBSERVATION_KIND_HEALTHY
    if status.phase is Phase.FAILED:
        return Kind.OBSERVATION_KIND_FAILED
    return None
