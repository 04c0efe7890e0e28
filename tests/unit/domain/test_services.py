"""ApplyService / DeleteService: exact events, resource visibility, every rejection."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import duration_pb2

from eventstore.errors import ConvoyError
from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import InvalidArgument, NotFound, decide, fold
from tests.unit.domain.builders import apply_service, command, run, service, shop

R = resources_pb2


def test_create_reapply_update_delete() -> None:
    state = shop()
    request = apply_service("shop", "web", replicas=2)
    decision, state = run(state, request)
    assert decision.events == (
        ("service/shop/web", events_pb2.ServiceConfigured(service=request.service, created=True)),
    )
    assert decide(state, command(request)).events == ()

    request.service.replicas = 3
    decision, state = run(state, request)
    assert decision.events == (
        ("service/shop/web", events_pb2.ServiceConfigured(service=request.service, created=False)),
    )

    decision, state = run(state, api_pb2.DeleteServiceRequest(application="shop", name="web"))
    assert decision.events == (("service/shop/web", events_pb2.ServiceDeleted(application="shop", name="web")),)
    assert ("shop", "web") not in state.services


def test_visible_resources_are_accepted() -> None:
    # infrastructure "registry" is visible to every application; "orders" only to shop.
    decision, _ = run(shop(), apply_service("shop", "worker", resources=["registry", "orders"]))
    assert decision.changed
    decision, _ = run(shop(), apply_service("billing", "worker", resources=["registry", "ledger"]))
    assert decision.changed


def svc(**fields: object) -> api_pb2.ApplyServiceRequest:
    return api_pb2.ApplyServiceRequest(service=R.Service(application="shop", name="web", **fields))  # type: ignore[arg-type]


def prog(**fields: object) -> R.Program:
    return R.Program(**fields)  # type: ignore[arg-type]


IMAGE = prog(image="registry.example/web:1")

INVALID: list[tuple[str, Callable[[], api_pb2.ApplyServiceRequest], str]] = [
    ("missing", lambda: api_pb2.ApplyServiceRequest(), "service: required: the complete service declaration"),
    ("bad names", lambda: api_pb2.ApplyServiceRequest(service=R.Service(application="", name="Web", programs=[IMAGE])),
     "service.application: application name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters); "
     "service.name: \"Web\" is not a valid service name: use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters"),
    ("another application's resource", lambda: svc(programs=[IMAGE], resources=["ledger"]),
     'service.resources[0]: resource "ledger" belongs to application "billing" and is not visible to "shop"; link it to "shop" or at infrastructure level'),
    ("unlinked resource", lambda: svc(programs=[IMAGE], resources=["cache"]),
     'service.resources[0]: resource "cache" is not linked; link it (LinkResource) to application "shop" or at infrastructure level'),
    ("resource twice", lambda: svc(programs=[IMAGE], resources=["registry", "registry"]),
     'service.resources: resource "registry" is listed twice'),
    ("no programs", lambda: svc(), "service.programs: declare at least one program (an image or a command to run)"),
    ("program runs nothing", lambda: svc(programs=[prog()]),
     "service.programs[0]: set an image (container runtimes) or a command (exec runtimes), or both"),
    ("empty argv program", lambda: svc(programs=[prog(command=[""])]),
     "service.programs[0].command[0]: the program to run must not be empty"),
    ("unnamed programs", lambda: svc(programs=[IMAGE, prog(name="sidecar", image="x")]),
     "service.programs[0].name: program name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters)"),
    ("program names repeat", lambda: svc(programs=[prog(name="a", image="x"), prog(name="a", image="y")]),
     'service.programs: program name "a" is used twice'),
    ("image with spaces", lambda: svc(programs=[prog(image="nginx latest")]),
     'service.programs[0].image: "nginx latest" is not an image reference: no spaces, at most 512 characters'),
    ("bad env", lambda: svc(programs=[prog(image="x", env={"1BAD": "v"})]),
     'service.programs[0].env["1BAD"]: environment variable name "1BAD" is invalid: use letters, digits and \'_\', not starting with a digit'),
    ("port name without a letter", lambda: svc(programs=[prog(image="x", ports=[R.Port(name="8080", port=8080)])]),
     'service.programs[0].ports[0].name: "8080" is not a valid port name: use at most 15 lower-case letters, digits '
     "and '-', with at least one letter, not starting or ending with '-' and without '--' (Kubernetes requires an "
     "IANA service name)"),
    ("port name with a double hyphen", lambda: svc(programs=[prog(image="x", ports=[R.Port(name="a--b", port=80)])]),
     'service.programs[0].ports[0].name: "a--b" is not a valid port name: use at most 15 lower-case letters, digits '
     "and '-', with at least one letter, not starting or ending with '-' and without '--' (Kubernetes requires an "
     "IANA service name)"),
    ("port name longer than 15", lambda: svc(programs=[prog(image="x", ports=[R.Port(name="metrics-endpoint", port=80)])]),
     'service.programs[0].ports[0].name: "metrics-endpoint" is not a valid port name: use at most 15 lower-case '
     "letters, digits and '-', with at least one letter, not starting or ending with '-' and without '--' "
     "(Kubernetes requires an IANA service name)"),
    ("new service named with a digit first", lambda: api_pb2.ApplyServiceRequest(service=R.Service(application="shop", name="1api", programs=[IMAGE])),
     'service.name: "1api" is not a valid name for a new service: start with a lower-case letter (a service\'s name '
     "names a Kubernetes Service, a DNS-1035 label); services declared before keep their names"),
    ("two programs, one port name", lambda: svc(programs=[
        prog(name="a", image="x", ports=[R.Port(name="http", port=80)]),
        prog(name="b", image="y", ports=[R.Port(name="http", port=81)])]),
     'service.programs: port name "http" is declared by two programs; the ports of a service need distinct names'),
    ("two programs, one port", lambda: svc(programs=[
        prog(name="a", image="x", ports=[R.Port(port=80)]), prog(name="b", image="y", ports=[R.Port(port=80, protocol="tcp")])]),
     "service.programs: port 80/TCP is declared by two programs; a service serves each port once"),
    ("bad port", lambda: svc(programs=[prog(image="x", ports=[R.Port(name="http", port=70000)])]),
     "service.programs[0].ports[0].port: 70000 is not a port number (1-65535)"),
    ("bad protocol", lambda: svc(programs=[prog(image="x", ports=[R.Port(port=80, protocol="HTTP")])]),
     'service.programs[0].ports[0].protocol: "HTTP" is not a protocol: use TCP, UDP, SCTP or leave empty (TCP)'),
    ("port twice", lambda: svc(programs=[prog(image="x", ports=[R.Port(port=80), R.Port(port=80, protocol="tcp")])]),
     "service.programs[0].ports: port 80/TCP is declared twice"),
    ("bad quantity", lambda: svc(programs=[prog(image="x", resources=R.Resources(cpu="half", memory="1Gi"))]),
     'service.programs[0].resources.cpu: "half" is not a quantity (e.g. "500m" or "0.5" CPU, "256Mi" or "1G" memory)'),
    ("health without kind", lambda: svc(programs=[prog(image="x", health_check=R.HealthCheck())]),
     "service.programs[0].health_check: set one of http, tcp, command"),
    ("health path", lambda: svc(programs=[prog(image="x", health_check=R.HealthCheck(http=R.HttpGet(path="healthz", port=8080)))]),
     'service.programs[0].health_check.http.path: "healthz" must start with \'/\''),
    ("negative replicas", lambda: svc(programs=[IMAGE], replicas=-1), "service.replicas: must be 0 or more"),
    ("negative deadline", lambda: svc(programs=[IMAGE], progress_deadline=duration_pb2.Duration(seconds=-1)),
     "service.progress_deadline: must not be negative"),
    ("required with default", lambda: svc(programs=[IMAGE], parameters=[R.Parameter(name="tag", required=True, default="1")]),
     "service.parameters[0].default: a required parameter has no default (every deploy must set it); remove the default or make the parameter optional"),
    ("bad parameter name", lambda: svc(programs=[IMAGE], parameters=[R.Parameter(name="my-tag")]),
     'service.parameters[0].name: "my-tag" is not a valid parameter name: use letters, digits and \'_\', starting with a letter or \'_\', at most 63 characters'),
    ("parameter twice", lambda: svc(programs=[IMAGE], parameters=[R.Parameter(name="tag"), R.Parameter(name="tag")]),
     'service.parameters: parameter "tag" is declared twice'),
    ("override unknown channel", lambda: svc(programs=[IMAGE], overrides=[R.ChannelOverride(channel="qa")]),
     'service.overrides[0].channel: "qa" is not a channel of application "shop"; use one of: prod, staging'),
    ("override twice", lambda: svc(programs=[IMAGE], overrides=[R.ChannelOverride(channel="prod"), R.ChannelOverride(channel="prod")]),
     'service.overrides: channel "prod" is overridden twice; merge the overrides'),
    ("override undeclared parameter", lambda: svc(programs=[IMAGE], overrides=[R.ChannelOverride(channel="prod", parameters={"tag": "2"})]),
     'service.overrides[0].parameters["tag"]: parameter "tag" is not declared by the service; declare it in service.parameters (declared: none)'),
    ("override negative replicas", lambda: svc(programs=[IMAGE], overrides=[R.ChannelOverride(channel="prod", replicas=-3)]),
     "service.overrides[0].replicas: must be 0 (no override) or more"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_services(make: Callable[[], api_pb2.ApplyServiceRequest], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(make()))
    assert str(caught.value) == message


REFUSED: list[tuple[str, object, type[ConvoyError], str]] = [
    ("unknown application", api_pb2.ApplyServiceRequest(service=service("nope", "web")), NotFound,
     'service.application: application "nope" does not exist; apply it first'),
    ("delete missing", api_pb2.DeleteServiceRequest(application="shop", name="nope"), NotFound,
     'service "nope" of application "shop" does not exist'),
    ("delete bad name", api_pb2.DeleteServiceRequest(application="shop", name=""), InvalidArgument,
     "name: service name is required (use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters)"),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(request_: api_pb2.ApplyServiceRequest, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(shop(), command(request_))
    assert str(caught.value) == message


def test_names_already_in_the_log_still_fold_and_apply() -> None:
    """The Kubernetes name rules are for new declarations: a service recorded before them (named
    "1api", with a port "8080") still folds, and may be declared again and changed."""
    old = R.Service(application="shop", name="1api", programs=[R.Program(image="x", ports=[R.Port(name="8080", port=8080)])])
    state = fold(shop(), [events_pb2.ServiceConfigured(service=old, created=True)])
    assert state.services[("shop", "1api")] == old

    # Declared again with a port name Kubernetes accepts: the name stays, the port is fixed.
    fixed = R.Service(application="shop", name="1api", programs=[R.Program(image="x", ports=[R.Port(name="http", port=8080)])])
    decision, state = run(state, api_pb2.ApplyServiceRequest(service=fixed))
    assert decision.events == (("service/shop/1api", events_pb2.ServiceConfigured(service=fixed, created=False)),)
    # ... but the old port name would not be accepted again.
    with pytest.raises(InvalidArgument, match='"8080" is not a valid port name'):
        decide(state, command(api_pb2.ApplyServiceRequest(service=old)))
    # Deleting it needs only a DNS label.
    decision, _ = run(state, api_pb2.DeleteServiceRequest(application="shop", name="1api"))
    assert decision.events == (("service/shop/1api", events_pb2.ServiceDeleted(application="shop", name="1api")),)


def test_application_resource_shadows_infrastructure_resource() -> None:
    from tests.unit.domain.builders import app_resource, infra_resource

    _, state = run(shop(), infra_resource("orders"))
    assert state.visible_resource("shop", "orders").scope == R.RESOURCE_SCOPE_APPLICATION  # type: ignore[union-attr]
    assert state.visible_resource("billing", "orders").scope == R.RESOURCE_SCOPE_INFRASTRUCTURE  # type: ignore[union-attr]
    # Unlinking shop's own "orders" is fine: shop/api then sees the infrastructure one.
    decision, state = run(state, api_pb2.UnlinkResourceRequest(
        name="orders", scope=R.RESOURCE_SCOPE_APPLICATION, application="shop"))
    assert decision.changed
    assert decide(state, command(app_resource("shop", "orders"))).changed
