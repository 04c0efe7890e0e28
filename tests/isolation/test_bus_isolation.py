"""The bus rows of the isolation table: instances `a` and `b` on one nats-server.

Each instance lives in its own NATS account (and each runtime's agent in one of its
own), rendered by `natsauth.render_many` (tests/isolation/bus_env.py). A's agent may
pull its own intents and report its own observations but touch nothing of B; A's
control plane sees A's streams and never B's; what A publishes on B's subjects lands
in A's account, never in B's streams; A's account limits hold.

Every deny runs the same probe as its allow (tests/isolation/table.py) and counts as
denied only on the refusal the server gives for it: a permissions violation, JetStream's
"stream not found", "no responders", a limit error, or — for what crosses accounts
silently — a sentinel published after the probe arriving (or being stored) while the
probe's message did not.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from eventstore import bus, natsauth
from tests.conftest import eventually
from tests.isolation.bus_env import LIMITS, RUNTIME, BusEnv, Principal, bus_env, bus_server, settle  # noqa: F401 - fixtures
from tests.isolation.table import Row, check

TIMEOUT = 10.0
CONNECTION_LIMIT = "maximum account active connections exceeded"


def row(id: str, principal: str, resource: str, action: str, allowed: bool, probe: str, pair: str = "") -> Row:
    return Row(f"bus.{id}", principal, resource, action, allowed, pair=f"bus.{pair}" if pair else "", probe=probe)


ROWS = [
    row("a-agent-pulls-a-intents", "a's agent", "a's consumer agent-rt", "pull an intent", True, "pull"),
    row("a-agent-pulls-b-intents", "a's agent", "b's consumer agent-rt", "pull an intent", False, "pull",
        "a-agent-pulls-a-intents"),
    row("a-system-subscribes-a-intents", "a's system user", "a's intent subjects", "subscribe", True, "subscribe"),
    row("b-system-subscribes-a-intents", "b's system user", "a's intent subjects", "subscribe", False, "subscribe",
        "a-system-subscribes-a-intents"),
    row("a-agent-subscribes-b-intents", "a's agent", "b's intent subjects", "subscribe", False, "subscribe",
        "a-system-subscribes-a-intents"),
    row("a-agent-reports-a-observation", "a's agent", "a's observations stream", "publish, stored", True, "stored"),
    row("a-agent-reports-b-observation", "a's agent", "b's observations stream", "publish, stored", False, "stored",
        "a-agent-reports-a-observation"),
    row("b-system-publishes-b-events", "b's system user", "b's events stream", "publish, stored", True, "stored"),
    row("a-system-publishes-b-events", "a's system user", "b's events stream", "publish, stored", False, "stored",
        "b-system-publishes-b-events"),
    row("a-system-lists-a-streams", "a's system user", "a's streams", "list streams", True, "list-streams"),
    row("a-system-lists-b-streams", "a's system user", "b's streams", "list streams", False, "list-streams",
        "a-system-lists-a-streams"),
    row("a-system-reads-a-stream-info", "a's system user", "a's events stream", "stream info", True, "stream-info"),
    row("a-system-reads-b-stream-info", "a's system user", "b's events stream", "stream info", False, "stream-info",
        "a-system-reads-a-stream-info"),
    row("a-agent-asks-a-desired", "a's agent", "a's desired-state responder", "request", True, "desired"),
    row("a-agent-asks-b-desired", "a's agent", "b's desired-state responder", "request", False, "desired",
        "a-agent-asks-a-desired"),
    row("b-system-asks-a-desired", "b's system user", "a's desired-state responder", "request", False, "desired",
        "a-agent-asks-a-desired"),
    row("a-system-creates-stream-within-limit", "a's system user", "a's account (max_streams)", "create a 4th stream",
        True, "create-stream"),
    row("a-system-creates-stream-beyond-limit", "a's system user", "a's account (max_streams)", "create a 5th stream",
        False, "create-stream", "a-system-creates-stream-within-limit"),
    row("a-system-stores-within-limit", "a's system user", "a's account (max_storage)", "store 1 KiB", True,
        "store-bytes"),
    row("a-system-stores-beyond-limit", "a's system user", "a's account (max_storage)", "store beyond max_storage",
        False, "store-bytes", "a-system-stores-within-limit"),
    row("a-system-connects-within-limit", "a's system user", "a's account (max_connections)", "connect up to the limit",
        True, "connect"),
    row("a-system-connects-beyond-limit", "a's system user", "a's account (max_connections)", "connect once more",
        False, "connect", "a-system-connects-within-limit"),
    row("a-agent-connects-within-limit", "a's agent", "a's agent account (max_connections)", "connect once", True,
        "connect"),
    row("a-agent-connects-beyond-limit", "a's agent", "a's agent account (max_connections)", "connect a second time",
        False, "connect", "a-agent-connects-within-limit"),
]
BY_ID = {r.id: r for r in ROWS}


def verdict(row_id: str, allowed: bool) -> None:
    check(BY_ID[f"bus.{row_id}"], allowed)


def intent_subject(instance: str, name: str) -> str:
    return f"{bus.intent_filter(instance, RUNTIME)[0]}.{name}"


# -- probes ---------------------------------------------------------------------------


async def pull(env: BusEnv, who: Principal, target: str) -> bool:
    """`who` asks the durable consumer of `target`'s runtime for one intent, the way an
    agent does (a pull request answered on its own inbox)."""
    payload = f"intent-of-{target}-{secrets.token_hex(4)}".encode()
    async with env.connect(env.system(target)) as nc:
        await nc.jetstream().publish(intent_subject(target, "pulled"), payload)
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{bus.events_stream(target)}.{natsauth.agent_consumer(RUNTIME)}"
    async with env.connect(who) as nc:
        inbox = f"{natsauth.agent_inbox_prefix(who.instance, RUNTIME)}.{secrets.token_hex(8)}"
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, json.dumps({"batch": 1, "expires": int(TIMEOUT * 1e9)}).encode(), reply=inbox)
        await settle(nc)
        if who.violated("publish", subject):
            return False
        msg = await sub.next_msg(timeout=TIMEOUT)
        assert msg.data == payload, f"pull answered {msg.headers} {msg.data!r}, not the intent"
        return True


async def subscribe(env: BusEnv, who: Principal, target: str) -> bool:
    """`who` subscribes to `target`'s intents; `target` publishes one, then `who`'s own
    instance publishes a sentinel on the same subject. Whatever `target` published
    crossed into `who`'s account only if it arrives before the sentinel."""
    subject = intent_subject(target, "watched")
    async with env.connect(who) as nc, env.connect(env.system(target)) as publisher:
        sub = await nc.subscribe(bus.intent_filter(target, RUNTIME)[1])
        await settle(nc)
        if who.violated("subscription", bus.intent_filter(target, RUNTIME)[1]):
            return False
        await publisher.publish(subject, b"probe")
        await settle(publisher)
        async with env.connect(env.system(who.instance)) as own:
            await own.publish(subject, b"sentinel")
            await settle(own)
        first = await sub.next_msg(timeout=TIMEOUT)
        return first.data == b"probe"


