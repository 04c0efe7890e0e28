"""PostgreSQL failover mid-release: the primary dies, the synchronous standby is promoted,
and Convoy's processes carry on without a restart, losing and doubling nothing.

`convoy api` (with the relay, observation ingest and desired state), `convoy planner` and a
`convoy agent` run as separate processes on the multi-host URL
`…@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write` (tests/scale/
pgreplica.py builds the pair). A client issues commands in a loop, each under its own
idempotency key, and deploys a release that rolls through three staging namespaces one at
a time and then waits for a person in prod. When the first staging intent is in the log
the test catches a command in flight (the standby's WAL receiver is stopped, so commits
wait on the primary for it), kills every process of the primary (SIGKILL), waits until that
command was answered UNAVAILABLE (nothing takes writes meanwhile) and promotes the standby;
the processes reconnect on their own. Then, read from the new primary:

- every command whose answer the client received is in the log (its event ids);
- the commands in flight failed with UNAVAILABLE and a message that says PostgreSQL was
  unavailable (retryable), and their retry under the same key has exactly one effect (one
  ApplicationCreated per command, the one its final answer names);
- no intent was issued twice (IntentIssued per service, target and release);
- the release completes (prod approved after the failover, converged) and
  `convoy replay --check` finds the planner's record identical to a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf.message import Message

from cli import localstate
from eventstore.embedded import NatsServer
from eventstore.errors import Unavailable
from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import NewEvent, RecordedEvent
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, convergence_pb2, events_pb2, resources_pb2
from services.api.errors import RETRY_HINT
from tests.conftest import eventually, fresh_store
from tests.e2e.processes import convoy, service_process
from tests.scale.pgreplica import ReplicatedPostgres

pytestmark = [pytest.mark.scale, pytest.mark.fault]

RUNTIME = "rt"
STAGING = [f"stg-{i}" for i in range(3)]
DECLARATIONS = f"""
runtime:
  name: {RUNTIME}
  kind: exec
  exec:
    apply: ["convoy-local", "apply"]
---
application:
  name: fleet
  releaseChannels:
    - name: staging
      maxConcurrentRuntimes: 1
      runtimes:
{"".join(f'''        - runtime: {RUNTIME}
          namespace: {ns}
''' for ns in STAGING)}    - name: prod
      runtimes:
        - runtime: {RUNTIME}
          namespace: prod
      preconditions:
        - channelStable:
            channel: staging
        - manualApproval:
            name: signoff
            minApprovers: 1
---
service:
  application: fleet
  name: web
  replicas: 1
  programs:
    - name: web
      command: ["true"]
"""
DEADLINE = 60.0
"""Seconds any awaited condition may take; bounds failure only."""


@dataclass
class Answers:
    """What the command loop's client received, per idempotency key."""

    ok: dict[str, api_pb2.WriteResult] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)
    """time.monotonic() of each answer."""
    sent_at: dict[str, float] = field(default_factory=dict)
    """time.monotonic() of each command's first attempt."""
    failed: dict[str, list[tuple[grpc.StatusCode, str]]] = field(default_factory=dict)
    """The retryable failures each command got before its answer."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def outstanding(self) -> str | None:
        """The command sent and not answered yet, if there is one."""
        return next((k for k in self.sent_at if k not in self.ok), None)


class Api:
    """gRPC stubs on the API `convoy api` wrote to its state folder, as the admin."""

    def __init__(self, state_dir: Path) -> None:
        endpoint = localstate.read_endpoint(state_dir)
        token = localstate.read_admin_token(state_dir)
        assert endpoint is not None and token is not None
        self.channel = grpc.aio.insecure_channel(endpoint.grpc)
        self.token = token
        self.applications = api_pb2_grpc.ApplicationServiceStub(self.channel)
        self.releases = api_pb2_grpc.ReleaseServiceStub(self.channel)

    def metadata(self, key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"), ("idempotency-key", key))

    async def until_answered(
        self, key: str, call: Callable[..., Awaitable[Message]], request: Message, answers: Answers | None = None
    ) -> Message:
        """Call until it is answered, retrying a retryable failure under the same key."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                return await call(request, metadata=self.metadata(key), timeout=20)
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if answers is not None:
                    answers.failed.setdefault(key, []).append((error.code(), error.details() or ""))
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # the client's retry interval


