"""Convoy-kept secrets delivered to agents, least privilege tested: a real nats-server with
the accounts eventstore.natsauth renders, the control plane's DesiredState and the
SecretResponder (services/api/secretdelivery.py) with a real file keyring, and agents
asking through their own SecretClient with their own credentials.

What is shown: an agent receives a secret its desired state names, and the bus carries it
only sealed (another key cannot open the captured answer); runtime A's credential cannot
ask on runtime B's subject; on its own subject A is refused a secret its desired state
does not name (not retryable), told a named-but-unset one is missing (retryable), and
told so when the control plane does not answer (retryable); a reply pointed at B's inbox
never reaches B.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from eventstore import natsauth
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import convergence_pb2, events_pb2, resources_pb2, secrets_pb2
from services.agent.runtimes.base import Workload, WorkloadKey
from services.agent.secretclient import SecretClient
from services.api.auth import nats_password_bcrypt
from services.api.domain import State
from services.api.domain.state import SecretRecord
from services.api.secretdelivery import SecretResponder
from services.api.secrets import SecretSealer
from services.secrets import sealing
from services.secrets.keyring import FileKeyring
from services.secrets.references import SecretUnavailable
from tests.conftest import eventually
from tests.contract.runtime_suite import make_workload
from tests.integration.test_agent_permissions import (  # noqa: F401 - fixtures
    SYSTEM_PASSWORD,
    agent_of,
    auth_nats,
    foreign_replies,
    listening_as,
    plane,
)
from tests.integration.test_agent_support import Plane

VALUE = f"sealed-value-{uuid.uuid4().hex}"


class Keeper:
    """The API side's catalog and keyring, as the composition hands them to the
    responder (`SecretSealer.resolver`): secrets set here are sealed by a real keyring."""

    def __init__(self, tmp_path: Path) -> None:
        self.ring = FileKeyring(path=tmp_path / "secrets.keys")
        self.sealer = SecretSealer(keyring=self.ring)
        self.state = State()

    def set(self, name: str, value: str) -> None:
        s = self.ring.seal(name, value)
        self.state = State(secrets={**self.state.secrets, name: SecretRecord(name, s.key_id, s.nonce, s.ciphertext)})

    def resolver(self):  # type: ignore[no-untyped-def]
        return self.sealer.resolver(lambda: self.state)


class Wire:
    """Every message the control plane's account carries: (subject, reply, data)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def start(self, nc: Client) -> None:
        async def on_msg(msg: object) -> None:
            self.seen.append((msg.subject, msg.reply, msg.data))  # type: ignore[attr-defined]

        await nc.subscribe(">", cb=on_msg)
        await nc.flush()

    def answers_to(self, subject: str) -> list[bytes]:
        replies = {r for s, r, _ in self.seen if s == subject and r}
        return [d for s, _, d in self.seen if s in replies]


def spec_naming(*refs: str, service: str = "web") -> convergence_pb2.WorkloadSpec:
    program = resources_pb2.Program(name="web", command=["sleep", "60"])
    for i, name in enumerate(refs):
        program.secret_env[f"S{i}"].CopyFrom(resources_pb2.SecretRef(convoy=name))
    return convergence_pb2.WorkloadSpec(application="shop", service=service, channel="prod", version="v1", replicas=1,
                                        programs=[program])


async def give(plane: Plane, runtime: str, spec: convergence_pb2.WorkloadSpec) -> Workload:
    """An intent for `runtime` whose spec is `spec`, folded into the desired state."""
    message = events_pb2.IntentIssued(
        intent_id=f"intent-{uuid.uuid4().hex[:8]}",
        target=convergence_pb2.Target(runtime=runtime, namespace="prod"),
        action=convergence_pb2.INTENT_ACTION_APPLY,
        spec=spec,
        spec_hash=hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:20],
        generation=1,
    )
    await plane.append_intent(message)
    return make_workload(WorkloadKey(namespace="prod", application="shop", service=spec.service), spec, generation=1)


@contextlib.asynccontextmanager
async def responding(plane: Plane, keeper: Keeper) -> AsyncIterator[SecretResponder]:
    async with SecretResponder(nc=plane.nc, instance=plane.instance, desired=plane.desired,
                               resolve=keeper.resolver()) as responder:
        await plane.nc.flush()
        yield responder


async def credentials(plane: Plane) -> dict[str, str]:
    """Each runtime registered by a reload of its own (rt-a, then rt-b)."""
    out = {rt: secrets.token_urlsafe(32) for rt in ("rt-a", "rt-b")}
    for rt, secret in out.items():
        await plane.register(rt, bcrypt=nats_password_bcrypt(secret))
    return out