def stream_of(subject: str, target: str) -> str:
    return bus.observations_stream(target) if ".obs." in subject else bus.events_stream(target)


async def stored(env: BusEnv, who: Principal, target: str, subject: str, sentinel: str) -> bool:
    """`who` publishes on `subject`; then `target`'s own system user stores a sentinel on
    `sentinel` in the same stream. The stream holds `who`'s message only if its count
    grew by two (a stream stores what reaches it in order, so once the sentinel is
    acknowledged anything published before it is in)."""
    stream = stream_of(subject, target)
    async with env.connect(env.system(target)) as owner:
        js = owner.jetstream()
        before = (await js.stream_info(stream)).state.messages
        async with env.connect(who) as nc:
            await nc.publish(subject, b"probe")
            await settle(nc)
            if who.violated("publish", subject):
                return False
        await js.publish(sentinel, b"sentinel")
        after = (await js.stream_info(stream)).state.messages
    assert after - before in (1, 2), f"{stream} grew by {after - before}"
    return after - before == 2


async def list_streams(env: BusEnv, who: Principal, target: str) -> bool:
    async with env.connect(who) as nc:
        names = {info.config.name for info in await nc.jetstream().streams_info()}
    assert bus.events_stream(who.instance) in names, f"{who} does not see its own streams: {names}"
    return bus.events_stream(target) in names


