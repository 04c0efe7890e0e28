"""Operations wiring: what each process exposes to Prometheus and to probes.

`OpsServer` (eventstore.opsserver) answers `/metrics`, `/healthz` and
`/readyz` for `convoy planner` and for `convoy up` as a whole; agents serve the same
server, and the API's REST listener the same three paths.

The `instrument_*` functions register, in one explicitly passed `Registry`, collectors
that copy each component's own counters at scrape time, and sample what needs I/O
(consumer pending counts, planner and relay lag) then. Metric names:

- `convoy_events_appended_total{process}` (`CountingStore`: events written, retries of
  the same ids not counted);
- `convoy_relay_published_total`, `convoy_relay_duplicates_total`,
  `convoy_relay_failures_total`, `convoy_relay_leader`, `convoy_relay_checkpoint_position`,
  `convoy_relay_lag_events` (committed, not yet known to be on the bus, from PostgreSQL),
  `convoy_relay_backlog_events` (the same as the leader knows it, with no query),
  `convoy_relay_last_publish_timestamp_seconds`, `convoy_relay_failing_since_timestamp_seconds`
  (0 while its attempts work);
- `convoy_probe_ok{probe}`, `convoy_probe_duration_seconds{probe}`,
  `convoy_probe_failing_since_timestamp_seconds{probe}` (the readiness probes of the bus
  and the store, eventstore.probes);
- `convoy_embedded_server_up{server}`, `convoy_embedded_server_restarts_total{server}`
  (`convoy up`'s own nats-server and PostgreSQL);
- `convoy_consumer_pending_messages{stream,consumer}`,
  `convoy_consumer_ack_pending_messages{stream,consumer}` (JetStream consumer info);
- `convoy_ingest_observations_total{outcome}`;
- `convoy_planner_{inputs,outputs,commits,restarts,timers_fired,skipped,rejected}_total`,
  `convoy_planner_rejected_inputs`,
  `convoy_planner_ready`, `convoy_planner_checkpoint_position`,
  `convoy_planner_lag_positions` (head − checkpoint, 0 when no input waits),
  `convoy_convergence_duration_seconds{channel}` (ReleaseCreated → channel CONVERGED);
- `convoy_agent_intents_received_total{runtime}`, `convoy_agent_intents_total{runtime,outcome}`,
  `convoy_agent_drifts_total{runtime}`, `convoy_agent_drifts_repaired_total{runtime}`,
  `convoy_agent_ready{runtime}`;
- `convoy_notifications_total{outcome}` (sent, failed attempts, skipped events);
- `convoy_nats_connected` (what the client believes; `convoy_probe_ok{probe="nats"}` is
  what the server answers), `convoy_nats_reconnects_total`;
- and from the API itself: `convoy_api_http_requests_total{method,code}`,
  `convoy_api_http_request_duration_seconds{method}`, `convoy_api_projection_lag_positions`.

Readiness: the bus and the store are probed actively and periodically (eventstore.probes:
"nats", "store"); the relay reports its own health ("relay": leading/standby, backlog,
since when publishing fails); `convoy up` adds its embedded servers ("embedded", which is
also its liveness once supervision gave up on one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client

from eventstore import bus
from eventstore.embedded import EmbeddedServers
from eventstore.errors import ConvoyError
from eventstore.metrics import Check, CheckAnswer, Counter, CounterChild, Registry
from eventstore.probes import Probe, clock_text
from eventstore.relay import Relay, RelayHealth
from eventstore.types import EventStore
from services.agent.agent import Agent
from services.api.ingest import ObservationIngest
from services.notifier.webhook import Notifier
from services.planner.engine import INPUT_CATEGORIES
from services.planner.runner import Converged, Planner

CONVERGENCE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Seconds: a release reaches a channel in seconds (staging) to a day (soaks, windows)."""


# -- events appended ----------------------------------------------------------------------


def events_appended(registry: Registry) -> Counter:
    return registry.counter(
        "convoy_events_appended_total", "Events this process appended to the store, by component.", ["process"]
    )


class CountingStore:
    """An EventStore that counts the events it appends (an idempotent retry that wrote
    nothing is not counted); everything else is the wrapped store's."""

    def __init__(self, store: EventStore, counter: CounterChild) -> None:
        self._store = store
        self._counter = counter

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._store.append(*args, **kwargs)
        if not result.duplicate:
            self._counter.inc(len(result.positions))
        return result

    async def commit(self, *args: Any, **kwargs: Any) -> Any:
        results = await self._store.commit(*args, **kwargs)
        self._counter.inc(sum(len(r.positions) for r in results if not r.duplicate))
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def counted(store: EventStore, family: Counter, process: str) -> EventStore:
    return CountingStore(store, family.labels(process=process))  # type: ignore[return-value]


