"""Least privilege on the bus: an agent reads only its runtime's intents and reports only
for its runtime, and a rotated credential locks the old password out. Real nats-server
with authorization rendered by eventstore.natsauth and reloaded by NatsAuthSync."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from eventstore import bus, leases, natsauth
from eventstore.embedded import NatsServer
from eventstore.errors import ConvoyError
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, convergence_pb2, events_pb2, resources_pb2
from services.agent import snapshot
from services.agent.agent import Agent, AgentSettings
from services.agent.runtimes.memory import MemoryRuntime
from services.api.auth import nats_password_bcrypt
from services.api.planning import NatsPlannerClient
from services.planner.clock import FakeClock
from services.planner.responder import PlanResponder
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.integration.test_agent_support import FAST, Plane, control_plane

SYSTEM_PASSWORD = secrets.token_urlsafe(24)


@pytest.fixture
def auth_nats(tmp_path: Path, subject_prefix: str) -> Iterator[NatsServer]:
    server = NatsServer(
        data_dir=tmp_path / "nats", config_extra=natsauth.render(subject_prefix, [natsauth.system(subject_prefix, SYSTEM_PASSWORD)])
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def plane(pg_store: PostgresEventStore, auth_nats: NatsServer, subject_prefix: str) -> AsyncIterator[Plane]:
    async with control_plane(
        pg_store, auth_nats.url, subject_prefix, server=auth_nats, system_password=SYSTEM_PASSWORD
    ) as made:
        yield made


class AgentConnection:
    """An agent's NATS connection that records the errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, instance: str, runtime: str, secret: str) -> Client:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await bus.connect(
            url,
            name=f"test-agent-{runtime}",
            connect_attempts=1,
            user=natsauth.agent_user(instance, runtime),
            password=secret,
            inbox_prefix=natsauth.agent_inbox_prefix(instance, runtime),
            error_cb=on_error,
        )
        return self.nc

    def violated(self, what: str) -> bool:
        return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors)


@contextlib.asynccontextmanager
async def agent_of(url: str, instance: str, runtime: str, secret: str) -> AsyncIterator[tuple[AgentConnection, Client]]:
    conn = AgentConnection()
    nc = await conn.connect(url, instance, runtime, secret)
    try:
        yield conn, nc
    finally:
        await nc.close()


async def test_an_agent_does_its_job_and_nothing_else(plane: Plane, auth_nats: NatsServer) -> None:
    secrets_by_runtime = {rt: secrets.token_urlsafe(32) for rt in ("rt-a", "rt-b")}
    for rt, secret in secrets_by_runtime.items():
        await plane.register(rt, bcrypt=nats_password_bcrypt(secret))
    inst = plane.instance
    stream = bus.events_stream(inst)

    async with agent_of(auth_nats.url, inst, "rt-a", secrets_by_runtime["rt-a"]) as (conn, nc):
        # Its own job: bind its consumer, apply, report, ask for its desired state.
        runtime = MemoryRuntime(name="rt-a")
        agent_settings = AgentSettings(instance=inst, runtime="rt-a", snapshot_timeout=2.0, subscription=FAST)
        try:
            async with Agent(nc=nc, settings=agent_settings, runtime=runtime) as agent:
                await eventually(agent.ready.is_set, message="agent A ready")
                assert agent.stats.snapshots == 1  # the desired-state request was allowed and answered
                await plane.intent("rt-a")
                await plane.intent("rt-b")

                async def healthy() -> bool:
                    return "HEALTHY" in await plane.kinds("rt-a")

                await eventually(healthy, message="A's observations in the store")
                assert runtime.applies == 1  # B's intent never reached A
        finally:
            await runtime.close()

        # Not B's consumer: neither bind (info) nor pull.
        js = nc.jetstream()
        with pytest.raises(Exception):  # noqa: B017 - the server drops the request: a timeout
            await js.consumer_info(stream, natsauth.agent_consumer("rt-b"), timeout=0.5)
        await eventually(lambda: conn.violated(f"CONSUMER.INFO.{stream}.agent-rt-b"), message="info refused")
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.agent-rt-b", b"1", reply=nc.new_inbox())
        await eventually(lambda: conn.violated(f"CONSUMER.MSG.NEXT.{stream}.agent-rt-b"), message="pull refused")

        # Not a consumer of its own choosing (it could pick B's intents as its filter).
        mine = ConsumerConfig(durable_name="sneaky", ack_policy=AckPolicy.EXPLICIT, filter_subjects=bus.intent_filter(inst, "rt-b"))
        conn.errors.clear()
        with pytest.raises(Exception):  # noqa: B017
            await js.add_consumer(stream, mine, timeout=0.5)
        await eventually(lambda: conn.violated("$JS.API.CONSUMER."), message="consumer creation refused")
        assert "sneaky" not in [c.name for c in await plane.nc.jetstream().consumers_info(stream)]

        # Not B's subjects: neither the intents on the bus nor B's inbox.
        await nc.subscribe(bus.intent_filter(inst, "rt-b")[1])
        await eventually(lambda: conn.violated("Subscription to"), message="subscription refused")
        conn.errors.clear()
        await nc.subscribe(f"{natsauth.agent_inbox_prefix(inst, 'rt-b')}.>")
        await eventually(lambda: conn.violated("Subscription to"), message="B's inbox refused")

        # Not speaking for B: its observation subject is refused by NATS itself.
        forged = convergence_pb2.Observation(
            observation_id="forged", runtime="rt-b", namespace="prod", application="shop", service="web",
            kind=convergence_pb2.OBSERVATION_KIND_HEALTHY,
        )
        subject_b = bus.observation_subject(inst, "rt-b", "prod", "shop", "web")
        with pytest.raises(ConvoyError):
            await bus.guarded("forging", lambda: js.publish(subject_b, forged.SerializeToString(), timeout=0.5))
        await eventually(lambda: conn.violated(f"Publish to \"{subject_b}\""), message="publish as B refused")
        assert await plane.observations("rt-b") == []


