"""Programs and checks: the parts of a declaration that become processes and probes.

A service's programs turn into containers (Kubernetes) or supervised processes (exec
runtimes), and protections and health checks turn into probes. The checks here catch
what would otherwise fail late, on an agent, in one cluster: a program with nothing to
run, a port out of range or with a name Kubernetes refuses, an HTTP path without its
leading '/', a malformed CPU or memory quantity.
"""

from __future__ import annotations

import re
from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.secretrefs import check_refs
from services.api.domain.validation import (
    MAX_VALUE,
    check_argv,
    check_duration,
    check_env,
    check_name,
    check_port_name,
    duplicates,
    q,
)

_QUANTITY: Final = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")


def check_port_number(problems: Problems, field: str, port: int) -> bool:
    if not 1 <= port <= 65535:
        problems.add(field, f"{port} is not a port number (1-65535)")
        return False
    return True


def check_image(problems: Problems, field: str, image: str) -> bool:
    if len(image) > 512 or any(ch.isspace() for ch in image):
        problems.add(field, f"{q(image[:80])} is not an image reference: no spaces, at most 512 characters")
        return False
    return True


def check_program(problems: Problems, field: str, program: resources_pb2.Program, *, named: bool) -> None:
    """`named`: the service has several programs, so each needs a name."""
    if program.name or named:
        check_name(problems, f"{field}.name", program.name, what="program name")
    if not program.image and not program.command:
        problems.add(field, "set an image (container runtimes) or a command (exec runtimes), or both")
    if program.image:
        check_image(problems, f"{field}.image", program.image)
    if program.command:
        check_argv(problems, f"{field}.command", program.command, required=True)
    if any(len(arg) > MAX_VALUE for arg in program.args):
        problems.add(f"{field}.args", f"an argument is longer than {MAX_VALUE} characters")
    check_env(problems, f"{field}.env", program.env)
    check_env(problems, f"{field}.secret_env", {k: "" for k in program.secret_env})
    check_refs(problems, f"{field}.secret_env", program.secret_env)
    for key in sorted(set(program.env) & set(program.secret_env)):
        problems.add(f"{field}.secret_env[{q(key)}]", f"{key} is also set in env; a variable is plain or secret")
    for i, port in enumerate(program.ports):
        at = f"{field}.ports[{i}]"
        check_port_name(problems, f"{at}.name", port.name)
        check_port_number(problems, f"{at}.port", port.port)
        if port.protocol and port.protocol.upper() not in PROTOCOLS:
            problems.add(
                f"{at}.protocol",
                f"{q(port.protocol)} is not a protocol: use {', '.join(PROTOCOLS)} or leave empty (TCP)",
            )
    for name in duplicates(p.name for p in program.ports if p.name):
        problems.add(f"{field}.ports", f"port name {q(name)} is used twice")
    for number in duplicates(f"{p.port}/{(p.protocol or 'TCP').upper()}" for p in program.ports):
        problems.add(f"{field}.ports", f"port {number} is declared twice")
    for name in ("cpu", "memory"):
        value = getattr(program.resources, name)
        if value and _QUANTITY.fullmatch(value) is None:
            problems.add(
                f"{field}.resources.{name}",
                f"{q(value)} is not a quantity (e.g. \"500m\" or \"0.5\" CPU, \"256Mi\" or \"1G\" memory)",
            )
    if program.HasField("health_check"):
        check_health(problems, f"{field}.health_check", program.health_check)


def check_health(problems: Problems, field: str, health: resources_pb2.HealthCheck) -> None:
    kind = health.WhichOneof("kind")
    if kind is None:
        problems.add(field, "set one of http, tcp, command")
    elif kind == "http":
        if health.http.path and not health.http.path.startswith("/"):
            problems.add(f"{field}.http.path", f"{q(health.http.path)} must start with '/'")
        check_port_number(problems, f"{field}.http.port", health.http.port)
    elif kind == "tcp":
        check_port_number(problems, f"{field}.tcp.port", health.tcp.port)
    else:
        check_command_check(problems, f"{field}.command", health.command)
    check_duration(problems, field, health, "period")
    check_duration(problems, field, health, "timeout")
    if health.failure_threshold < 0:
        problems.add(f"{field}.failure_threshold", "must be 0 (the default) or more")


def check_command_check(problems: Problems, field: str, check: resources_pb2.CommandCheck) -> None:
    check_argv(problems, f"{field}.command", check.command, required=True)
    check_env(problems, f"{field}.env", check.env)
    check_duration(problems, field, check, "timeout")