# -- components ---------------------------------------------------------------------------


def instrument_relay(registry: Registry, relay: Relay) -> None:
    published = registry.counter("convoy_relay_published_total", "Events the relay stored on the bus.")
    duplicates = registry.counter("convoy_relay_duplicates_total", "Events the bus already held when published.")
    failures = registry.counter("convoy_relay_failures_total", "Relay failures (it backs off and resumes).")
    leader = registry.gauge("convoy_relay_leader", "1 while this relay holds the lock and publishes, 0 on standby.")
    checkpoint = registry.gauge("convoy_relay_checkpoint_position", "Last position known to be on the bus.")
    lag = registry.gauge("convoy_relay_lag_events", "Events committed to the store and not yet known to be on the bus.")
    backlog = registry.gauge(
        "convoy_relay_backlog_events", "Events the leading relay knows are committed and not yet on the bus (0 on standby)."
    )
    last_publish = registry.gauge(
        "convoy_relay_last_publish_timestamp_seconds", "When the relay last stored a window on the bus (0: not yet)."
    )
    failing = registry.gauge(
        "convoy_relay_failing_since_timestamp_seconds", "Since when the relay's attempts fail (0 while they work)."
    )

    async def collect() -> None:
        published.set_total(relay.published)
        duplicates.set_total(relay.duplicates)
        failures.set_total(relay.failures)
        leader.set(1 if relay.leader else 0)
        checkpoint.set(relay.checkpoint)
        health = relay.health()
        backlog.set(health.backlog)
        last_publish.set(health.last_published_at or 0)
        failing.set(health.failing_since or 0)
        lag.set(await relay.measure_lag())

    registry.collector("relay", collect)


def instrument_consumers(
    registry: Registry, nc: Client, *, streams: Sequence[str] = (), durables: Sequence[tuple[str, str]] = ()
) -> None:
    """Pending messages of every durable consumer of `streams` (listing needs the
    permission to) and of the named (stream, durable) pairs, sampled at scrape time."""
    pending = registry.gauge(
        "convoy_consumer_pending_messages", "Messages of a durable consumer not yet delivered.", ["stream", "consumer"]
    )
    acks = registry.gauge(
        "convoy_consumer_ack_pending_messages", "Messages delivered and not yet acknowledged.", ["stream", "consumer"]
    )

    async def collect() -> None:
        js = nc.jetstream()
        infos: list[Any] = []
        for stream in streams:
            infos += await bus.guarded(f"listing consumers of {stream}", lambda s=stream: js.consumers_info(s))
        for stream, durable in durables:
            try:
                infos.append(await bus.guarded(f"consumer {durable}", lambda s=stream, d=durable: js.consumer_info(s, d)))
            except ConvoyError:
                pending.remove(stream=stream, consumer=durable)
                acks.remove(stream=stream, consumer=durable)
        for info in infos:
            pending.labels(stream=info.stream_name, consumer=info.name).set(info.num_pending or 0)
            acks.labels(stream=info.stream_name, consumer=info.name).set(info.num_ack_pending or 0)

    registry.collector("consumers", collect)


def instrument_ingest(registry: Registry, ingest: ObservationIngest) -> None:
    observations = registry.counter(
        "convoy_ingest_observations_total", "Agent observations ingested, by outcome.", ["outcome"]
    )

    def collect() -> None:
        observations.labels(outcome="recorded").set_total(ingest.recorded)
        observations.labels(outcome="duplicate").set_total(ingest.duplicates)
        observations.labels(outcome="rejected").set_total(ingest.rejected)

    registry.collector("ingest", collect)


def instrument_notifier(registry: Registry, notifier: Notifier) -> None:
    sent = registry.counter("convoy_notifications_total", "Webhook notifications, by outcome.", ["outcome"])

    def collect() -> None:
        sent.labels(outcome="sent").set_total(notifier.stats.sent)
        sent.labels(outcome="failed").set_total(notifier.stats.failed)
        sent.labels(outcome="skipped").set_total(notifier.stats.skipped)

    registry.collector("notifier", collect)


