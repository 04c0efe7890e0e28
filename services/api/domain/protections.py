"""ApplyProtection and DeleteProtection.

A protection is an infrastructure-wide check definition (an HTTP probe, a command, the
agent's health report) that channels attach at lifecycle stages. Applying is
declarative; a protection that a channel still attaches cannot be deleted, or that
channel would silently lose a safety check.
"""

from __future__ import annotations

from schemas.convoy.v1 import api_pb2, events_pb2
from services.api.domain import streams
from services.api.domain.commands import Command, Decision, clean
from services.api.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Problems
from services.api.domain.integrations import check_external_approval
from services.api.domain.programs import check_command_check, check_health
from services.api.domain.state import State
from services.api.domain.validation import MAX_DESCRIPTION, MAX_VALUE, check_duration, check_name, check_text, q


def apply_protection(state: State, request: api_pb2.ApplyProtectionRequest, command: Command) -> Decision:
    if not request.HasField("protection"):
        raise InvalidArgument.at("protection", "required: the complete protection declaration")
    protection = clean(request.protection)
    problems = Problems()
    check_name(problems, "protection.name", protection.name, what="protection name")
    check_text(problems, "protection.description", protection.description, limit=MAX_DESCRIPTION)
    check = protection.WhichOneof("check")
    if check is None:
        problems.add("protection", "set what to check: one of http_probe, command, agent_health, external_approval")
    elif check == "http_probe":
        probe = protection.http_probe
        if not probe.url:
            problems.add(
                "protection.http_probe.url",
                "required: the URL to probe (may use {{.Service}}, {{.Channel}}, {{.Namespace}})",
            )
        elif len(probe.url) > MAX_VALUE or any(ch.isspace() for ch in probe.url):
            problems.add("protection.http_probe.url", "must be a URL without spaces")
        if probe.expect_status and not 100 <= probe.expect_status <= 599:
            problems.add(
                "protection.http_probe.expect_status",
                f"{probe.expect_status} is not an HTTP status (100-599; 0 = any 2xx)",
            )
        check_duration(problems, "protection.http_probe", probe, "timeout")
    elif check == "command":
        check_command_check(problems, "protection.command", protection.command)
    elif check == "external_approval":
        check_external_approval(problems, "protection.external_approval", protection.external_approval)
    else:
        check_health(problems, "protection.agent_health", protection.agent_health)
    check_duration(problems, "protection", protection, "interval")
    problems.raise_if_any()
    if state.protections.get(protection.name) == protection:
        return Decision.unchanged()
    return Decision.of(streams.protection(protection.name), events_pb2.ProtectionConfigured(protection=protection))


def delete_protection(state: State, request: api_pb2.DeleteProtectionRequest, command: Command) -> Decision:
    problems = Problems()
    check_name(problems, "name", request.name, what="protection name")
    problems.raise_if_any()
    if request.name not in state.protections:
        raise NotFound(f"protection {q(request.name)} does not exist")
    attached = state.protection_attachments(request.name)
    if attached:
        where = ", ".join(f"{app}/{channel}" for app, channel in attached)
        raise FailedPrecondition(
            f"protection {q(request.name)} is still attached to release channels ({where}); detach it "
            "(ApplyApplication) first"
        )
    return Decision.of(streams.protection(request.name), events_pb2.ProtectionDeleted(name=request.name))
