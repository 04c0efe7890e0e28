"""Operations against real servers: /metrics, /healthz and /readyz on the API (real
PostgreSQL), readiness that flips when the read model stops, planner metrics that move
with a release (convergence durations included), the agent's health server, the ops
server of `convoy up` as a whole, and JSON logs carrying an API call's correlation id.

And readiness that tells the truth under faults of `convoy up`'s own servers: a frozen
(SIGSTOP) nats-server makes /readyz fail naming the bus and then the relay, a killed one
or a killed PostgreSQL is restarted on its port and the control plane serves and relays
commands again — each fault triggered from observed state, each outcome waited for."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from cli import controlplane, localstate, ops
from eventstore import bus, natsauth, probes
from eventstore.embedded import EmbeddedServers, NatsServer
from eventstore.metrics import Check, Registry
from eventstore.opsserver import OpsServer
from eventstore.postgres import PostgresEventStore
from eventstore.types import NewEvent
from eventstore.settings import Settings
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.agent.health import BusLiveness, bus_check
from services.planner.clock import FakeClock
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.integration.test_api_support import running_api
from tests.integration.test_planner import REGISTRY, _is, declarations, record, service, simulated_agents, stop
from tests.unit.planner.world import faulty_engine
from tests.unit.test_metrics import parse

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    status, content_type, text = await get(session, f"{url}/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    return parse(text)[1]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_the_api_serves_metrics_health_and_readiness(
    pg_store: PostgresEventStore, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    metrics = Registry()
    store = ops.counted(pg_store, ops.events_appended(metrics), "api")
    async with running_api(store, tmp_path / "state", metrics=metrics) as api:  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {api.admin}"}
        body = {"runtime": {"name": "eu-1", "kind": "RUNTIME_KIND_KUBERNETES"}}
        async with session.put(f"{api.base_url}/v1/runtimes", json=body, headers=auth) as response:
            assert response.status == 200, await response.text()
        async with session.get(f"{api.base_url}/v1/applications") as response:
            assert response.status == 401
        async with session.get(f"{api.base_url}/v1/no-such-thing") as response:
            assert response.status == 404

        status, content_type, text = await get(session, f"{api.base_url}/metrics")
        assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert api.admin not in text
        families, samples = parse(text)
        assert families["convoy_api_http_requests_total"][0] == "counter"
        assert samples[("convoy_api_http_requests_total", labels(method="ApplyRuntime", code="200"))] == 1
        assert samples[("convoy_api_http_requests_total", labels(method="ListApplications", code="401"))] == 1
        assert samples[("convoy_api_http_requests_total", labels(method="unrouted", code="404"))] == 1
        assert samples[("convoy_api_http_request_duration_seconds_count", labels(method="ApplyRuntime"))] == 1
        # the bootstrap admin token and the runtime, written by this process
        assert samples[("convoy_events_appended_total", labels(process="api"))] >= 2
        await eventually(lambda: _projection_lag(session, api.base_url, 0), message="the read model caught up")

        status, _, text = await get(session, f"{api.base_url}/healthz")
        assert status == 200 and json.loads(text)["status"] == "ok"
        status, _, text = await get(session, f"{api.base_url}/readyz")
        assert status == 200, text
        assert json.loads(text)["checks"]["api_projection"]["ok"] is True

        # Unauthenticated and read-only (another verb is no route), and not in the API's document.
        async with session.post(f"{api.base_url}/metrics") as response:
            assert response.status == 404
        async with session.get(f"{api.base_url}/openapi.json") as response:
            paths = (await response.json())["paths"]
        assert not {"/metrics", "/healthz", "/readyz"} & set(paths)


async def _projection_lag(session: aiohttp.ClientSession, url: str, wanted: float) -> bool:
    return (await scrape(session, url))[("convoy_api_projection_lag_positions", frozenset())] == wanted


async def test_readiness_flips_when_the_projection_stops(
    pg_store: PostgresEventStore, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_api(pg_store, tmp_path / "state") as api:
        status, _, _ = await get(session, f"{api.base_url}/readyz")
        assert status == 200
        await api.server.projection.stop()
        status, _, text = await get(session, f"{api.base_url}/readyz")
        assert status == 503
        assert json.loads(text)["checks"]["api_projection"] == {"ok": False, "detail": "the read model is not running"}


async def test_planner_metrics_move_after_a_release(pg_store: PostgresEventStore, session: aiohttp.ClientSession) -> None:
    for message in declarations({"staging": ["s1"], "prod": ["p1", "p2"]}, ["web"]):
        await record(pg_store, message)
    metrics = Registry()
    store = ops.counted(pg_store, ops.events_appended(metrics), "planner")
    agents = asyncio.create_task(simulated_agents(pg_store))
    try:
        async with Planner(
            store=store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)),
            on_converged=ops.convergence_histogram(metrics),
        ) as planner:
            ops.instrument_planner(metrics, planner)
            store_probe = probes.store_probe(pg_store)
            checks = [ops.planner_check(planner), store_probe.check()]
            async with store_probe, OpsServer(address="127.0.0.1:0", registry=metrics, checks=checks) as server:
                url = f"http://127.0.0.1:{server.port}"
                await planner.ready.wait()
                before = await scrape(session, url)
                assert before[("convoy_planner_ready", frozenset())] == 1

                await record(pg_store, E.ReleaseCreated(release=R.Release(
                    id="rel-1", application="fleet", service="web", version="v1", config=service("web"))))
                await eventually(lambda: _is(pg_store, {("web", "staging"): "CONVERGED", ("web", "prod"): "CONVERGED"}),
                                 message="the release converged in both channels")

                async def settled() -> bool:
                    samples = await scrape(session, url)
                    return samples[("convoy_planner_lag_positions", frozenset())] == 0 and all(
                        samples.get(("convoy_convergence_duration_seconds_count", labels(channel=c))) == 1
                        for c in ("staging", "prod")
                    )

                await eventually(settled, message="the planner caught up and saw both convergences")
                after = await scrape(session, url)
                for name in ("inputs", "outputs", "commits"):
                    key = (f"convoy_planner_{name}_total", frozenset())
                    assert after[key] > before[key], name
                assert after[("convoy_planner_restarts_total", frozenset())] == 0
                assert after[("convoy_planner_checkpoint_position", frozenset())] > 0
                # Its decisions, the timers it fired, and the record of the version it started with.
                assert after[("convoy_events_appended_total", labels(process="planner"))] == (
                    planner.stats.outputs + planner.stats.timers_fired + 1
                )
                staging = after[("convoy_convergence_duration_seconds_sum", labels(channel="staging"))]
                prod = after[("convoy_convergence_duration_seconds_sum", labels(channel="prod"))]
                assert 0 <= staging <= prod < 60

                status, _, text = await get(session, f"{url}/readyz")
                assert status == 200, text
                assert set(json.loads(text)["checks"]) == {"planner", "store"}
                status, _, _ = await get(session, f"{url}/healthz")
                assert status == 200
    finally:
        await stop(agents)


async def test_a_rejected_input_shows_in_the_planners_metrics_and_readiness(
    pg_store: PostgresEventStore, session: aiohttp.ClientSession
) -> None:
    for message in declarations({"staging": ["s1"]}, ["web"]):
        await record(pg_store, message)
    metrics = Registry()
    async with Planner(store=pg_store, registry=REGISTRY, clock=FakeClock(datetime.now(UTC)), engine=faulty_engine()) as planner:
        ops.instrument_planner(metrics, planner)
        async with OpsServer(address="127.0.0.1:0", registry=metrics, checks=[ops.planner_check(planner)]) as server:
            url = f"http://127.0.0.1:{server.port}"
            await record(pg_store, E.ReleaseCreated(release=R.Release(
                id="rel-boom", application="fleet", service="web", version="boom", config=service("web"))))
            await eventually(lambda: bool(planner.rejections) and planner.ready.is_set(), message="rejected, following again")
            samples = await scrape(session, url)
            assert samples[("convoy_planner_rejected_total", frozenset())] == 1
            assert samples[("convoy_planner_rejected_inputs", frozenset())] == 1
            status, _, text = await get(session, f"{url}/readyz")
    assert status == 200, text  # it plans everything else
    detail = json.dumps(json.loads(text)["checks"]["planner"])
    assert "1 input(s) rejected" in detail and "ReleaseCreated: KeyError" in detail


async def test_the_agent_health_server_answers_readiness_and_metrics(session: aiohttp.ClientSession) -> None:
    ready = asyncio.Event()
    metrics = Registry()
    metrics.counter("convoy_agent_intents_received_total", "Intents.", ["runtime"]).labels(runtime="eu-1").inc(3)
    connected = True
    clock = [0.0]
    server = OpsServer(
        address="127.0.0.1:0",
        registry=metrics,
        checks=[Check("agent", lambda: (ready.is_set(), "starting" if not ready.is_set() else "consuming"))],
        liveness=[bus_check(BusLiveness(connected=lambda: connected, threshold=30, clock=lambda: clock[0]))],
        details=lambda: {"runtime": "eu-1"},
    )
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        status, _, text = await get(session, f"{url}/readyz")
        assert status == 503 and json.loads(text)["checks"]["agent"] == {"ok": False, "detail": "starting"}
        ready.set()
        status, _, _ = await get(session, f"{url}/readyz")
        assert status == 200
        assert (await scrape(session, url))[("convoy_agent_intents_received_total", labels(runtime="eu-1"))] == 3
        status, _, text = await get(session, f"{url}/healthz")
        assert status == 200 and json.loads(text) == {
            "status": "ok", "checks": {"bus": {"ok": True, "detail": "connected"}}, "runtime": "eu-1"
        }
        connected = False  # the bus is lost: healthy for the threshold, then not
        status, _, _ = await get(session, f"{url}/healthz")
        assert status == 200
        clock[0] = 31.0
        status, _, text = await get(session, f"{url}/healthz")
        assert status == 503 and json.loads(text)["checks"]["bus"] == {
            "ok": False, "detail": "bus lost for 31.0s (threshold 30s)"
        }
    finally:
        await server.stop()


async def test_convoy_up_serves_every_components_metrics_and_readiness_on_its_ops_port(
    database_url: str, embedded_nats: NatsServer, schema_name: str, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    env = {"CONVOY_DATABASE_URL": database_url, "CONVOY_NATS_URL": embedded_nats.url, "CONVOY_INSTANCE": schema_name}
    settings = Settings.from_env(env, state_dir=tmp_path / "state")
    listen = controlplane.Listen(grpc_port=0, http_port=0, ops_port=0)
    with EmbeddedServers(state_dir=settings.state_dir, database_url=database_url, nats_url=embedded_nats.url) as servers:
        async with controlplane.control_plane(settings, servers, listen, local_runtime=None) as running:
            assert running.ops is not None
            url = f"http://127.0.0.1:{running.ops.port}"

            async def ready() -> bool:
                status, _, _ = await get(session, f"{url}/readyz")
                return status == 200

            await eventually(ready, message="the control plane is ready")
            status, _, text = await get(session, f"{url}/readyz")
            assert set(json.loads(text)["checks"]) == {"api_projection", "planner", "relay", "ingest", "nats", "store"}

            async def relayed() -> bool:
                samples = await scrape(session, url)
                return samples[("convoy_relay_lag_events", frozenset())] == 0 and samples[
                    ("convoy_relay_published_total", frozenset())] >= 1

            await eventually(relayed, message="the relay published the bootstrap token")
            samples = await scrape(session, url)
            assert samples[("convoy_events_appended_total", labels(process="api"))] >= 1
            assert samples[("convoy_nats_connected", frozenset())] == 1
            assert samples[("convoy_relay_leader", frozenset())] == 1
            ingest = labels(stream=bus.observations_stream(schema_name), consumer="api-ingest")
            assert samples[("convoy_consumer_pending_messages", ingest)] == 0
            assert not any(v for (name, _), v in samples.items() if name == "convoy_metrics_collector_errors_total")
            # the API's own port serves the same registry
            api_port = running.api.ports.http
            assert ("convoy_planner_inputs_total", frozenset()) in await scrape(session, f"http://127.0.0.1:{api_port}")



async def test_json_logs_carry_the_correlation_id_of_an_api_call(
    pg_store: PostgresEventStore, tmp_path: Path, session: aiohttp.ClientSession, json_logs: io.StringIO
) -> None:
    correlation = str(uuid.uuid4())
    async with running_api(pg_store, tmp_path / "state") as api:
        headers = {"Authorization": f"Bearer {api.admin}", "X-Correlation-Id": correlation}
        async with session.get(f"{api.base_url}/v1/applications", headers=headers) as response:
            assert response.status == 200
            assert response.headers["X-Correlation-Id"] == correlation
        admin = api.admin
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    calls = [line for line in lines if line.get("correlation_id") == correlation]
    assert calls, lines
    assert calls[0]["event"] == "api call" and calls[0]["method"] == "ListApplications" and calls[0]["level"] == "info"
    assert admin not in json_logs.getvalue()


# -- faults of convoy up's own servers -------------------------------------------------------


@contextlib.asynccontextmanager
async def embedded_control_plane(
    tmp_path: Path, instance: str, *, database_url: str | None = None
) -> AsyncIterator[tuple[EmbeddedServers, controlplane.Running, str]]:
    """`convoy up`'s composition on its own supervised nats-server (and PostgreSQL, unless
    `database_url` is given), as `convoy up` runs it; yields its ops URL too."""
    env = {"CONVOY_INSTANCE": instance} | ({"CONVOY_DATABASE_URL": database_url} if database_url else {})
    settings = Settings.from_env(env, state_dir=tmp_path / "state")
    listen = controlplane.Listen(grpc_port=0, http_port=0, ops_port=0)
    with EmbeddedServers(
        state_dir=settings.state_dir, database_url=settings.database_url, nats_url=None,
        nats_config_extra=controlplane.nats_auth_config(settings.state_dir, instance),
    ) as servers:
        async with controlplane.control_plane(settings, servers, listen, local_runtime=None) as running:
            assert running.ops is not None
            yield servers, running, f"http://127.0.0.1:{running.ops.port}"


async def readyz(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, dict[str, object]]]:
    status, _, text = await get(session, f"{url}/readyz")
    return status, json.loads(text)["checks"]


async def is_ready(session: aiohttp.ClientSession, url: str) -> bool:
    return (await readyz(session, url))[0] == 200


async def put_runtime(
    session: aiohttp.ClientSession, servers: EmbeddedServers, running: controlplane.Running, name: str
) -> tuple[int, str]:
    """A command through the API's REST port, as the bootstrap admin."""
    token = localstate.read_admin_token(servers.state_dir)
    body = {"runtime": {"name": name, "kind": "RUNTIME_KIND_KUBERNETES"}}
    url = f"http://127.0.0.1:{running.api.ports.http}/v1/runtimes"
    async with session.put(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.text()


async def bus_reaches(servers: EmbeddedServers, instance: str, position: int) -> bool:
    """Whether the events stream on the bus holds the log up to `position`."""
    password = natsauth.system_password(servers.state_dir)
    try:
        nc = await bus.connect(servers.nats_url, name="test-reader", connect_attempts=1,
                               user=natsauth.system_user(instance), password=password)
    except Exception:  # noqa: BLE001 - not reachable yet
        return False
    try:
        js = nc.jetstream(timeout=2)
        stream = bus.events_stream(instance)
        last = (await js.stream_info(stream)).state.last_seq
        if not last:
            return False
        message = await js.get_msg(stream, seq=last)
        return int((message.headers or {})[bus.H_POSITION]) >= position
    except Exception:  # noqa: BLE001 - not there yet
        return False
    finally:
        await nc.close()


@pytest.mark.fault
async def test_convoy_up_is_not_ready_while_its_nats_server_is_stopped(
    tmp_path: Path, database_url: str, schema_name: str, session: aiohttp.ClientSession
) -> None:
    async with embedded_control_plane(tmp_path, schema_name, database_url=database_url) as (servers, running, url):
        await eventually(lambda: is_ready(session, url), message="the control plane is ready")
        assert servers.nats is not None and servers.nats.pid is not None
        pid = servers.nats.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            async def bus_named() -> bool:
                status, checks = await readyz(session, url)
                return status == 503 and checks["nats"]["ok"] is False

            await eventually(bus_named, message="/readyz names the frozen bus")
            checks = (await readyz(session, url))[1]
            assert "did not answer" in str(checks["nats"]["detail"]) and "since" in checks["nats"], checks["nats"]
            # A command commits while the bus is frozen; the relay cannot publish it.
            await running.store.append("app/while-frozen", [NewEvent(type="convoy.v1.ApplicationDeleted", data=b"")])

            async def relay_named() -> bool:
                status, checks = await readyz(session, url)
                return status == 503 and checks["relay"]["ok"] is False

            await eventually(relay_named, timeout=60, message="/readyz names the relay")
            relay = (await readyz(session, url))[1]["relay"]
            assert str(relay["detail"]).startswith("leading, ") and "publishing fails since" in str(relay["detail"]), relay
            samples = await scrape(session, url)
            assert samples[("convoy_probe_ok", labels(probe="nats"))] == 0
            assert samples[("convoy_relay_failing_since_timestamp_seconds", frozenset())] > 0
            assert servers.nats.pid == pid, "a stopped (not dead) nats-server was restarted"
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: is_ready(session, url), timeout=60, message="ready again once the bus answers")
        head = await running.store.head()
        await eventually(lambda: bus_reaches(servers, schema_name, head), message="the relay drained the backlog")