def convergence_histogram(registry: Registry) -> Converged:
    """The planner's `on_converged` hook, recording into the registry."""
    durations = registry.histogram(
        "convoy_convergence_duration_seconds",
        "From a release's ReleaseCreated to a channel CONVERGED at it (recorded times from the log).",
        ["channel"],
        buckets=CONVERGENCE_BUCKETS,
    )

    def converged(_application: str, _service: str, channel: str, seconds: float) -> None:
        durations.labels(channel=channel).observe(seconds)

    return converged


def instrument_planner(registry: Registry, planner: Planner) -> None:
    counters = {
        name: registry.counter(f"convoy_planner_{name}_total", help)
        for name, help in (
            ("inputs", "Inputs the planner folded."),
            ("outputs", "Events the planner committed."),
            ("commits", "Planner commits (outputs with the checkpoint, one transaction)."),
            ("restarts", "Times the planner failed and rebuilt its state from the log."),
            ("timers_fired", "Timers the planner fired."),
            ("skipped", "Events the planner could not read and skipped."),
            ("rejected", "Inputs plan raised on, recorded as rejected (PlannerInputRejected) by this process."),
            ("elsewhere", "Inputs about applications another partition plans (read, not planned)."),
        )
    }
    rejected = registry.gauge(
        "convoy_planner_rejected_inputs", "Inputs the record says the planner rejected (plan raised on them)."
    )
    ready = registry.gauge("convoy_planner_ready", "1 once the planner rebuilt its state and follows the log.")
    leader = registry.gauge(
        "convoy_planner_leader", "1 while this planner leads (holds its checkpoint's lock, or runs without one); 0 on standby."
    )
    checkpoint = registry.gauge("convoy_planner_checkpoint_position", "The planner's committed checkpoint.")
    lag = registry.gauge(
        "convoy_planner_lag_positions", "Store head position minus the planner's checkpoint; 0 when no input waits."
    )

    async def collect() -> None:
        for name, counter in counters.items():
            counter.set_total(getattr(planner.stats, name))
        ready.set(1 if planner.ready.is_set() else 0)
        leader.set(1 if planner.role == "leading" else 0)
        rejected.set(len(planner.rejections))
        at = await planner.store.checkpoint(planner.settings.name)
        checkpoint.set(at)
        waiting = await planner.store.read_all(after=at, limit=1, categories=INPUT_CATEGORIES)
        lag.set(max(0, await planner.store.head() - at) if waiting else 0)

    registry.collector("planner", collect)


def instrument_agent(registry: Registry, agent: Agent) -> None:
    runtime = agent.name
    received = registry.counter("convoy_agent_intents_received_total", "Intents the agent received.", ["runtime"])
    outcomes = registry.counter(
        "convoy_agent_intents_total",
        "Intents handled, by outcome (applied, deleted, failed, duplicate, stale).",
        ["runtime", "outcome"],
    )
    drifts = registry.counter("convoy_agent_drifts_total", "Drift episodes the agent detected.", ["runtime"])
    repaired = registry.counter("convoy_agent_drifts_repaired_total", "Drifts the agent repaired.", ["runtime"])
    ready = registry.gauge("convoy_agent_ready", "1 once the agent has a runtime and consumes its intents.", ["runtime"])

    def collect() -> None:
        stats = agent.stats
        received.labels(runtime=runtime).set_total(stats.intents)
        for outcome, value in (
            ("applied", stats.applied),
            ("deleted", stats.deleted),
            ("failed", stats.failed),
            ("duplicate", stats.duplicates),
            ("stale", stats.stale),
        ):
            outcomes.labels(runtime=runtime, outcome=outcome).set_total(value)
        drifts.labels(runtime=runtime).set_total(stats.drifted)
        repaired.labels(runtime=runtime).set_total(stats.repaired)
        ready.labels(runtime=runtime).set(1 if agent.ready.is_set() else 0)

    registry.collector(f"agent:{runtime}", collect)


def instrument_nats(registry: Registry, nc: Client) -> None:
    connected = registry.gauge("convoy_nats_connected", "1 while this process is connected to NATS.")
    reconnects = registry.counter("convoy_nats_reconnects_total", "Reconnections to NATS.")

    def collect() -> None:
        connected.set(1 if nc.is_connected else 0)
        reconnects.set_total(nc.stats.get("reconnects", 0))

    registry.collector("nats", collect)