async def stream_info(env: BusEnv, who: Principal, target: str) -> bool:
    async with env.connect(who) as nc:
        try:
            info = await nc.jetstream().stream_info(bus.events_stream(target))
        except nats.js.errors.NotFoundError as error:
            assert error.err_code == 10059, error  # stream not found
            return False
    assert info.config.name == bus.events_stream(target)
    return True


async def desired(env: BusEnv, who: Principal, target: str) -> bool:
    """Both instances answer desired-state requests; `who` asks `target`'s."""
    async with env.connect(env.system("a")) as ra, env.connect(env.system("b")) as rb:
        for instance, responder in (("a", ra), ("b", rb)):

            async def answer(msg: Msg, instance: str = instance) -> None:
                await msg.respond(f"desired-of-{instance}".encode())

            await responder.subscribe(natsauth.desired_subjects(instance), cb=answer)
            await settle(responder)
        subject = natsauth.desired_subject(target, RUNTIME)
        async with env.connect(who) as nc:
            prefix = natsauth.agent_inbox_prefix(who.instance, RUNTIME) if who.agent else "_INBOX"
            inbox = f"{prefix}.{secrets.token_hex(8)}"
            sub = await nc.subscribe(inbox)
            await nc.publish(subject, b"", reply=inbox)
            await settle(nc)
            if who.violated("publish", subject):
                return False
            msg = await sub.next_msg(timeout=TIMEOUT)
            if msg.headers and msg.headers.get("Status") == "503":  # no responders
                return False
            assert msg.data == f"desired-of-{target}".encode(), msg.data
            return True


async def create_stream(env: BusEnv, who: Principal, name: str) -> bool:
    async with env.connect(who) as nc:
        try:
            await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"convoy.{who.instance}.extra.{name}"]))
        except nats.js.errors.BadRequestError as error:
            assert error.err_code == 10027, error  # maximum number of streams reached
            return False
    return True


async def store_bytes(env: BusEnv, who: Principal, size: int) -> bool:
    async with env.connect(who) as nc:
        try:
            await nc.jetstream().publish(f"convoy.{who.instance}.evt.limits.probe", b"x" * size)
        except nats.js.errors.BadRequestError as error:
            assert error.err_code == 10002, error  # resource limits exceeded for account
            return False
    return True


async def connect_once_more(env: BusEnv, who: Principal, opened: list[Client]) -> bool:
    try:
        opened.append(await env.open(who, attempts=1))
    except Exception:  # noqa: BLE001 - a refusal is recognised below, anything else re-raised
        if who.refused(CONNECTION_LIMIT):
            return False
        raise
    return True


# -- rows -----------------------------------------------------------------------------

Probe = Callable[[BusEnv, Principal, str], object]


