"""One check, run once: an HTTP GET, a TCP connect or a command, passed or failed with why.

Health checks of local processes (HealthCheck: HttpGet / TcpSocket / CommandCheck) and the
protections the planner asks an agent to run (CheckRequest: HttpProbe / CommandCheck) are
the same few probes; this module runs any of them once. Scheduling (period, failure
threshold, interval) belongs to the caller: the supervisor of a process, or the agent's
protection runner.

    result = await checks.run_check(request, context=checks.CheckContext(values={...}))
    if not result.passed: report(result.reason, result.message)

A check never raises for a failing target: a refused connection, a 500 or a non-zero exit
is a failed `CheckResult`. Only a configuration error (an unknown `{{.Placeholder}}`, an
empty check) is a failed result with reason `invalid`, which retrying will not fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes import processes, templates
from services.agent.runtimes.base import MAX_MESSAGE, truncate


class CheckReason:
    """`reason` of a failed check (the names observations use)."""

    PROBE = "probe"
    """An HTTP probe or TCP connect of a protection failed."""
    HEALTH_CHECK = "health_check"
    """An HTTP GET or TCP connect of a health check failed."""
    COMMAND_EXIT = "command_exit"
    """The command exited non-zero (or could not be started)."""
    TIMEOUT = "timeout"
    """No answer within the check's timeout."""
    INVALID = "invalid"
    """The check itself is wrong (unknown placeholder, nothing to check): fix the config."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    passed: bool
    reason: str = ""
    """Empty when passed; else one of `CheckReason`."""
    message: str = ""
    """What was checked and what came back (truncated)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckContext:
    """Where a check runs: template values, port mapping, environment."""

    values: Mapping[str, str] = field(default_factory=dict)
    """`{{.Name}}` values for URLs and commands (see runtimes.templates.workload_values)."""
    ports: Mapping[int, int] = field(default_factory=dict)
    """A declared port → the local port it got (the local runtime); unmapped ports are used as is."""
    host: str = "127.0.0.1"
    """Host of HttpGet / TcpSocket health checks."""
    env: Mapping[str, str] | None = None
    """Base environment of command checks (None: inherit the agent's); the check's own env is added."""
    cwd: Path | None = None
    default_timeout: float = 1.0
    """Used when the check sets no timeout."""
    output_limit: int = MAX_MESSAGE
    kill_grace: float = 1.0
    """A timed-out command's process group gets SIGTERM, then SIGKILL after this long."""


Check = (
    convergence_pb2.CheckRequest
    | resources_pb2.HealthCheck
    | resources_pb2.HttpProbe
    | resources_pb2.CommandCheck
    | resources_pb2.HttpGet
    | resources_pb2.TcpSocket
)


async def run_check(check: Check, *, context: CheckContext) -> CheckResult:
    """Run `check` once and say whether it passed."""
    try:
        return await _run(check, context)
    except templates.TemplateError as error:
        return CheckResult(False, CheckReason.INVALID, str(error))


async def _run(check: Check, context: CheckContext) -> CheckResult:
    if isinstance(check, convergence_pb2.CheckRequest):
        kind = check.WhichOneof("check")
        if kind == "http_probe":
            return await _run(check.http_probe, context)
        if kind == "command":
            return await _run(check.command, context)
        return CheckResult(False, CheckReason.INVALID, f"check {check.check_id!r} has nothing to run")
    if isinstance(check, resources_pb2.HealthCheck):
        timeout = _seconds(check.timeout) if check.HasField("timeout") else context.default_timeout
        kind = check.WhichOneof("kind")
        if kind == "http":
            port = _port(check.http.port, context)
            path = templates.render(check.http.path or "/", context.values)
            url = f"http://{context.host}:{port}{path if path.startswith('/') else '/' + path}"
            return await http_get(url, expect_status=0, timeout=timeout, reason=CheckReason.HEALTH_CHECK)
        if kind == "tcp":
            return await tcp_connect(
                context.host, _port(check.tcp.port, context), timeout=timeout, reason=CheckReason.HEALTH_CHECK
            )
        if kind == "command":
            return await command(check.command, context, timeout=_timeout(check.command.timeout, timeout))
        return CheckResult(False, CheckReason.INVALID, "health check has no http, tcp or command")
    if isinstance(check, resources_pb2.HttpProbe):
        url = templates.render(check.url, context.values)
        timeout = _timeout(check.timeout, context.default_timeout)
        return await http_get(url, expect_status=check.expect_status, timeout=timeout, reason=CheckReason.PROBE)
    if isinstance(check, resources_pb2.CommandCheck):
        return await command(check, context, timeout=_timeout(check.timeout, context.default_timeout))
    if isinstance(check, resources_pb2.HttpGet):
        url = f"http://{context.host}:{_port(check.port, context)}{check.path or '/'}"
        return await http_get(url, expect_status=0, timeout=context.default_timeout, reason=CheckReason.HEALTH_CHECK)
    if isinstance(check, resources_pb2.TcpSocket):
        port = _port(check.port, context)
        return await tcp_connect(context.host, port, timeout=context.default_timeout, reason=CheckReason.HEALTH_CHECK)
    raise TypeError(f"not a check: {type(check).__name__}")