async def command_loop(api: Api, answers: Answers) -> None:
    """One new application per command, each under its own key, until told to stop."""
    n = 0
    while not answers.stop.is_set():
        key = f"loop-{n}"
        request = api_pb2.ApplyApplicationRequest(
            application=resources_pb2.Application(
                name=key,
                release_channels=[
                    resources_pb2.ReleaseChannel(
                        name="dev", runtimes=[resources_pb2.RuntimeBinding(runtime=RUNTIME, namespace=key)]
                    )
                ],
            )
        )
        answers.sent_at[key] = time.monotonic()
        answer = await api.until_answered(key, api.applications.ApplyApplication, request, answers)
        assert isinstance(answer, api_pb2.WriteResult)
        answers.ok[key] = answer
        answers.answered_at[key] = time.monotonic()
        n += 1


@contextlib.asynccontextmanager
async def log_reader(dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


async def events_of(conn: asyncpg.Connection, type_suffix: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT position, stream_id, event_id, data FROM events WHERE type LIKE $1 ORDER BY position", f"%{type_suffix}"
    )


async def test_primary_dies_mid_release_and_nothing_acknowledged_is_lost_or_doubled(
    tmp_path: Path, embedded_nats: NatsServer, schema_name: str
) -> None:
    pair = ReplicatedPostgres(tmp_path / "pg")
    await pair.start()
    try:
        await _failover_mid_release(tmp_path, pair, embedded_nats, schema_name)
    finally:
        pair.stop()


async def _failover_mid_release(tmp_path: Path, pair: ReplicatedPostgres, nats: NatsServer, instance: str) -> None:
    state = tmp_path / "state"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env = base | {
        "CONVOY_DATABASE_URL": pair.dsn, "CONVOY_NATS_URL": nats.url, "CONVOY_INSTANCE": instance,
        "CONVOY_STATE_DIR": str(state), "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
    }
    declarations = tmp_path / "fleet.yaml"
    declarations.write_text(DECLARATIONS)
    primary_dsn = pair.server_dsn(pair.primary)
    async with (
        service_process(env, "api", "--grpc-port", "0", "--http-port", "0", ready="press Ctrl-C") as api_output,
        service_process(env, "planner", "--ops-port", "0", ready="press Ctrl-C"),
    ):
        code, out = await convoy(env, "apply", "-f", str(declarations))
        assert code == 0, out
        async with service_process(
            env, "agent", "--runtime", RUNTIME, "--kind", "memory", "--state-dir", str(tmp_path / "agent"),
            "--instance", instance, "--health", "", ready="agent ready",
        ):
            api = Api(state)
            answers = Answers()
            loop = asyncio.create_task(command_loop(api, answers), name="command-loop")
            try:
                await eventually(lambda: len(answers.ok) >= 5, timeout=DEADLINE, message="commands answered")
                deployed = await api.until_answered(
                    "deploy-web-v1", api.releases.Deploy,
                    api_pb2.DeployRequest(application="fleet", service="web", version="v1"),
                )
                assert isinstance(deployed, api_pb2.DeployResponse)
                release_id = deployed.release.id

                # Mid-release, from observed progress: the first staging intent is recorded.
                # Then a command is caught in flight: the standby stops acknowledging, so commits
                # wait on the primary (holding the append lock: every later write queues behind
                # them), and the primary dies once a command is outstanding and not committed.
                async with log_reader(primary_dsn, instance) as primary:
                    async def first_intent() -> bool:
                        return bool(await events_of(primary, "IntentIssued"))

                    await eventually(first_intent, timeout=DEADLINE, message="the first staging intent")
                    await pair.pause_replication()
                    in_flight: str | None = None

                    async def command_in_flight() -> bool:
                        # Outstanding, not committed (no commit can complete now): it cannot be
                        # answered before the kill, whichever step it is at.
                        nonlocal in_flight
                        in_flight = answers.outstanding()
                        return (
                            in_flight is not None
                            and await pair.commits_waiting(primary) > 0
                            and not await primary.fetchval(
                                "SELECT count(*) FROM events WHERE stream_id = $1", f"app/{in_flight}"
                            )
                        )

                    await eventually(command_in_flight, timeout=DEADLINE, message="a command in flight")
                assert in_flight is not None
                answered_before = set(answers.ok)
                killed_wall = datetime.now(UTC)
                await pair.kill_primary()
                # No server takes writes now: the command in flight can only fail. Once it has
                # (observed), the standby is promoted — Patroni or the cloud would, later.
                await eventually(lambda: in_flight in answers.failed, timeout=DEADLINE, message="the in-flight answer")
                promote_s = await pair.promote_standby()
                promoted_at = time.monotonic()

                # The processes carry on: new commands are answered on the new primary.
                await eventually(
                    lambda: len(answers.ok) >= len(answered_before) + 10, timeout=DEADLINE,
                    message="commands answered after the failover",
                )
                async with log_reader(pair.dsn, instance) as log:
                    async def prod_waits() -> bool:
                        rows = await events_of(log, "InstanceStatusChanged")
                        changes = [events_pb2.InstanceStatusChanged.FromString(bytes(r["data"])) for r in rows]
                        return any(
                            c.channel == "prod" and not c.target.runtime
                            and c.new_status == convergence_pb2.INSTANCE_STATUS_WAITING_APPROVAL
                            for c in changes
                        )

                    await eventually(prod_waits, timeout=DEADLINE, interval=0.1, message="prod waits for approval")
                    await api.until_answered(
                        "approve-prod", api.releases.Approve,
                        api_pb2.ApproveRequest(application="fleet", service="web", channel="prod", release_id=release_id),
                    )

                    async def prod_converged() -> bool:
                        rows = await events_of(log, "InstanceStatusChanged")
                        changes = [events_pb2.InstanceStatusChanged.FromString(bytes(r["data"])) for r in rows]
                        return any(
                            c.channel == "prod" and not c.target.runtime and c.release_id == release_id
                            and c.new_status == convergence_pb2.INSTANCE_STATUS_CONVERGED
                            for c in changes
                        )

                    await eventually(prod_converged, timeout=DEADLINE, interval=0.1, message="the release completes")
                    answers.stop.set()
                    await asyncio.wait_for(loop, DEADLINE)
                    await _assert_nothing_lost_or_doubled(log, answers, release_id)
                    # Whether the in-flight commits reached the standby before the primary died
                    # (then the retries were answered from their receipts) or not (recorded now).
                    survived = await log.fetchval(
                        "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[]) AND recorded_at < $2",
                        [i for k in answers.failed for i in answers.ok[k].event_ids], killed_wall,
                    )
                # The relay's advisory lock died with the primary's session; it took it again
                # on the new primary (and published the rest of the release: it completed).
                assert "".join(api_output).count("relay leads") == 2, "".join(api_output)[-4000:]
                recovered_s = min(at for at in answers.answered_at.values() if at > promoted_at) - promoted_at
            finally:
                answers.stop.set()
                if not loop.done():
                    loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
                await api.channel.close()

        code, out = await convoy(env, "replay", "--check")
        assert code == 0 and " 0 difference(s)" in out, out
    print(
        f"RESULT promote_s={promote_s:.2f} first_answer_after_promotion_s={recovered_s:.2f} "
        f"commands={len(answers.ok)} retried={len(answers.failed)} retried_committed_before_the_kill={survived}"
    )


async def _assert_nothing_lost_or_doubled(log: asyncpg.Connection, answers: Answers, release_id: str) -> None:
    # Every answered command is in the new primary's log.
    stored = {str(r["event_id"]) for r in await log.fetch("SELECT event_id FROM events")}
    for key, answer in answers.ok.items():
        assert answer.changed and answer.event_ids, (key, answer)
        missing = set(answer.event_ids) - stored
        assert not missing, f"{key}: answered, but {missing} is not in the new primary's log"

    # The commands in flight were told to retry, in words; each retry had exactly one effect.
    assert answers.failed, "no command was in flight across the failover"
    for key, failures in answers.failed.items():
        for code, message in failures:
            assert code == grpc.StatusCode.UNAVAILABLE and message.endswith(RETRY_HINT), (key, code, message)
    messages = [message for failures in answers.failed.values() for _, message in failures]
    assert any(message.startswith("PostgreSQL unavailable during") for message in messages), messages
    created: dict[str, list[str]] = {}
    for row in await events_of(log, "ApplicationCreated"):
        name = events_pb2.ApplicationCreated.FromString(bytes(row["data"])).application.name
        created.setdefault(name, []).append(str(row["event_id"]))
    for key, answer in answers.ok.items():
        assert created.get(key) == list(answer.event_ids), f"{key}: effects {created.get(key)}, answered {answer}"

    # No intent issued twice: one per service, target and release.
    intents: Counter[tuple[str, str, str, str]] = Counter()
    for row in await events_of(log, "IntentIssued"):
        intent = events_pb2.IntentIssued.FromString(bytes(row["data"]))
        intents[(intent.spec.service, intent.target.runtime, intent.target.namespace, intent.spec.release_id)] += 1
    assert intents == Counter({("web", RUNTIME, ns, release_id): 1 for ns in [*STAGING, "prod"]}), intents


async def test_the_store_refuses_writes_on_a_standby_and_follows_the_failover(tmp_path: Path) -> None:
    """The store alone, on the same pair: a write on a standby is `Unavailable` (a single
    endpoint can point at one for a moment), not a bug; after the kill a write is
    `Unavailable` until the promotion and then succeeds with the same ids; a tail that
    cannot poll (idle_poll of an hour) listens again on the new primary and hears of it."""
    pair = ReplicatedPostgres(tmp_path / "pg")
    await pair.start()
    try:
        async with fresh_store(pair.dsn) as store:
            on_standby = await PostgresEventStore.open(PostgresSettings(dsn=pair.server_dsn(pair.standby), schema=store.schema))
            try:
                heard: list[RecordedEvent] = []

                async def follow() -> None:
                    async for event in store.tail(idle_poll=3600):
                        heard.append(event)

                tail = asyncio.create_task(follow(), name="tail")
                try:
                    first = NewEvent("convoy.v1.Test", b"before")
                    await store.append("app/a", [first])
                    await eventually(lambda: len(heard) == 1, timeout=DEADLINE, message="the tail hears the first")
                    with pytest.raises(Unavailable, match="ReadOnlySQLTransactionError"):
                        await on_standby.append("app/a", [NewEvent("convoy.v1.Test", b"on the standby")])

                    await pair.kill_primary()
                    during = [NewEvent("convoy.v1.Test", b"during")]
                    with pytest.raises(Unavailable):
                        await store.append("app/a", during)
                    await pair.promote_standby()
                    result = await store.append("app/a", during)  # the same ids, once
                    assert result.positions == (2,)
                    again = await on_standby.append("app/a", [NewEvent("convoy.v1.Test", b"via the endpoint")])
                    assert again.positions == (3,)  # its endpoint is the primary now

                    async with log_reader(pair.dsn, store.schema) as new_primary:
                        async def listening() -> bool:
                            return bool(await new_primary.fetchval(
                                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
                            ))

                        await eventually(listening, timeout=DEADLINE, message="the tail listens on the new primary")
                    await store.append("app/a", [NewEvent("convoy.v1.Test", b"after")])
                    await eventually(lambda: len(heard) == 4, timeout=DEADLINE, message="the tail hears the rest")
                    assert [e.data for e in heard] == [b"before", b"during", b"via the endpoint", b"after"]
                finally:
                    tail.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await tail
            finally:
                await on_standby.close()
    finally:
        pair.stop()
