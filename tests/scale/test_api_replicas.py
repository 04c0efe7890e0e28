"""Two `convoy api` processes serve one instance (one PostgreSQL schema, one NATS), as
real subprocesses: what a load balancer in front of several API replicas needs.

- Read-your-writes on both: a command answered by one process is visible in a read on
  the other right after, because the client passes the position it was answered
  (`convoy-min-position` metadata, `Convoy-Min-Position` header, `CONVOY_MIN_POSITION`
  for the CLI) and the reading process waits until its read model folded it.
- One idempotency key sent to A and then to B has one effect: B replays A's answer.
- One relay publishes at a time (a PostgreSQL advisory lock): the process holding it is
  killed with SIGKILL mid-release — staging converged (its relay published staging's
  intent), prod waiting for its approval — and the other takes the lock over; the
  approval and prod's intent are written after the kill, so the release completes only
  if the survivor publishes them; every event of the log is in the stream exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import nats
import pytest

from cli import localstate
from eventstore import bus
from eventstore.embedded import NatsServer
from eventstore.postgres import PostgresEventStore, PostgresSettings
from schemas.convoy.v1 import api_pb2, api_pb2_grpc
from tests.conftest import eventually
from tests.e2e.processes import ROOT, ConvoyProcess, convoy, convoy_process, service_process
from tests.scale import exec_runtime

pytestmark = pytest.mark.scale

EXAMPLES = ROOT / "examples" / "shop"


@dataclass
class ApiReplica:
    name: str
    process: ConvoyProcess
    state_dir: Path
    grpc: str
    rest: str

    def readyz(self) -> dict[str, object]:
        try:
            with urllib.request.urlopen(f"{self.rest}/readyz", timeout=5) as answer:  # noqa: S310 - loopback
                body: dict[str, object] = json.loads(answer.read())
        except urllib.error.HTTPError as error:  # 503: not ready, same body
            body = json.loads(error.read())
        return body

    def relay_leads(self) -> bool:
        checks = self.readyz().get("checks", {})
        relay = checks.get("relay", {}) if isinstance(checks, dict) else {}
        return isinstance(relay, dict) and str(relay.get("detail", "")).startswith("leading")


def base_env(tmp_path: Path, database_url: str, schema_name: str, nats_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env |= {
        "CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": schema_name,
        "CONVOY_STATE_DIR": str(tmp_path / "state"), "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
    }
    if nats_url:
        env["CONVOY_NATS_URL"] = nats_url
    return env


@asynccontextmanager
async def two_apis(
    env: dict[str, str], tmp_path: Path, *, count: int = 2
) -> AsyncIterator[tuple[ApiReplica, ApiReplica, str]]:
    """API processes A and B (each its own state folder; with `count=1` A is B), and the
    bootstrap admin token (written by whichever of them created it: they race, one token
    is created)."""
    async with AsyncExitStack() as stack:
        replicas = []
        for name in ("a", "b")[:count]:
            state = tmp_path / f"api-{name}"
            running = await stack.enter_async_context(
                convoy_process(env | {"CONVOY_STATE_DIR": str(state)}, "api", "--grpc-port", "0", "--http-port", "0",
                               ready="API ready")
            )
            endpoint = localstate.read_endpoint(state)
            assert endpoint is not None, running.output
            replicas.append(ApiReplica(name, running, state, endpoint.grpc, endpoint.rest))
        tokens = [t for r in replicas if (t := localstate.read_admin_token(r.state_dir))]
        assert len(tokens) == 1, tokens
        yield replicas[0], replicas[-1], tokens[0]


def stub(address: str) -> tuple[grpc.Channel, api_pb2_grpc.ReleaseServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, api_pb2_grpc.ReleaseServiceStub(channel)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def test_reads_on_either_process_see_writes_answered_by_the_other(
    tmp_path: Path, database_url: str, schema_name: str
) -> None:
    env = base_env(tmp_path, database_url, schema_name, None)
    try:
        async with two_apis(env, tmp_path) as (a, b, token):
            auth = ("authorization", f"Bearer {token}")
            cli_env = env | {"CONVOY_TOKEN": token}
            code, out = await convoy(cli_env | {"CONVOY_ENDPOINT": a.grpc}, "apply", "-f", str(EXAMPLES))
            assert code == 0, out

            def round_trips() -> list[str]:
                """Deploy on one process, list on the other with the answer's position; both ways."""
                seen: list[str] = []
                channels = [stub(a.grpc), stub(b.grpc)]
                try:
                    for i in range(12):
                        (_, writer), (_, reader) = channels[i % 2], channels[(i + 1) % 2]
                        version = f"v{i}"
                        answer = writer.Deploy(
                            api_pb2.DeployRequest(application="shop", service="web", version=version),
                            metadata=[auth], timeout=30,
                        )
                        assert answer.write.position > 0
                        # ListReleases has no min_position of its own here: the header carries it.
                        listed = reader.ListReleases(
                            api_pb2.ListReleasesRequest(application="shop", service="web"),
                            metadata=[auth, ("convoy-min-position", str(answer.write.position))], timeout=30,
                        )
                        versions = {r.version for r in listed.releases}
                        assert version in versions, (i, sorted(versions))
                        seen.append(version)
                    # The same idempotency key sent to A, then to B: one release, B replays A's answer.
                    key = [("idempotency-key", "replicas-one-effect")]
                    request = api_pb2.DeployRequest(application="shop", service="web", version="once")
                    first = channels[0][1].Deploy(request, metadata=[auth, *key], timeout=30)
                    again = channels[1][1].Deploy(request, metadata=[auth, *key], timeout=30)
                    assert again.release.id == first.release.id and again.write.position == first.write.position
                    listed = channels[1][1].ListReleases(
                        api_pb2.ListReleasesRequest(application="shop", service="web"),
                        metadata=[auth, ("convoy-min-position", str(first.write.position))], timeout=30,
                    )
                    assert [r.version for r in listed.releases].count("once") == 1
                    # A position beyond the log is the caller's mistake, not an outage.
                    with pytest.raises(grpc.RpcError) as refused:
                        channels[1][1].ListReleases(
                            api_pb2.ListReleasesRequest(application="shop"),
                            metadata=[auth, ("convoy-min-position", str(first.write.position + 10_000))], timeout=30,
                        )
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
                    return seen
                finally:
                    for channel, _ in channels:
                        channel.close()

            assert len(await asyncio.to_thread(round_trips)) == 12

            # REST: the Convoy-Min-Position header.
            code, out = await convoy(cli_env | {"CONVOY_ENDPOINT": a.grpc}, "deploy", "shop/web", "--version", "rest",
                                     "-o", "json")
            assert code == 0, out
            position = int(json.loads(out)["write"]["position"])

            def rest_list() -> list[str]:
                request = urllib.request.Request(
                    f"{b.rest}/v1/applications/shop/services/web/releases",
                    headers={"Authorization": f"Bearer {token}", "Convoy-Min-Position": str(position)},
                )
                with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
                    return [r["version"] for r in json.loads(answer.read())["releases"]]

            assert "rest" in await asyncio.to_thread(rest_list)
            # The CLI: CONVOY_MIN_POSITION (a script passes on the position a command printed).
            code, out = await convoy(cli_env | {"CONVOY_ENDPOINT": a.grpc}, "deploy", "shop/web", "--version", "cli",
                                     "-o", "json")
            assert code == 0, out
            position = int(json.loads(out)["write"]["position"])
            code, out = await convoy(
                cli_env | {"CONVOY_ENDPOINT": b.grpc, "CONVOY_MIN_POSITION": str(position)},
                "releases", "list", "shop/web", "-o", "json",
            )
            assert code == 0 and '"cli"' in out, out
            code, out = await convoy(cli_env | {"CONVOY_ENDPOINT": b.grpc, "CONVOY_MIN_POSITION": "x"},
                                     "releases", "list", "shop/web")
            assert code == 2 and "CONVOY_MIN_POSITION" in out, out
    finally:
        await drop_schema(database_url, schema_name)