async def http_get(url: str, *, expect_status: int, timeout: float, reason: str) -> CheckResult:
    """GET `url`: passes on `expect_status`, or on any 2xx/3xx when it is 0."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            body = await response.content.read(512)
    except TimeoutError:
        return CheckResult(False, CheckReason.TIMEOUT, f"GET {url}: no answer within {timeout:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as error:
        return CheckResult(False, reason, f"GET {url}: {type(error).__name__}: {error}")
    wanted = response.status == expect_status if expect_status else 200 <= response.status < 400
    message = f"GET {url}: HTTP {response.status}"
    if wanted:
        return CheckResult(True, "", message)
    expected = expect_status or "2xx/3xx"
    detail = body.decode("utf-8", "replace").strip()
    return CheckResult(False, reason, truncate(f"{message}, expected {expected}" + (f": {detail}" if detail else "")))


async def tcp_connect(host: str, port: int, *, timeout: float, reason: str) -> CheckResult:
    target = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return CheckResult(False, CheckReason.TIMEOUT, f"connect {target}: no answer within {timeout:g}s")
    except OSError as error:
        return CheckResult(False, reason, f"connect {target}: {error.strerror or error}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(True, "", f"connect {target}: accepted")


async def command(check: resources_pb2.CommandCheck, context: CheckContext, *, timeout: float) -> CheckResult:
    """Run the check's command; exit 0 passes. A timed-out command's group is killed."""
    argv = templates.render_all(list(check.command), context.values)
    if not argv:
        return CheckResult(False, CheckReason.INVALID, "command check has no command")
    env = dict(context.env) if context.env is not None else None
    if check.env:
        if env is None:
            env = dict(os.environ)  # what a child inherits anyway; the check's env goes on top
        env.update({k: templates.render(v, context.values) for k, v in check.env.items()})
    try:
        result = await processes.run(
            argv, env=env, timeout=timeout, cwd=context.cwd, grace=context.kill_grace, output_limit=context.output_limit
        )
    except OSError as error:
        return CheckResult(False, CheckReason.COMMAND_EXIT, f"{argv[0]}: cannot start: {error.strerror or error}")
    if result.timed_out:
        return CheckResult(
            False, CheckReason.TIMEOUT, truncate(f"{argv[0]}: no exit within {timeout:g}s\n{result.output}".strip())
        )
    if result.ok:
        return CheckResult(True, "", truncate(result.output.strip() or f"{argv[0]}: exit 0"))
    return CheckResult(
        False, CheckReason.COMMAND_EXIT, truncate(f"{argv[0]}: exit {result.exit_code}\n{result.output}".strip())
    )


def _port(declared: int, context: CheckContext) -> int:
    if declared == 0 and context.ports:
        return next(iter(context.ports.values()))
    return context.ports.get(declared, declared)


def _seconds(duration: object) -> float:
    seconds = getattr(duration, "seconds", 0)
    nanos = getattr(duration, "nanos", 0)
    return float(seconds) + nanos / 1e9


def _timeout(duration: object, default: float) -> float:
    value = _seconds(duration)
    return value if value > 0 else default