def instrument_probes(registry: Registry, probes: Sequence[Probe]) -> None:
    ok = registry.gauge("convoy_probe_ok", "1 while the probed server answers (eventstore.probes).", ["probe"])
    duration = registry.gauge("convoy_probe_duration_seconds", "How long the last probe took.", ["probe"])
    failing = registry.gauge(
        "convoy_probe_failing_since_timestamp_seconds", "Since when the probe fails (0 while it answers).", ["probe"]
    )

    def collect() -> None:
        for probe in probes:
            good, _detail, since = probe.state()
            ok.labels(probe=probe.name).set(1 if good else 0)
            duration.labels(probe=probe.name).set(probe.answer.duration)
            failing.labels(probe=probe.name).set(0 if good else since)

    registry.collector("probes", collect)


def instrument_embedded(registry: Registry, servers: EmbeddedServers) -> None:
    up = registry.gauge("convoy_embedded_server_up", "1 while the embedded server runs.", ["server"])
    restarts = registry.counter(
        "convoy_embedded_server_restarts_total", "Times supervision restarted the embedded server.", ["server"]
    )

    def collect() -> None:
        for status in servers.status():
            up.labels(server=status.name).set(1 if status.running else 0)
            restarts.labels(server=status.name).set_total(status.restarts)

    registry.collector("embedded", collect)


# -- readiness ------------------------------------------------------------------------------


def planner_check(planner: Planner) -> Check:
    """Ready while it follows the log. Rejected inputs do not make it unready (it plans
    everything else), but the answer names them: each is a decision nobody made."""

    name = planner.settings.name

    def probe() -> CheckAnswer:
        if planner.role == "standby":
            return True, f"standby: another planner holds the lock of {name!r}; this one takes over when it goes"
        lead = f"leading {name!r}; " if planner.lock is not None else ""
        if not planner.ready.is_set():
            return False, f"{lead}rebuilding its state"
        if not planner.rejections:
            return True, f"{lead}following the log"
        last = planner.rejections[-1]
        return True, (
            f"{lead}following the log; {len(planner.rejections)} input(s) rejected, the last at position {last.position} "
            f"({last.event_type.rsplit('.', 1)[-1]}: {last.error[:200]}) — see `convoy why` for its service"
        )

    return Check("planner", probe)


RELAY_STALL = 30.0
"""Seconds a leading relay may hold a backlog without storing a window before it counts
as stuck (its publish attempts time out long before: see RelaySettings.ack_timeout)."""


def relay_readiness(health: RelayHealth, now: float, *, stall_after: float = RELAY_STALL) -> CheckAnswer:
    """Whether the relay does its job, and how it is doing, in words: pure."""
    if not health.running:
        return False, "not running"
    role = f"leading, {health.backlog} events behind" if health.leader else "standby"
    if health.failing_since is not None:
        doing = "publishing fails" if health.leader else "failing"
        return False, f"{role}, {doing} since {clock_text(health.failing_since)}: {health.last_error}", health.failing_since
    if health.leader and health.backlog > 0 and now - health.progress_at > stall_after:
        return False, f"{role}, nothing stored on the bus for {now - health.progress_at:.0f}s", health.progress_at
    if health.last_published_at is not None:
        role += f", last published {clock_text(health.last_published_at)}"
    return True, role


def relay_check(relay: Relay, *, stall_after: float = RELAY_STALL) -> Check:
    return Check("relay", lambda: relay_readiness(relay.health(), time.time(), stall_after=stall_after))


def ingest_check(ingest: ObservationIngest) -> Check:
    return Check("ingest", lambda: (ingest.running, "consuming" if ingest.running else "not consuming"))


def embedded_check(servers: EmbeddedServers) -> Check:
    """Readiness: every embedded server runs (one being restarted is not ready)."""

    def probe() -> CheckAnswer:
        statuses = servers.status()
        return all(s.running for s in statuses), "; ".join(f"{s.name} {s.describe()}" for s in statuses)

    return Check("embedded", probe)


def embedded_liveness(servers: EmbeddedServers) -> Check:
    """Liveness: supervision has not given up on an embedded server (restarting `convoy
    up` is what helps then: it also clears whatever the crashes left behind)."""

    def probe() -> CheckAnswer:
        given_up = [s for s in servers.status() if s.gave_up]
        if given_up:
            return False, "; ".join(f"{s.name} {s.describe()}" for s in given_up)
        return True, "supervised"

    return Check("embedded", probe)