@pytest.mark.fault
async def test_convoy_up_restarts_a_killed_nats_server_and_relays_what_came_after(
    tmp_path: Path, database_url: str, schema_name: str, session: aiohttp.ClientSession
) -> None:
    async with embedded_control_plane(tmp_path, schema_name, database_url=database_url) as (servers, running, url):
        await eventually(lambda: is_ready(session, url), message="the control plane is ready")
        server = servers.nats
        assert server is not None and server.pid is not None
        port, pid = server.port, server.pid
        os.kill(pid, signal.SIGKILL)
        # The not-ready window is as short as the restart (well under a second here, less
        # on a faster machine): the test waits for the restart, not for the window.
        await eventually(lambda: server.pid not in (None, pid), timeout=60, message="a new nats-server")
        await eventually(lambda: is_ready(session, url), timeout=60, message="ready again")
        assert server.port == port and server.pid not in (None, pid)
        assert "restarted 1 time" in str((await readyz(session, url))[1]["embedded"]["detail"])
        status, text = await put_runtime(session, servers, running, "after-the-crash")
        assert status == 200, text
        head = await running.store.head()
        await eventually(lambda: bus_reaches(servers, schema_name, head), message="the command reached JetStream")
        samples = await scrape(session, url)
        assert samples[("convoy_embedded_server_restarts_total", labels(server="nats-server"))] == 1
        assert samples[("convoy_nats_reconnects_total", frozenset())] >= 1


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@pytest.mark.fault
async def test_convoy_up_restarts_a_killed_postgres_and_serves_commands_again(
    tmp_path: Path, schema_name: str, session: aiohttp.ClientSession
) -> None:
    async with embedded_control_plane(tmp_path, schema_name) as (servers, running, url):
        await eventually(lambda: is_ready(session, url), message="the control plane is ready")
        server = servers.postgres
        assert server is not None and server.pid is not None
        port, pid = server.port, server.pid
        # Readiness names a store that does not answer (stopped: left alone, not restarted).
        # The whole server stops: the postmaster and its children (each backend leads a
        # session of its own, so no process group holds them all) …
        frozen = [pid, *children(pid)]
        for each in frozen:
            os.kill(each, signal.SIGSTOP)
        try:
            async def store_named() -> bool:
                status, checks = await readyz(session, url)
                return status == 503 and checks.get("store", {}).get("ok") is False

            await eventually(store_named, message="/readyz names the frozen store")
            assert server.pid == pid, "a stopped (not dead) PostgreSQL was restarted"
        finally:
            for each in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(each, signal.SIGCONT)
        await eventually(lambda: is_ready(session, url), timeout=60, message="ready once the store answers")
        # … and a killed one is restarted on its port (the not-ready window is as short as the
        # restart: the test waits for the restart, not for the window).
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: server.pid not in (None, pid), timeout=60, message="a new PostgreSQL")
        await eventually(lambda: is_ready(session, url), timeout=60, message="ready again")
        assert server.port == port and server.pid not in (None, pid)
        status, text = await put_runtime(session, servers, running, "after-the-crash")
        assert status == 200, text
        head = await running.store.head()
        await eventually(lambda: bus_reaches(servers, schema_name, head), message="the command reached JetStream")
