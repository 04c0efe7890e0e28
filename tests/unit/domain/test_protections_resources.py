"""Protections and resources: declarative apply, link/unlink, and every rejection."""

from __future__ import annotations

import pytest

from eventstore.errors import ConvoyError
from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import FailedPrecondition, InvalidArgument, NotFound, decide
from tests.unit.domain.builders import app_resource, command, infra_resource, protection, run, shop

R = resources_pb2
INFRA, APP = R.RESOURCE_SCOPE_INFRASTRUCTURE, R.RESOURCE_SCOPE_APPLICATION


def test_protection_lifecycle() -> None:
    request = protection("soak")
    decision, state = run(shop(), request)
    assert decision.events == (("protection/soak", events_pb2.ProtectionConfigured(protection=request.protection)),)
    assert decide(state, command(request)).events == ()
    decision, state = run(state, api_pb2.DeleteProtectionRequest(name="soak"))
    assert decision.events == (("protection/soak", events_pb2.ProtectionDeleted(name="soak")),)
    assert "soak" not in state.protections


def test_resource_link_relink_unlink() -> None:
    request = infra_resource("cache", "cache")
    decision, state = run(shop(), request)
    assert decision.events == (("resource/infra/cache", events_pb2.ResourceLinked(resource=request.resource)),)
    assert decide(state, command(request)).events == ()
    request.resource.attributes["url"] = "redis://cache:6379"
    assert decide(state, command(request)).events == (
        ("resource/infra/cache", events_pb2.ResourceLinked(resource=request.resource)),
    )
    decision, state = run(state, api_pb2.UnlinkResourceRequest(name="cache", scope=INFRA))
    assert decision.events == (("resource/infra/cache", events_pb2.ResourceUnlinked(name="cache", scope=INFRA)),)

    request = app_resource("shop", "events")
    decision, state = run(state, request)
    assert decision.events == (("resource/app/shop/events", events_pb2.ResourceLinked(resource=request.resource)),)
    decision, _ = run(state, api_pb2.UnlinkResourceRequest(name="events", scope=APP, application="shop"))
    assert decision.events == (
        ("resource/app/shop/events", events_pb2.ResourceUnlinked(name="events", scope=APP, application="shop")),
    )


def probe(**fields: object) -> api_pb2.ApplyProtectionRequest:
    return api_pb2.ApplyProtectionRequest(protection=R.Protection(name="probe", http_probe=R.HttpProbe(**fields)))  # type: ignore[arg-type]


def resource(**fields: object) -> api_pb2.LinkResourceRequest:
    return api_pb2.LinkResourceRequest(resource=R.Resource(**fields))  # type: ignore[arg-type]


INVALID: list[tuple[str, object, str]] = [
    ("protection missing", api_pb2.ApplyProtectionRequest(), "protection: required: the complete protection declaration"),
    ("no check", api_pb2.ApplyProtectionRequest(protection=R.Protection(name="p")),
     "protection: set what to check: one of http_probe, command, agent_health, external_approval"),
    ("probe without url", probe(), 'protection.http_probe.url: required: the URL to probe (may use {{.Service}}, {{.Channel}}, {{.Namespace}})'),
    ("probe bad status", probe(url="http://x/healthz", expect_status=42),
     "protection.http_probe.expect_status: 42 is not an HTTP status (100-599; 0 = any 2xx)"),
    ("command check empty", api_pb2.ApplyProtectionRequest(protection=R.Protection(name="p", command=R.CommandCheck())),
     'protection.command.command: a command is required (an argv list, e.g. ["./deploy.sh", "--apply"])'),
    ("health tcp port", api_pb2.ApplyProtectionRequest(protection=R.Protection(
        name="p", agent_health=R.HealthCheck(tcp=R.TcpSocket(port=0)))),
     "protection.agent_health.tcp.port: 0 is not a port number (1-65535)"),
    ("delete bad name", api_pb2.DeleteProtectionRequest(name=""),
     "name: protection name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters)"),
    ("resource missing", api_pb2.LinkResourceRequest(), "resource: required: the resource to link"),
    ("no scope", resource(name="db"),
     "resource.scope: a resource scope is required: one of RESOURCE_SCOPE_INFRASTRUCTURE, RESOURCE_SCOPE_APPLICATION"),
    ("unknown scope", resource(name="db", scope=3),
     "resource.scope: 3 is not a known resource scope: use one of RESOURCE_SCOPE_INFRASTRUCTURE, RESOURCE_SCOPE_APPLICATION"),
    ("application scope without application", resource(name="db", scope=APP),
     "resource.application: required when scope is RESOURCE_SCOPE_APPLICATION"),
    ("infrastructure scope with application", resource(name="db", scope=INFRA, application="shop"),
     "resource.application: must be empty for RESOURCE_SCOPE_INFRASTRUCTURE (every application sees it); use RESOURCE_SCOPE_APPLICATION to link it to one application"),
    ("bad kind", resource(name="db", scope=INFRA, kind="Postgres DB"),
     "resource.kind: \"Postgres DB\" is not a valid resource kind (e.g. database, queue): use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters"),
    ("unlink without scope", api_pb2.UnlinkResourceRequest(name="db"),
     "scope: a resource scope is required: one of RESOURCE_SCOPE_INFRASTRUCTURE, RESOURCE_SCOPE_APPLICATION"),
]


@pytest.mark.parametrize(("request_", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(request_: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message


REFUSED: list[tuple[str, object, type[ConvoyError], str]] = [
    ("delete missing protection", api_pb2.DeleteProtectionRequest(name="nope"), NotFound, 'protection "nope" does not exist'),
    ("delete attached protection", api_pb2.DeleteProtectionRequest(name="smoke"), FailedPrecondition,
     'protection "smoke" is still attached to release channels (shop/prod); detach it (ApplyApplication) first'),
    ("link to missing application", resource(name="db", scope=APP, application="nope"), NotFound,
     'resource.application: application "nope" does not exist; apply it first'),
    ("unlink missing", api_pb2.UnlinkResourceRequest(name="db", scope=INFRA), NotFound,
     'resource "db" is not linked at infrastructure level'),
    ("unlink missing app resource", api_pb2.UnlinkResourceRequest(name="ledger", scope=APP, application="shop"), NotFound,
     'resource "ledger" is not linked at application "shop"'),
    ("unlink used", api_pb2.UnlinkResourceRequest(name="orders", scope=APP, application="shop"), FailedPrecondition,
     'resource "orders" is still used by services (shop/api); remove it from their service.resources (ApplyService) first'),
    ("unlink used infrastructure", api_pb2.UnlinkResourceRequest(name="registry", scope=INFRA), FailedPrecondition,
     'resource "registry" is still used by services (shop/api); remove it from their service.resources (ApplyService) first'),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(request_: object, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(shop(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message
