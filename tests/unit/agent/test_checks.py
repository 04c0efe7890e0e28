"""checks.run_check against real loopback servers and real commands (fast: no waits)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.checks import CheckContext, CheckReason, run_check


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="database down")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/broken", broken)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield port
    await runner.cleanup()


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


async def test_http_health_check_maps_the_declared_port(server: int) -> None:
    check = resources_pb2.HealthCheck(http=resources_pb2.HttpGet(path="/", port=8080))
    passed = await run_check(check, context=CheckContext(ports={8080: server}))
    assert passed.passed and passed.message == f"GET http://127.0.0.1:{server}/: HTTP 200"

    failed = await run_check(
        resources_pb2.HealthCheck(http=resources_pb2.HttpGet(path="/broken", port=8080)),
        context=CheckContext(ports={8080: server}),
    )
    assert (failed.passed, failed.reason) == (False, CheckReason.HEALTH_CHECK)
    assert "HTTP 500, expected 2xx/3xx: database down" in failed.message


async def test_http_probe_of_a_protection_uses_placeholders_and_expected_status(server: int) -> None:
    request = convergence_pb2.CheckRequest(
        check_id="c1",
        http_probe=resources_pb2.HttpProbe(url="http://127.0.0.1:{{.Port}}/broken", expect_status=500),
    )
    assert (await run_check(request, context=CheckContext(values={"Port": str(server)}))).passed
    request.http_probe.expect_status = 200
    failed = await run_check(request, context=CheckContext(values={"Port": str(server)}))
    assert (failed.passed, failed.reason) == (False, CheckReason.PROBE)
    unknown = await run_check(request, context=CheckContext())
    assert (unknown.passed, unknown.reason) == (False, CheckReason.INVALID)
    assert "{{.Port}}" in unknown.message


async def test_http_timeout(server: int) -> None:
    probe = resources_pb2.HttpProbe(url=f"http://127.0.0.1:{server}/slow", timeout=seconds(0.1))
    result = await run_check(probe, context=CheckContext())
    assert (result.passed, result.reason) == (False, CheckReason.TIMEOUT)


async def test_tcp_connect(server: int) -> None:
    assert (await run_check(resources_pb2.TcpSocket(port=server), context=CheckContext())).passed
    closed = resources_pb2.HealthCheck(tcp=resources_pb2.TcpSocket(port=1))
    result = await run_check(closed, context=CheckContext())
    assert (result.passed, result.reason) == (False, CheckReason.HEALTH_CHECK)


async def test_a_nothing_to_check_request_is_invalid() -> None:
    result = await run_check(convergence_pb2.CheckRequest(check_id="c"), context=CheckContext())
    assert (result.passed, result.reason) == (False, CheckReason.INVALID)


async def test_command_checks_pass_on_exit_0_and_report_output() -> None:
    script = "import os, sys; print(os.environ['GREETING']); sys.exit(int(sys.argv[1]))"
    check = resources_pb2.CommandCheck(
        command=[sys.executable, "-c", script, "{{.Params.code}}"], env={"GREETING": "hello {{.Service}}"}
    )
    context = CheckContext(values={"Params.code": "0", "Service": "web"})
    passed = await run_check(convergence_pb2.CheckRequest(check_id="c", command=check), context=context)
    assert (passed.passed, passed.message) == (True, "hello web")

    failing = CheckContext(values={"Params.code": "4", "Service": "web"})
    failed = await run_check(check, context=failing)
    assert (failed.passed, failed.reason) == (False, CheckReason.COMMAND_EXIT)
    assert failed.message.startswith(f"{sys.executable}: exit 4") and "hello web" in failed.message


async def test_a_command_that_hangs_is_killed_at_its_timeout() -> None:
    check = resources_pb2.CommandCheck(
        command=[sys.executable, "-c", "print('waiting', flush=True); import time; time.sleep(60)"],
        timeout=seconds(0.3),
    )
    result = await run_check(check, context=CheckContext(kill_grace=0.2))
    assert (result.passed, result.reason) == (False, CheckReason.TIMEOUT)
    assert "waiting" in result.message


async def test_a_missing_command() -> None:
    result = await run_check(resources_pb2.CommandCheck(command=["/nonexistent/check"]), context=CheckContext())
    assert (result.passed, result.reason) == (False, CheckReason.COMMAND_EXIT)
    assert "cannot start" in result.message
