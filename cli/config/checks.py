"""Checks that need no server state: names, references inside one application, duplicates."""

from __future__ import annotations

import re
from collections.abc import Iterable

from google.protobuf.message import Message

from schemas.convoy.v1 import resources_pb2
from cli.config.documents import Document, Problem, Report
from cli.config.formats import unknown_choice
from services.expressions import check as check_expression

# ---------------------------------------------------------------------------------------
# Checks across fields of one document, and across documents


_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
"""Kubernetes' IsValidPortName (IANA_SVC_NAME), with the length and the letter checked apart;
the server checks the same (services/api/domain/validation.py), this only says it sooner."""
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")


def check_semantics(message: Message, report: Report) -> None:
    if isinstance(message, resources_pb2.Application):
        _check_application(message, report)
    elif isinstance(message, resources_pb2.Protection) and message.HasField("external_approval"):
        # The gatekeeper judges answers with these unattended: a typo is reported now.
        approval = message.external_approval
        for name, json_name in (("success", "success"), ("failure", "failure"), ("ticket", "ticket")):
            source = getattr(approval, name)
            error = check_expression(source) if source else ""
            if error:
                report(f"protection.externalApproval.{json_name}", error)
        if not approval.success:
            report("protection.externalApproval.success", "required: when the change counts as approved")
    elif isinstance(message, resources_pb2.Service):
        _check_dns_label(message.name, "service.name", report)
        for i, program in enumerate(message.programs):
            for j, port in enumerate(program.ports):
                _check_port_name(port.name, f"service.programs[{i}].ports[{j}].name", report)
        for i, channel in enumerate(message.overrides):
            if sum(1 for o in message.overrides[:i] if o.channel == channel.channel):
                report(f"service.overrides[{i}].channel", f"channel {channel.channel!r} is overridden twice")
    elif isinstance(message, resources_pb2.Resource):
        scope = resources_pb2.ResourceScope
        if message.scope == scope.RESOURCE_SCOPE_UNSPECIFIED:
            message.scope = (
                scope.RESOURCE_SCOPE_APPLICATION if message.application else scope.RESOURCE_SCOPE_INFRASTRUCTURE
            )
        elif message.scope == scope.RESOURCE_SCOPE_APPLICATION and not message.application:
            report("resource.application", "is required when scope is application")
        elif message.scope == scope.RESOURCE_SCOPE_INFRASTRUCTURE and message.application:
            report("resource.application", "must be empty when scope is infrastructure (or set scope: application)")


def _check_application(app: resources_pb2.Application, report: Report) -> None:
    _check_dns_label(app.name, "application.name", report)
    first: dict[str, int] = {}
    for i, channel in enumerate(app.release_channels):
        path = f"application.releaseChannels[{i}]"
        _check_dns_label(channel.name, f"{path}.name", report)
        if channel.name in first:
            report(f"{path}.name", f"duplicate channel {channel.name!r} (also releaseChannels[{first[channel.name]}])")
        first.setdefault(channel.name, i)
        for j, pre in enumerate(channel.preconditions):
            pre_path = f"{path}.preconditions[{j}]"
            if pre.HasField("channel_stable"):
                target = pre.channel_stable.channel
                if target == channel.name:
                    report(f"{pre_path}.channelStable.channel", "a channel cannot wait for itself")
                elif target not in {c.name for c in app.release_channels}:
                    known = [c.name for c in app.release_channels if c.name != channel.name]
                    report(f"{pre_path}.channelStable.channel", unknown_choice("channel", target, known))
            elif pre.HasField("deploy_window"):
                _check_window(pre.deploy_window, f"{pre_path}.deployWindow", report)
    cycle = _channel_cycle(app)
    if cycle:
        report("application.releaseChannels", f"channels wait for each other in a cycle: {' -> '.join(cycle)}")


def _channel_cycle(app: resources_pb2.Application) -> list[str]:
    waits = {
        c.name: [p.channel_stable.channel for p in c.preconditions if p.HasField("channel_stable")]
        for c in app.release_channels
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str]:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done or name not in waits:
            return []
        for target in waits[name]:
            if target != name and (cycle := visit(target, [*trail, name])):
                return cycle
        done.add(name)
        return []

    for name in waits:
        if cycle := visit(name, []):
            return cycle
    return []


def _check_window(window: resources_pb2.DeployWindow, path: str, report: Report) -> None:
    for i, day in enumerate(window.days):
        if day not in _DAYS:
            report(f"{path}.days[{i}]", unknown_choice("day", day, list(_DAYS), listing="one of"))
    for name in ("start", "end"):
        value = getattr(window, name)
        if not _CLOCK.match(value):
            report(f"{path}.{name}", f'must be a 24-hour time "HH:MM", not {value!r}')
    if _CLOCK.match(window.start) and _CLOCK.match(window.end) and window.start >= window.end:
        report(f"{path}.end", f"must be later than start ({window.start})")


def _check_dns_label(name: str, path: str, report: Report) -> None:
    if name and not _DNS_LABEL.match(name):
        report(path, f"{name!r} must be a DNS label: at most 63 lower-case letters, digits and '-'")


def _check_port_name(name: str, path: str, report: Report) -> None:
    if name and not (len(name) <= 15 and _PORT_NAME.match(name) and any(c.isalpha() for c in name)):
        report(
            path,
            f"{name!r} must be a port name: at most 15 lower-case letters, digits and '-', with at least one "
            "letter, no '-' at either end or twice in a row (Kubernetes requires an IANA service name)",
        )


def identity(document: Document) -> tuple[str, ...]:
    """What makes a document the same resource as another (the key the API stores it by)."""
    m = document.message
    if isinstance(m, resources_pb2.Service):
        return ("service", m.application, m.name)
    if isinstance(m, resources_pb2.Resource):
        return ("resource", m.application, m.name)
    return (document.kind, getattr(m, "name"))


def check_duplicates(documents: Iterable[Document], problems: list[Problem]) -> None:
    first: dict[tuple[str, ...], Document] = {}
    for document in documents:
        key = identity(document)
        if key in first:
            name = "/".join(k for k in key[1:] if k)
            problems.append(
                Problem(
                    document.source.file,
                    document.source.index,
                    f"{document.kind}.name",
                    f"duplicate {document.kind} {name!r}: already defined in {first[key].source}",
                )
            )
        else:
            first[key] = document