@pytest.mark.parametrize(
    ("row_id", "probe", "who", "target"),
    [
        ("a-agent-pulls-a-intents", pull, ("a", True), "a"),
        ("a-agent-pulls-b-intents", pull, ("a", True), "b"),
        ("a-system-subscribes-a-intents", subscribe, ("a", False), "a"),
        ("b-system-subscribes-a-intents", subscribe, ("b", False), "a"),
        ("a-agent-subscribes-b-intents", subscribe, ("a", True), "b"),
        ("a-system-lists-a-streams", list_streams, ("a", False), "a"),
        ("a-system-lists-b-streams", list_streams, ("a", False), "b"),
        ("a-system-reads-a-stream-info", stream_info, ("a", False), "a"),
        ("a-system-reads-b-stream-info", stream_info, ("a", False), "b"),
        ("a-agent-asks-a-desired", desired, ("a", True), "a"),
        ("a-agent-asks-b-desired", desired, ("a", True), "b"),
        ("b-system-asks-a-desired", desired, ("b", False), "a"),
    ],
)
async def test_reach_row(bus_env: BusEnv, row_id: str, probe: Probe, who: tuple[str, bool], target: str) -> None:
    verdict(row_id, bool(await probe(bus_env, bus_env.principals[who], target)))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("row_id", "who", "target", "subject"),
    [
        ("a-agent-reports-a-observation", ("a", True), "a", bus.observation_subject("a", RUNTIME, "ns", "app", "svc")),
        ("a-agent-reports-b-observation", ("a", True), "b", bus.observation_subject("b", RUNTIME, "ns", "app", "svc")),
        ("b-system-publishes-b-events", ("b", False), "b", "convoy.b.evt.probe.x"),
        ("a-system-publishes-b-events", ("a", False), "b", "convoy.b.evt.probe.x"),
    ],
)
async def test_stored_row(bus_env: BusEnv, row_id: str, who: tuple[str, bool], target: str, subject: str) -> None:
    sentinel = subject.rsplit(".", 1)[0] + ".sentinel"
    verdict(row_id, await stored(bus_env, bus_env.principals[who], target, subject, sentinel))


async def test_max_streams_holds(bus_env: BusEnv) -> None:
    a = bus_env.system("a")
    assert LIMITS.max_streams == 4  # Convoy's three exist: one more fits
    verdict("a-system-creates-stream-within-limit", await create_stream(bus_env, a, "EXTRA_1"))
    verdict("a-system-creates-stream-beyond-limit", await create_stream(bus_env, a, "EXTRA_2"))
    # b's account is untouched by a's streams: b still has its fourth
    assert await create_stream(bus_env, bus_env.system("b"), "EXTRA_1")


async def test_max_storage_holds(bus_env: BusEnv) -> None:
    a = bus_env.system("a")
    assert LIMITS.max_storage is not None
    verdict("a-system-stores-within-limit", await store_bytes(bus_env, a, 1024))
    verdict("a-system-stores-beyond-limit", await store_bytes(bus_env, a, LIMITS.max_storage + 1))
    assert await store_bytes(bus_env, bus_env.system("b"), 1024)  # b's storage is b's own


async def test_max_connections_hold(bus_env: BusEnv) -> None:
    opened: list[Client] = []
    try:
        for who, limit, name in ((bus_env.system("a"), LIMITS.max_connections, "a-system"),
                                 (bus_env.agent("a"), LIMITS.agent_max_connections, "a-agent")):
            assert limit is not None
            for _ in range(limit):  # the connections the fixture closed may still be leaving
                await until_connected(bus_env, who, opened)
            verdict(f"{name}-connects-within-limit", True)
            verdict(f"{name}-connects-beyond-limit", await connect_once_more(bus_env, who, opened))
        # b's accounts are not a's: b connects while a is full
        async with bus_env.connect(bus_env.system("b"), attempts=1), bus_env.connect(bus_env.agent("b"), attempts=1):
            pass
    finally:
        for nc in opened:
            await nc.close()


async def until_connected(env: BusEnv, who: Principal, opened: list[Client]) -> None:
    async def connected() -> bool:
        return await connect_once_more(env, who, opened)

    await eventually(connected, timeout=TIMEOUT, message=f"{who} connects within its limit")