async def stream_ids(nats_url: str, instance: str) -> list[str]:
    """Every message's Nats-Msg-Id in the events stream, in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = bus.events_stream(instance)
        info = await js.stream_info(stream)
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            ids.append((msg.headers or {}).get(bus.H_MSG_ID, ""))
        return ids
    finally:
        await nc.close()


async def stream_last(nats_url: str, instance: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(bus.events_stream(instance))).state.last_seq)
    finally:
        await nc.close()


def staged_config(root: Path) -> Path:
    """An application whose release stops halfway by design: staging, then prod behind a
    manual approval, on an exec runtime (tests/scale/exec_runtime.py)."""
    command = json.dumps(exec_runtime.commands(root))
    folder = root / "config"
    folder.mkdir()
    (folder / "all.yaml").write_text(
        f"runtime:\n  name: {RUNTIME}\n  kind: exec\n  exec:\n    apply: {command}\n    fetch: {command}\n"
        f"    delete: {command}\n---\n"
        "application:\n  name: flow\n  releaseChannels:\n"
        f"    - name: staging\n      runtimes: [{{runtime: {RUNTIME}, namespace: staging}}]\n"
        f"    - name: prod\n      runtimes: [{{runtime: {RUNTIME}, namespace: prod}}]\n"
        "      preconditions:\n        - channelStable: {channel: staging}\n"
        "        - manualApproval: {name: signoff, minApprovers: 1}\n---\n"
        "service:\n  application: flow\n  name: web\n  programs:\n    - image: registry.example/web:1\n"
    )
    return folder


RUNTIME = "rt-relay"


async def statuses(cli_env: dict[str, str]) -> dict[str, str]:
    """Per channel of flow/web, its status (the channel's, as its state machine has it)."""
    code, out = await convoy(cli_env, "status", "flow", "-o", "json")
    if code != 0:
        return {}
    return {c["channel"]: c.get("status", "") for c in json.loads(out)["channels"]}


@pytest.mark.fault
async def test_killing_the_relay_leader_mid_release_hands_publishing_to_the_other_process(
    tmp_path: Path, database_url: str, schema_name: str, embedded_nats: NatsServer
) -> None:
    env = base_env(tmp_path, database_url, schema_name, embedded_nats.url)
    folder = staged_config(tmp_path)
    try:
        async with (
            two_apis(env, tmp_path) as (a, b, token),
            service_process(env, "planner", "--ops-port", "0", ready="press Ctrl-C"),
        ):
            await eventually(lambda: a.relay_leads() or b.relay_leads(), timeout=60, interval=0.2,
                             message="a relay leads")
            leader, survivor = (a, b) if a.relay_leads() else (b, a)
            assert not survivor.relay_leads()
            cli_env = env | {"CONVOY_TOKEN": token, "CONVOY_ENDPOINT": survivor.grpc}
            code, out = await convoy(cli_env, "apply", "-f", str(folder))
            assert code == 0, out
            async with service_process(env, "agent", "--runtime", RUNTIME, "--state-dir", str(tmp_path / "agent"),
                                       "--instance", schema_name, "--health", "", ready="agent ready"):
                code, out = await convoy(cli_env, "deploy", "flow/web", "--version", "v1")
                assert code == 0, out
                # Observed progress: halfway — staging runs v1 (the leader's relay published
                # its intent), prod waits for a person.
                converged, waiting = "INSTANCE_STATUS_CONVERGED", "INSTANCE_STATUS_WAITING_APPROVAL"

                seen: list[dict[str, str]] = [{}]

                async def halfway() -> bool:
                    seen[0] = found = await statuses(cli_env)
                    return found.get("staging") == converged and found.get("prod") == waiting

                try:
                    await eventually(halfway, timeout=60, interval=0.2, message="staging converged, prod waiting")
                except AssertionError as error:
                    raise AssertionError(f"{error}; last seen {seen[0]}") from None
                leader.process.proc.kill()
                await leader.process.proc.wait()
                at_kill = await stream_last(embedded_nats.url, schema_name)
                # The rest of the release is written after the kill: only the survivor's relay
                # can bring prod's intent to the agent.
                code, out = await convoy(cli_env, "approve", "flow/web", "--channel", "prod")
                assert code == 0, out
                await eventually(survivor.relay_leads, timeout=60, interval=0.2, message="the survivor's relay leads")

                async def done() -> bool:
                    return (await statuses(cli_env)).get("prod") == converged

                await eventually(done, timeout=60, interval=0.2, message="prod converged on v1")

            store = await PostgresEventStore.open(PostgresSettings(dsn=database_url, schema=schema_name))
            try:
                head = await store.head()
                logged = [str(e.event_id) for e in await store.read_all(limit=1_000_000)]
            finally:
                await store.close()
            await eventually(lambda: _at_least(stream_last(embedded_nats.url, schema_name), head), timeout=60,
                             interval=0.1, message="the survivor published the whole log")
            ids = await stream_ids(embedded_nats.url, schema_name)
            assert len(ids) == len(set(ids)), "an event is in the stream twice"
            assert ids == logged, "the stream is not the log, once each, in order"
            assert head > at_kill, "the survivor published nothing"
            applied = [(r["namespace"], r["generation"]) for r in exec_runtime.records(tmp_path) if r["action"] == "apply"]
            assert applied == [("staging", 1), ("prod", 1)], applied
    finally:
        await drop_schema(database_url, schema_name)


async def _at_least(value: object, floor: int) -> bool:
    return int(await value) >= floor  # type: ignore[misc]