async def test_an_agent_receives_a_secret_its_desired_state_names_and_the_bus_carries_it_sealed(
    plane: Plane, auth_nats: NatsServer, tmp_path: Path
) -> None:
    creds = await credentials(plane)
    keeper = Keeper(tmp_path)
    keeper.set("db-password", VALUE)
    inst = plane.instance
    workload = await give(plane, "rt-a", spec_naming("db-password"))
    wire = Wire()
    await wire.start(plane.nc)
    async with responding(plane, keeper) as responder, agent_of(auth_nats.url, inst, "rt-a", creds["rt-a"]) as (conn, nc):
        client = SecretClient(nc=nc, instance=inst, runtime="rt-a")
        assert await client.fetch(workload, "db-password") == VALUE
        assert responder.delivered == 1 and not conn.errors
    await plane.nc.flush()

    # The request and the answer crossed the control plane's account; the value never did in clear.
    answers = wire.answers_to(natsauth.secret_subject(inst, "rt-a"))
    assert len(answers) == 1
    assert all(VALUE.encode() not in data for _, _, data in wire.seen)
    answer = secrets_pb2.SecretAnswer.FromString(answers[0])
    assert answer.WhichOneof("outcome") == "sealed"
    captured = sealing.Sealed(answer.sealed.ephemeral_public_key, answer.sealed.nonce, answer.sealed.ciphertext)
    # Anyone else holding the answer — with a key of their own — cannot open it.
    with pytest.raises(sealing.SealingError, match="does not open"):
        sealing.RequestKey().open(captured, instance=inst, runtime="rt-a", name="db-password")


async def test_a_runtime_cannot_ask_on_another_runtimes_secret_subject(
    plane: Plane, auth_nats: NatsServer, tmp_path: Path
) -> None:
    creds = await credentials(plane)
    keeper = Keeper(tmp_path)
    keeper.set("b-password", VALUE)
    inst = plane.instance
    workload_b = await give(plane, "rt-b", spec_naming("b-password"))
    async with responding(plane, keeper) as responder, agent_of(auth_nats.url, inst, "rt-a", creds["rt-a"]) as (conn, nc):
        # A, speaking as B: NATS refuses the publish itself.
        as_b = SecretClient(nc=nc, instance=inst, runtime="rt-b", timeout=0.5)
        with pytest.raises(SecretUnavailable):
            await as_b.fetch(workload_b, "b-password")
        subject_b = natsauth.secret_subject(inst, "rt-b")
        await eventually(lambda: conn.violated(f'Publish to "{subject_b}"'), message="A's publish as B refused")
        # On its own subject, B's secret is not A's: refused, and retrying will not help.
        mine = SecretClient(nc=nc, instance=inst, runtime="rt-a")
        with pytest.raises(SecretUnavailable, match="NOT_REFERENCED") as refused:
            await mine.fetch(workload_b, "b-password")
        assert not refused.value.retryable and VALUE not in str(refused.value)
        assert responder.delivered == 0


async def test_refusals_are_typed_and_say_whether_a_retry_can_help(
    plane: Plane, auth_nats: NatsServer, tmp_path: Path
) -> None:
    creds = await credentials(plane)
    keeper = Keeper(tmp_path)
    keeper.set("db-password", VALUE)
    keeper.set("other", VALUE + "-other")
    inst = plane.instance
    workload = await give(plane, "rt-a", spec_naming("db-password", "not-set-yet"))
    async with responding(plane, keeper), agent_of(auth_nats.url, inst, "rt-a", creds["rt-a"]) as (_, nc):
        client = SecretClient(nc=nc, instance=inst, runtime="rt-a")
        with pytest.raises(SecretUnavailable, match="NOT_REFERENCED") as not_named:
            await client.fetch(workload, "other")  # kept, but this workload does not name it
        assert not not_named.value.retryable
        other_service = make_workload(WorkloadKey(namespace="prod", application="shop", service="api"),
                                      spec_naming("db-password", service="api"), generation=1)
        with pytest.raises(SecretUnavailable, match="NOT_REFERENCED"):
            await client.fetch(other_service, "db-password")  # named, but for no workload "api" of A's
        with pytest.raises(SecretUnavailable, match="MISSING") as missing:
            await client.fetch(workload, "not-set-yet")
        assert missing.value.retryable and "convoy:not-set-yet" in str(missing.value)
        keeper.set("not-set-yet", "now-set")
        assert await client.fetch(workload, "not-set-yet") == "now-set"  # the retry helps


