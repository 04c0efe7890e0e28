"""A tiny world for driving the pure planner: declarations, releases, agents' reports and
a hand-moved clock, with every output kept for assertions. No store, no bus, no sleep."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.planner.engine import Input, Output, plan
from services.planner.model import PlannerState, status_name
from services.planner.versions import CURRENT, Engine

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def seconds(n: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=n))
    return d


def channel(name: str, *runtimes: str, stable: str = "", approval: int = 0, max_concurrent: int = 0,
            protections: Iterable[R.ProtectionAttachment] = (), windows: Iterable[R.DeployWindow] = ()) -> R.ReleaseChannel:
    ch = R.ReleaseChannel(name=name, runtimes=[R.RuntimeBinding(runtime=r) for r in runtimes],
                          max_concurrent_runtimes=max_concurrent, protections=list(protections))
    if stable:
        ch.preconditions.add(channel_stable=R.ChannelStable(channel=stable))
    if approval:
        ch.preconditions.add(manual_approval=R.ManualApproval(name="signoff", min_approvers=approval))
    for window in windows:
        ch.preconditions.add(deploy_window=window)
    return ch


class World:
    def __init__(self) -> None:
        self.state = PlannerState()
        self.now = START
        self.position = 0
        self.outputs: list[Output] = []
        self.releases: dict[str, str] = {}

    # -- feeding ------------------------------------------------------------------

    def feed(self, message: Message, actor: str = "alice") -> list[Output]:
        self.position += 1
        event = Input(message, self.position, uuid.uuid5(uuid.NAMESPACE_URL, f"in/{self.position}"), actor, self.now)
        _, out = plan(self.state, event)
        self.outputs += out
        return out

    def advance(self, delta: timedelta) -> list[Output]:
        """Move the clock and fire every timer that is due, as the runner's shell would."""
        self.now += delta
        out: list[Output] = []
        for timer in sorted(self.state.timers.values(), key=lambda t: (t.fire_at, t.timer_id)):
            if timer.fire_at <= self.now and timer.timer_id in self.state.timers:
                fired = E.TimerFired(timer_id=timer.timer_id)
                fired.fire_at.FromDatetime(timer.fire_at)
                fired.fired_at.FromDatetime(self.now)
                out += self.feed(fired, actor="planner")
        return out

    # -- declarations -------------------------------------------------------------

    def setup(self, *channels: R.ReleaseChannel, app: str = "shop", services: Iterable[str] = ("web",),
              auto_rollback: bool = True, runtimes: Iterable[str] = ()) -> None:
        names = set(runtimes) | {b.runtime for c in channels for b in c.runtimes}
        for name in sorted(names):
            self.feed(E.RuntimeRegistered(runtime=R.Runtime(name=name, kind=R.RUNTIME_KIND_EXEC)))
        self.feed(E.ApplicationCreated(application=R.Application(name=app, release_channels=list(channels))))
        for svc in services:
            self.feed(E.ServiceConfigured(service=self.service(app, svc, auto_rollback=auto_rollback), created=True))

    @staticmethod
    def service(app: str, name: str, *, auto_rollback: bool = True) -> R.Service:
        return R.Service(application=app, name=name, replicas=2, auto_rollback_disabled=not auto_rollback,
                         programs=[R.Program(name=name, image=f"registry.example/{name}:{{{{.Parameters.tag}}}}")])

    def protection(self, name: str, kind: str = "http") -> None:
        p = R.Protection(name=name)
        if kind == "http":
            p.http_probe.url = "http://127.0.0.1/"
        elif kind == "health":
            p.agent_health.SetInParent()
        else:
            p.command.command[:] = ["true"]
        self.feed(E.ProtectionConfigured(protection=p))

    def deploy(self, version: str, *, app: str = "shop", service: str = "web", actor: str = "alice") -> list[Output]:
        release_id = f"rel-{service}-{version}"
        self.releases[version] = release_id
        config = self.state.catalog.services[(app, service)]
        release = R.Release(id=release_id, application=app, service=service, version=version,
                            config=config, parameters={"tag": version})
        return self.feed(E.ReleaseCreated(release=release), actor=actor)

    def approve(self, version: str, channel: str, approver: str, *, service: str = "web") -> list[Output]:
        return self.feed(E.ApprovalGranted(release_id=self.releases[version], application="shop", service=service,
                                           channel=channel, approval="signoff", approver=approver), actor=approver)

    # -- agents -------------------------------------------------------------------

    def report(self, intent: E.IntentIssued, kind: int, *, reason: str = "", message: str = "",
               check_id: str = "", generation: int | None = None) -> list[Output]:
        obs = C.Observation(
            observation_id=str(uuid.uuid4()), runtime=intent.target.runtime, namespace=intent.target.namespace,
            application=intent.spec.application, service=intent.spec.service, channel=intent.spec.channel,
            intent_id=intent.intent_id, generation=intent.generation if generation is None else generation,
            kind=kind, reason=reason, message=message, spec_hash=intent.spec_hash, check_id=check_id,  # type: ignore[arg-type]
        )
        obs.observed_at.FromDatetime(self.now)
        return self.feed(E.ObservationRecorded(observation=obs), actor=f"agent:{intent.target.runtime}")

    def healthy(self, intents: Iterable[E.IntentIssued]) -> list[Output]:
        out: list[Output] = []
        for intent in list(intents):
            out += self.report(intent, C.OBSERVATION_KIND_HEALTHY)
        return out

    def converge_all(self, out: list[Output], rounds: int = 20) -> list[Output]:
        """Agents that make every intent healthy at once, until no new intent appears."""
        everything = list(out)
        for _ in range(rounds):
            pending = [i for i in intents(out) if i.action == C.INTENT_ACTION_APPLY]
            if not pending:
                break
            out = self.healthy(pending)
            everything += out
        return everything

    # -- reading outputs ---------------------------------------------------------

    def status(self, channel: str, service: str = "web") -> str:
        conv = self.state.convergences[("shop", service, channel)]
        return status_name(conv.status)

    def reason(self, channel: str, service: str = "web") -> str:
        return self.state.convergences[("shop", service, channel)].reason


def intents(out: Iterable[Output]) -> list[E.IntentIssued]:
    return [o.message for o in out if isinstance(o.message, E.IntentIssued)]


def changes(out: Iterable[Output], *, targets: bool = False) -> list[tuple[str, str, str]]:
    """(channel[/runtime], old, new) for each status change."""
    found = []
    for o in out:
        m = o.message
        if isinstance(m, E.InstanceStatusChanged) and bool(m.target.runtime) == targets:
            where = f"{m.channel}/{m.target.runtime}" if targets else m.channel
            found.append((where, status_name(m.old_status), status_name(m.new_status)))
    return found


def of(out: Iterable[Output], cls: type) -> list:
    return [o.message for o in out if isinstance(o.message, cls)]


def faulty_engine() -> Engine:
    """Today's planner with a bug: a release of version "boom" makes plan raise half way
    (after the real plan already changed the state and emitted events)."""

    def faulty(state: PlannerState, event: Input) -> tuple[PlannerState, list[Output]]:
        state, outputs = plan(state, event)
        if isinstance(event.message, E.ReleaseCreated) and event.message.release.version == "boom":
            raise KeyError("boom")
        return state, outputs

    return Engine(CURRENT.version, faulty)