async def test_a_rotated_credential_stops_the_old_password(plane: Plane, auth_nats: NatsServer) -> None:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await plane.register("rt-a", bcrypt=nats_password_bcrypt(old))
    async with agent_of(auth_nats.url, plane.instance, "rt-a", old):
        pass  # the first password works

    await plane.issue_credential("rt-a", nats_password_bcrypt(new), generation=2)
    with pytest.raises(ConvoyError):
        await AgentConnection().connect(auth_nats.url, plane.instance, "rt-a", old)
    async with agent_of(auth_nats.url, plane.instance, "rt-a", new):
        pass
    # A system connection still works, and a deregistered runtime's agent is locked out.
    await plane.store.append(
        "runtime/rt-a", [plane.registry.encode(events_pb2.RuntimeDeregistered(name="rt-a"), actor="test")]
    )
    await plane.sync.wait_synced()
    with pytest.raises(ConvoyError):
        await AgentConnection().connect(auth_nats.url, plane.instance, "rt-a", new)


# -- the control plane never publishes where an agent points it ------------------------


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching (`*` one token, `>` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def foreign_replies(instance: str, other: str) -> list[str]:
    """Reply subjects runtime A's agent might point the control plane at: B's intents
    (which B's consumer and the events stream capture), B's inbox, any event subject,
    B's observations and the JetStream API (a purge of the events stream)."""
    return [
        f"convoy.{instance}.evt.intent.{other}.injected",
        f"{natsauth.agent_inbox_prefix(instance, other)}.stolen",
        f"convoy.{instance}.evt.release.shop.forged",
        f"convoy.{instance}.obs.{other}.prod.shop.web",
        f"$JS.API.STREAM.PURGE.{bus.events_stream(instance)}",
    ]


def forbidden_patterns(instance: str, other: str) -> list[str]:
    return [
        f"convoy.{instance}.evt.>",
        f"convoy.{instance}.obs.{other}.>",
        f"{natsauth.agent_inbox_prefix(instance, other)}.>",
        "$JS.API.>",
    ]


class Spy:
    """Every message the control plane's account carries, as (subject, reply); `on`
    leaves out the control plane's own requests (their replies are its own inboxes:
    the relay's publishes, the test's stream look-ups)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def start(self, nc: Client) -> None:
        async def on_msg(msg: object) -> None:
            self.seen.append((msg.subject, msg.reply))  # type: ignore[attr-defined]

        await nc.subscribe(">", cb=on_msg)
        await nc.flush()

    def on(self, patterns: list[str]) -> list[tuple[str, str]]:
        return [
            (s, r)
            for s, r in self.seen
            if any(subject_matches(p, s) for p in patterns) and not (r or "").startswith("_INBOX.")
        ]


@contextlib.asynccontextmanager
async def listening_as(url: str, instance: str, runtime: str, secret: str) -> AsyncIterator[list[str]]:
    """Runtime `runtime`'s agent, listening on its whole inbox: the subjects it heard."""
    heard: list[str] = []

    async def on_msg(msg: object) -> None:
        heard.append(msg.subject)  # type: ignore[attr-defined]

    async with agent_of(url, instance, runtime, secret) as (_, nc):
        await nc.subscribe(f"{natsauth.agent_inbox_prefix(instance, runtime)}.>", cb=on_msg)
        await nc.flush()
        yield heard


async def stream_state(plane: Plane) -> dict[str, object]:
    js = plane.nc.jetstream()
    inst = plane.instance
    out: dict[str, object] = {}
    for stream in (bus.events_stream(inst), bus.observations_stream(inst), bus.dlq_stream(inst)):
        info = await js.stream_info(stream)
        out[stream] = (info.state.messages, info.state.last_seq)
    out["agent-rt-b pending"] = (await js.consumer_info(bus.events_stream(inst), natsauth.agent_consumer("rt-b"))).num_pending
    return out


async def relayed(plane: Plane) -> None:
    head = await plane.store.head()
    await eventually(lambda: plane.relay.checkpoint >= head, message="the relay published the log")


async def test_a_desired_state_answer_never_lands_on_another_runtimes_subjects(
    plane: Plane, auth_nats: NatsServer
) -> None:
    secrets_by_runtime = {rt: secrets.token_urlsafe(32) for rt in ("rt-a", "rt-b")}
    for rt, secret in secrets_by_runtime.items():
        await plane.register(rt, bcrypt=nats_password_bcrypt(secret))
    inst = plane.instance
    await plane.intent("rt-a")
    await relayed(plane)
    spy = Spy()
    await spy.start(plane.nc)
    before = await stream_state(plane)

    async with (
        listening_as(auth_nats.url, inst, "rt-b", secrets_by_runtime["rt-b"]) as heard_by_b,
        agent_of(auth_nats.url, inst, "rt-a", secrets_by_runtime["rt-a"]) as (conn, nc),
    ):
        for reply in foreign_replies(inst, "rt-b"):
            await nc.publish(natsauth.desired_subject(inst, "rt-a"), b"", reply=reply)
        # The same request on A's own inbox, through the agent's own code path, is answered
        # (requests are handled in order, so every one before it has been dealt with).
        got = await snapshot.fetch(nc, instance=inst, runtime="rt-a", registry=plane.registry)
        assert [i.intent_id for i in got.intents] != [] and got.config is not None
        assert not conn.errors

    assert spy.on(forbidden_patterns(inst, "rt-b")) == []
    assert heard_by_b == []
    await relayed(plane)
    assert await stream_state(plane) == before


async def test_the_desired_state_responder_itself_answers_only_the_asking_runtimes_inbox(
    pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str
) -> None:
    """Without accounts (one NATS account where anyone may publish anything: what a
    server configured by hand may be), the responder's own rule still holds."""
    async with control_plane(pg_store, embedded_nats.url, subject_prefix) as plane:
        await plane.register("rt-a")
        await plane.register("rt-b")
        inst = plane.instance
        await plane.intent("rt-a")
        await relayed(plane)
        spy = Spy()
        await spy.start(plane.nc)
        before = await stream_state(plane)
        nc = await bus.connect(
            embedded_nats.url, name="rogue", inbox_prefix=natsauth.agent_inbox_prefix(inst, "rt-a")
        )
        try:
            for reply in foreign_replies(inst, "rt-b"):
                await nc.publish(natsauth.desired_subject(inst, "rt-a"), b"", reply=reply)
            got = await snapshot.fetch(nc, instance=inst, runtime="rt-a", registry=plane.registry)
            assert len(got.intents) == 1
        finally:
            await nc.close()
        assert spy.on(forbidden_patterns(inst, "rt-b")) == []
        await relayed(plane)
        assert await stream_state(plane) == before
        assert plane.desired.refused == len(foreign_replies(inst, "rt-b"))


async def test_the_planner_answers_dry_runs_only_to_the_control_plane(plane: Plane, auth_nats: NatsServer) -> None:
    """A runtime may be named `planner`: its agent may publish on `convoy.<i>.req.planner.>`,
    so dry runs live elsewhere, and the planner answers only on control-plane inboxes."""
    secret = secrets.token_urlsafe(32)
    await plane.register("planner", bcrypt=nats_password_bcrypt(secret))
    await plane.register("rt-b", bcrypt=nats_password_bcrypt(secrets.token_urlsafe(32)))
    inst = plane.instance
    query = api_pb2.PlannerQuery(release=resources_pb2.Release(id="rel-x", application="shop", service="web", version="v9"))
    planner = Planner(store=plane.store, registry=plane.registry, clock=FakeClock(datetime.now(UTC)))
    async with planner, PlanResponder(nc=plane.nc, planner=planner, instance=inst) as responder:
        await planner.ready.wait()
        client = NatsPlannerClient(nc=plane.nc, instance=inst, timeout=10)
        await client.plan(query)  # the API's own dry run is answered
        assert responder.answered == 1

        async with agent_of(auth_nats.url, inst, "planner", secret) as (conn, nc):
            # Its own request namespace holds no planner...
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request(f"convoy.{inst}.req.planner.plan", query.SerializeToString(), timeout=10)
            # ...and the planner's subject is not its to publish on.
            await nc.publish(natsauth.plan_subject(inst), query.SerializeToString(), reply=nc.new_inbox())
            await eventually(lambda: conn.violated(f'Publish to "{natsauth.plan_subject(inst)}"'), message="refused")

        # Even a control-plane caller gets answers only on a control-plane inbox.
        await relayed(plane)
        spy = Spy()
        await spy.start(plane.nc)
        before = await stream_state(plane)
        for reply in foreign_replies(inst, "rt-b"):
            await plane.nc.publish(natsauth.plan_subject(inst), query.SerializeToString(), reply=reply)
        await client.plan(query)  # handled in order: every query before it has been dealt with
        assert spy.on(forbidden_patterns(inst, "rt-b")) == []
        assert await stream_state(plane) == before
        assert (responder.answered, responder.refused) == (2, len(foreign_replies(inst, "rt-b")))


async def test_jetstream_cannot_be_made_to_write_where_an_agent_points_it(plane: Plane, auth_nats: NatsServer) -> None:
    """JetStream answers an agent's API calls, pulls, acks and publishes on the reply
    subject the agent chose, with the server's own authority: in one NATS account that
    reply could be another runtime's intent subject (the events stream would store the
    answer and B's agent would get it), B's inbox, or the JetStream API itself. Each
    agent lives in its own account, so every such answer lands in the agent's own."""
    secrets_by_runtime = {rt: secrets.token_urlsafe(32) for rt in ("rt-a", "rt-b")}
    for rt, secret in secrets_by_runtime.items():
        await plane.register(rt, bcrypt=nats_password_bcrypt(secret))
    inst = plane.instance
    stream = bus.events_stream(inst)
    consumer = natsauth.agent_consumer("rt-a")
    replies = foreign_replies(inst, "rt-b")
    for n in range(len(replies) + 1):
        await plane.intent("rt-a", service=f"web{n}")
    await relayed(plane)
    before = await stream_state(plane)

    async with (
        listening_as(auth_nats.url, inst, "rt-b", secrets_by_runtime["rt-b"]) as heard_by_b,
        agent_of(auth_nats.url, inst, "rt-a", secrets_by_runtime["rt-a"]) as (conn, nc),
    ):
        js = nc.jetstream()
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        observation = bus.observation_subject(inst, "rt-a", "prod", "shop", "web0")
        for reply in replies:
            await nc.publish(pull, b'{"batch": 1, "no_wait": true}', reply=reply)
            await nc.publish(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"", reply=reply)
            await nc.publish(observation, b"", reply=reply)
            await nc.publish(bus.dlq_subject(inst, consumer), b"", reply=reply)
        # The same calls on A's own inbox are answered: its consumer, a message, its ack.
        info = await js.consumer_info(stream, consumer, timeout=10)
        assert info.name == consumer
        inbox = nc.new_inbox()
        own = await nc.subscribe(inbox)
        await nc.publish(pull, b'{"batch": 1, "expires": 10000000000}', reply=inbox)
        delivered = await own.next_msg(timeout=10)
        assert delivered.subject.startswith(f"convoy.{inst}.evt.intent.rt-a.")
        for reply in replies:  # an ack's confirmation, too, is an answer on a reply
            await nc.publish(delivered.reply, b"+WPI", reply=reply)
        await delivered.ack_sync(timeout=10)
        assert (await js.publish(observation, b"", timeout=10)).stream == bus.observations_stream(inst)
        assert not conn.errors

    await relayed(plane)
    after = await stream_state(plane)
    assert after[stream] == before[stream] and after["agent-rt-b pending"] == 0
    assert heard_by_b == []
    with pytest.raises(nats.js.errors.NotFoundError):
        await plane.nc.jetstream().get_last_msg(bus.observations_stream(inst), bus.observation_filter(inst, "rt-b"))


async def test_an_agent_holds_only_its_own_runtimes_lease(plane: Plane, auth_nats: NatsServer) -> None:
    """Replicas of an agent take turns by a lease on the bus (eventstore.leases): runtime
    A's credential takes, renews and releases A's lease, and has no way to write, read or
    remove runtime B's — not by publishing on B's key, not by asking JetStream for it,
    not by pointing a reply there, not by purging the bucket."""
    secrets_by_runtime = {rt: secrets.token_urlsafe(32) for rt in ("rt-a", "rt-b")}
    for rt, secret in secrets_by_runtime.items():
        await plane.register(rt, bcrypt=nats_password_bcrypt(secret))
    inst = plane.instance
    lease_stream = leases.stream(inst)

    async with agent_of(auth_nats.url, inst, "rt-b", secrets_by_runtime["rt-b"]) as (_, nc_b):
        b = leases.Lease(nc_b, instance=inst, runtime="rt-b", holder="replica-b")
        assert await b.try_acquire()
    b_before = (await plane.nc.jetstream().get_last_msg(lease_stream, leases.key_subject(inst, "rt-b"))).seq

    async with agent_of(auth_nats.url, inst, "rt-a", secrets_by_runtime["rt-a"]) as (conn, nc):
        # Its own lease: taken, seen, released — through its account's imports.
        a = leases.Lease(nc, instance=inst, runtime="rt-a", holder="replica-a")
        assert await a.try_acquire() and a.held()
        other = leases.Lease(nc, instance=inst, runtime="rt-a", holder="replica-a2")
        assert not await other.try_acquire() and other.other == "replica-a"
        await a.release()
        assert await other.try_acquire()
        assert not conn.errors

        # B's lease: neither written, nor read, nor removed.
        thief = leases.Lease(nc, instance=inst, runtime="rt-b", holder="replica-a", timeout=0.5)
        with pytest.raises(ConvoyError):
            await thief.try_acquire()  # the read is refused: a timeout
        await eventually(lambda: conn.violated(f"DIRECT.GET.{lease_stream}.$KV"), message="reading B's lease refused")
        b_key = leases.key_subject(inst, "rt-b")
        await nc.publish(b_key, b'{"holder": "replica-a"}', headers={leases.H_EXPECTED_LAST_SUBJECT_SEQUENCE: "0"})
        await eventually(lambda: conn.violated(f'Publish to "{b_key}"'), message="writing B's lease refused")
        conn.errors.clear()
        await nc.publish(f"$JS.API.DIRECT.GET.{lease_stream}", b'{"last_by_subj": "' + b_key.encode() + b'"}',
                         reply=nc.new_inbox())
        await eventually(lambda: conn.violated(f"DIRECT.GET.{lease_stream}"), message="the body form refused")
        conn.errors.clear()
        await nc.publish(f"$JS.API.STREAM.PURGE.{lease_stream}", b"", reply=nc.new_inbox())
        await eventually(lambda: conn.violated("STREAM.PURGE"), message="purging the bucket refused")
        # A reply pointed at B's key: JetStream's answer to A's own write lands in A's account.
        mine = leases.key_subject(inst, "rt-a")
        last = (await plane.nc.jetstream().get_last_msg(lease_stream, mine)).seq
        await nc.publish(mine, b'{"holder": "replica-a2"}', reply=b_key,
                         headers={leases.H_EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})
        await nc.flush()
        assert await other.read() is not None  # handled in order: the publish above is done

    b_after = await plane.nc.jetstream().get_last_msg(lease_stream, leases.key_subject(inst, "rt-b"))
    assert b_after.seq == b_before and b"replica-b" in (b_after.data or b"")
