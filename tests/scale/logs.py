"""A realistic log, written to a real store the way Convoy's processes write it: people's
declarations and decisions (on the API's streams), the planner's outputs committed with
its checkpoint (by running `plan` on each input, as the runner does), agents answering
intents and checks, and fired timers — with deletes, tokens, secrets, approvals,
rejections, bypasses, pauses and a soak protection among them.

The store's clock is the builder's, moved by hand, so timers become due when the builder
says and no test sleeps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from eventstore.codec import convoy_registry
from eventstore.types import Checkpoint, EventStore
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.api.domain import streams
from services.planner.engine import INPUT_CATEGORIES, PLANNER_ACTOR, timer_stream
from services.planner.model import PlannerState
from services.planner.runner import group, output_events, to_input
from services.planner.versions import CURRENT
from tests.unit.planner.world import channel, seconds

REGISTRY = convoy_registry()
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PLANNER = "planner"


class Clock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class LogBuilder:
    """Writes to `store` (a MemoryEventStore made with `clock`, or PostgreSQL, whose
    clock is its own) and plans every input with the current planner."""

    def __init__(self, store: EventStore, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or Clock()
        self.state = PlannerState()
        self.intents: list[E.IntentIssued] = []
        self.checks: list[E.ChecksRequested] = []
        self.serial = 0

    async def emit(self, stream: str, message: Message, *, actor: str = "user:ann") -> None:
        self.serial += 1
        result = await self.store.append(stream, [REGISTRY.encode(message, actor=actor)])
        position = result.last_position
        if stream.split("/", 1)[0] not in INPUT_CATEGORIES:
            return
        [recorded] = await self.store.read_all(after=position - 1, limit=1)
        item = to_input(REGISTRY, recorded)
        assert item is not None
        _, outputs = CURRENT.plan(self.state, item)
        for out in outputs:
            if isinstance(out.message, E.IntentIssued) and out.message.action == C.INTENT_ACTION_APPLY:
                self.intents.append(out.message)
            elif isinstance(out.message, E.ChecksRequested):
                self.checks.append(out.message)
        await self.store.commit(
            group(output_events(REGISTRY, item, outputs, recorded.correlation_id)), checkpoint=Checkpoint(PLANNER, position)
        )

    # -- agents and time ------------------------------------------------------------

    async def agents(self, *, rounds: int = 10) -> None:
        """Every intent applied and healthy, every requested check passed, until quiet."""
        for _ in range(rounds):
            intents, self.intents = self.intents, []
            checks, self.checks = self.checks, []
            if not intents and not checks:
                return
            for intent in intents:
                for kind in (C.OBSERVATION_KIND_APPLIED, C.OBSERVATION_KIND_HEALTHY):
                    await self.observe(intent.target.runtime, intent.target.namespace, intent.spec.application,
                                       intent.spec.service, intent.spec.channel, kind, intent_id=intent.intent_id,
                                       generation=intent.generation, spec_hash=intent.spec_hash)
            for requested in checks:
                for check in requested.checks:
                    await self.observe(requested.target.runtime, requested.target.namespace, requested.application,
                                       requested.service, requested.channel, C.OBSERVATION_KIND_CHECK_PASSED,
                                       check_id=check.check_id)

    async def observe(self, runtime: str, namespace: str, app: str, service: str, channel: str, kind: int,
                      **fields: object) -> None:
        obs = C.Observation(observation_id=str(uuid.uuid4()), runtime=runtime, namespace=namespace, application=app,
                            service=service, channel=channel, kind=kind, **fields)  # type: ignore[arg-type]
        obs.observed_at.FromDatetime(self.clock.now)
        await self.emit(f"observation/{runtime}/{namespace}/{app}/{service}", E.ObservationRecorded(observation=obs),
                        actor=f"agent:{runtime}")

    async def advance(self, delta: timedelta) -> None:
        """Move the clock and fire what is due, as the planner's timer shell does."""
        self.clock.now += delta
        for timer in sorted(self.state.timers.values(), key=lambda t: (t.fire_at, t.timer_id)):
            if timer.fire_at <= self.clock.now and timer.timer_id in self.state.timers:
                fired = E.TimerFired(timer_id=timer.timer_id)
                fired.fire_at.FromDatetime(timer.fire_at)
                fired.fired_at.FromDatetime(self.clock.now)
                await self.emit(timer_stream(*timer.key), fired, actor=PLANNER_ACTOR)

    # -- the world ------------------------------------------------------------------

    async def declare(self, *, services: int = 3, runtimes: int = 4) -> None:
        names = [f"r{i}" for i in range(runtimes)]
        for name in names:
            await self.emit(streams.runtime(name), E.RuntimeRegistered(runtime=R.Runtime(name=name, kind=R.RUNTIME_KIND_EXEC)))
        await self.emit(streams.runtime("r0"), E.RuntimeLabelled(name="r0", labels={"zone": "a"}))
        await self.emit(streams.runtime("r0"), E.AgentCredentialIssued(runtime="r0", credential_id="c1", secret_sha256="ab" * 32, generation=1))
        await self.emit(streams.runtime("r1"), E.RuntimePaused(name="r1", reason="maintenance"))
        await self.emit(streams.runtime("r1"), E.RuntimeResumed(name="r1"))
        probe = R.Protection(name="smoke")
        probe.http_probe.url = "http://127.0.0.1/"
        await self.emit(streams.protection("smoke"), E.ProtectionConfigured(protection=probe))
        soak = R.ProtectionAttachment(protection="smoke", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                      failure_behavior=R.FAILURE_BEHAVIOR_FAIL, delay=seconds(5), duration=seconds(30))
        half = max(1, runtimes // 2)
        app = R.Application(name="shop", release_channels=[
            channel("staging", *names[:half]),
            channel("prod", *names[half:], stable="staging", approval=1, protections=[soak]),
        ])
        await self.emit(streams.application("shop"), E.ApplicationCreated(application=app))
        for i in range(services):
            await self.emit(streams.service("shop", f"s{i}"), E.ServiceConfigured(service=self.service("shop", f"s{i}"), created=True))
        resource = R.Resource(name="db", scope=R.RESOURCE_SCOPE_INFRASTRUCTURE, attributes={"host": "db.internal"})
        await self.emit(streams.resource(resource.scope, "", "db"), E.ResourceLinked(resource=resource))
        # Something created and deleted again: an application with a service and a release.
        temp = R.Application(name="temp", release_channels=[channel("only", names[0])])
        await self.emit(streams.application("temp"), E.ApplicationCreated(application=temp))
        await self.emit(streams.service("temp", "old"), E.ServiceConfigured(service=self.service("temp", "old"), created=True))
        await self.release("temp", "old", "v1")
        await self.agents()
        await self.emit(streams.service("temp", "old"), E.ServiceDeleted(application="temp", name="old"))
        await self.emit(streams.application("temp"), E.ApplicationDeleted(name="temp"))
        # Tokens and secrets (the API's catalog only).
        for n in range(3):
            token = E.TokenCreated(token_id=f"t{n}", name=f"ci-{n}", role="deployer", secret_hmac="cd" * 32, owner="user:ann")
            token.expires_at.FromDatetime(START + timedelta(days=30))
            token.scope.applications.append("shop")
            await self.emit(streams.token(f"t{n}"), token)
        await self.emit(streams.token("t1"), E.TokenRevoked(token_id="t1", reason="leaked"))
        await self.emit(streams.secret("pw"), E.SecretSet(name="pw", key_id="k1", nonce=b"n" * 12, ciphertext=b"c" * 40))
        await self.emit(streams.secret("gone"), E.SecretSet(name="gone", key_id="k1", nonce=b"m" * 12, ciphertext=b"d" * 40))
        await self.emit(streams.secret("gone"), E.SecretDeleted(name="gone"))
        await self.emit(streams.keyring(), E.SecretKeyRotated(key_id="k2", previous_key_id="k1"))

    @staticmethod
    def service(app: str, name: str) -> R.Service:
        return R.Service(application=app, name=name, replicas=1,
                         programs=[R.Program(name=name, image=f"registry.example/{name}:{{{{.Parameters.tag}}}}")])

    async def release(self, app: str, service: str, version: str) -> str:
        config = self.state.catalog.services[(app, service)]
        release_id = f"rel-{app}-{service}-{version}"
        release = R.Release(id=release_id, application=app, service=service, version=version, config=config,
                            parameters={"tag": version})
        await self.emit(streams.releases(app, service), E.ReleaseCreated(release=release))
        return release_id

    async def round(self, version: str, *, services: int = 3) -> None:
        """One release of every service through staging, approval and prod's soak."""
        ids = [await self.release("shop", f"s{i}", version) for i in range(services)]
        await self.agents()
        await self.advance(timedelta(seconds=1))
        for i, release_id in enumerate(ids):
            if i == 0:
                await self.emit(streams.releases("shop", "s0"), E.ApprovalRejected(
                    release_id=release_id, application="shop", service="s0", channel="prod", approval="signoff",
                    approver="user:bob", reason="not yet"))
            await self.emit(streams.releases("shop", f"s{i}"), E.ApprovalGranted(
                release_id=release_id, application="shop", service=f"s{i}", channel="prod", approval="signoff",
                approver="user:carol"), actor="user:carol")
        await self.emit(streams.releases("shop", "s1"), E.BypassGranted(
            release_id=ids[min(1, len(ids) - 1)], application="shop", service="s1", channel="prod",
            target="precondition:signoff", reason="hotfix"))
        await self.agents()
        await self.advance(timedelta(seconds=6))
        await self.agents()
        await self.advance(timedelta(seconds=31))
        await self.agents()
        await self.advance(timedelta(seconds=31))

    async def pause_and_resume(self) -> None:
        await self.emit(streams.service("shop", "s0"), E.ConvergencePaused(application="shop", service="s0", channel="prod", reason="incident"))
        await self.emit(streams.service("shop", "s0"), E.ConvergenceResumed(application="shop", service="s0", channel="prod"))