@pytest.mark.fault
async def test_a_control_plane_that_does_not_answer_is_a_retryable_failure(
    plane: Plane, auth_nats: NatsServer, tmp_path: Path
) -> None:
    creds = await credentials(plane)
    keeper = Keeper(tmp_path)
    keeper.set("db-password", VALUE)
    workload = await give(plane, "rt-a", spec_naming("db-password"))
    async with agent_of(auth_nats.url, plane.instance, "rt-a", creds["rt-a"]) as (conn, nc):
        client = SecretClient(nc=nc, instance=plane.instance, runtime="rt-a", timeout=0.5)
        with pytest.raises(SecretUnavailable, match="nobody answers secret requests|did not answer") as unreachable:
            await client.fetch(workload, "db-password")  # no responder runs
        assert unreachable.value.retryable and not conn.errors
        async with responding(plane, keeper):
            assert await client.fetch(workload, "db-password") == VALUE  # back: the retry works


async def test_a_secret_answer_never_reaches_another_runtimes_inbox(
    plane: Plane, auth_nats: NatsServer, tmp_path: Path
) -> None:
    creds = await credentials(plane)
    keeper = Keeper(tmp_path)
    keeper.set("db-password", VALUE)
    inst = plane.instance
    workload = await give(plane, "rt-a", spec_naming("db-password"))
    request = secrets_pb2.SecretRequest(name="db-password", application="shop", service="web", channel="prod",
                                        public_key=sealing.RequestKey().public)
    async with (
        responding(plane, keeper),
        listening_as(auth_nats.url, inst, "rt-b", creds["rt-b"]) as heard_by_b,
        agent_of(auth_nats.url, inst, "rt-a", creds["rt-a"]) as (_, nc),
    ):
        for reply in foreign_replies(inst, "rt-b"):
            await nc.publish(natsauth.secret_subject(inst, "rt-a"), request.SerializeToString(), reply=reply)
        # Requests are answered in order: once A's own is answered, the others were dealt with.
        assert await SecretClient(nc=nc, instance=inst, runtime="rt-a").fetch(workload, "db-password") == VALUE
    assert heard_by_b == []


async def test_without_accounts_the_responder_itself_answers_only_the_asking_runtimes_inbox(
    pg_store: PostgresEventStore, embedded_nats: NatsServer, subject_prefix: str, tmp_path: Path
) -> None:
    """One NATS account where anyone may publish anything (a server configured by hand):
    a reply outside the asking runtime's inbox prefix is dropped unanswered."""
    from tests.integration.test_agent_support import control_plane

    keeper = Keeper(tmp_path)
    keeper.set("db-password", VALUE)
    async with control_plane(pg_store, embedded_nats.url, subject_prefix) as made:
        await made.register("rt-a")
        workload = await give(made, "rt-a", spec_naming("db-password"))
        request = secrets_pb2.SecretRequest(name="db-password", application="shop", service="web", channel="prod",
                                            public_key=sealing.RequestKey().public)
        async with responding(made, keeper) as responder:
            nc = await embedded_nats_client(embedded_nats.url, subject_prefix)
            try:
                for reply in foreign_replies(subject_prefix, "rt-b"):
                    await nc.publish(natsauth.secret_subject(subject_prefix, "rt-a"), request.SerializeToString(), reply=reply)
                client = SecretClient(nc=nc, instance=subject_prefix, runtime="rt-a")
                assert await client.fetch(workload, "db-password") == VALUE
            finally:
                await nc.close()
            assert responder.dropped == len(foreign_replies(subject_prefix, "rt-b"))
            assert responder.delivered == 1


async def embedded_nats_client(url: str, instance: str) -> Client:
    from eventstore import bus

    return await bus.connect(url, name="rogue", inbox_prefix=natsauth.agent_inbox_prefix(instance, "rt-a"))


async def test_every_runtime_registered_one_reload_at_a_time_is_answered(
    plane: Plane, auth_nats: NatsServer, tmp_path: Path
) -> None:
    """nats-server 2.15 wires a reload-added account's imports to a stale exporter unless
    it reloads again (eventstore.embedded.NatsServer.reload does): without that, rt-b —
    registered by the second reload — got "no responders" here."""
    creds = await credentials(plane)
    keeper = Keeper(tmp_path)
    keeper.set("a-password", VALUE)
    keeper.set("b-password", VALUE + "-b")
    workloads = {"rt-a": await give(plane, "rt-a", spec_naming("a-password")),
                 "rt-b": await give(plane, "rt-b", spec_naming("b-password"))}
    async with responding(plane, keeper):
        for runtime, name, value in (("rt-b", "b-password", VALUE + "-b"), ("rt-a", "a-password", VALUE)):
            async with agent_of(auth_nats.url, plane.instance, runtime, creds[runtime]) as (conn, nc):
                client = SecretClient(nc=nc, instance=plane.instance, runtime=runtime)
                assert await client.fetch(workloads[runtime], name) == value, runtime
                assert not conn.errors
