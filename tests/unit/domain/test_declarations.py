"""ApplyDeclarations: a set of declarations decided as a fold of `decide`, all or nothing."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.domain import InvalidArgument, NotFound, State, decide, fold
from services.api.domain.decider import MAX_DECLARATIONS, MAX_DECLARATIONS_BYTES
from tests.unit.domain.builders import (
    app_resource,
    apply_all,
    apply_app,
    channel,
    command,
    infra_resource,
    k8s,
    protection,
    service,
    shop,
)

D = api_pb2.Declaration
CREATED = api_pb2.DECLARATION_OUTCOME_CREATED
UPDATED = api_pb2.DECLARATION_OUTCOME_UPDATED
UNCHANGED = api_pb2.DECLARATION_OUTCOME_UNCHANGED


def declared(*requests: Message) -> api_pb2.ApplyDeclarationsRequest:
    """The set that declares what the single-document requests declare."""
    out = api_pb2.ApplyDeclarationsRequest()
    for request in requests:
        ((field, value),) = request.ListFields()
        getattr(out.declarations.add(), field.name).CopyFrom(value)
    return out


def a_new_world() -> list[Message]:
    """Runtime, protection, infrastructure resource, application, its own resource and a
    service using both resources: each names something declared before it."""
    return [
        k8s("eu-1"),
        protection("smoke"),
        infra_resource("registry"),
        apply_app("shop", channel("staging", "eu-1", protections=["smoke"])),
        app_resource("shop", "orders"),
        api_pb2.ApplyServiceRequest(service=service("shop", "api", resources=["registry", "orders"])),
    ]


def test_each_declaration_sees_the_ones_before_it_and_the_set_is_one_decision() -> None:
    requests = a_new_world()
    decision = decide(State(), command(declared(*requests)))
    assert [stream for stream, _ in decision.events] == [
        "runtime/eu-1", "protection/smoke", "resource/infra/registry", "app/shop", "resource/app/shop/orders",
        "service/shop/api",
    ]
    # The same events, in the same order, as the single-document commands one by one.
    one_by_one: list[object] = []
    state = State()
    for request in requests:
        single = decide(state, command(request))
        one_by_one.extend(single.events)
        state = fold(state, single.events)
    assert list(decision.events) == one_by_one
    assert fold(State(), decision.events) == state
    assert isinstance(decision.response, api_pb2.ApplyDeclarationsResponse)
    assert [(r.index, r.kind, r.name, r.outcome) for r in decision.response.results] == [
        (0, "runtime", "eu-1", CREATED),
        (1, "protection", "smoke", CREATED),
        (2, "resource", "registry", CREATED),
        (3, "application", "shop", CREATED),
        (4, "resource", "shop/orders", CREATED),
        (5, "service", "shop/api", CREATED),
    ]


def test_applying_the_same_set_again_decides_nothing_and_a_change_is_an_update() -> None:
    requests = a_new_world()
    state = apply_all(State(), requests)
    again = decide(state, command(declared(*requests)))
    assert again.events == ()
    assert isinstance(again.response, api_pb2.ApplyDeclarationsResponse)
    assert {r.outcome for r in again.response.results} == {UNCHANGED}

    requests[-1] = api_pb2.ApplyServiceRequest(service=service("shop", "api", resources=["registry", "orders"], replicas=3))
    changed = decide(state, command(declared(*requests)))
    assert [stream for stream, _ in changed.events] == ["service/shop/api"]
    assert isinstance(changed.response, api_pb2.ApplyDeclarationsResponse)
    assert [r.outcome for r in changed.response.results] == [UNCHANGED] * 5 + [UPDATED]


def test_a_refused_declaration_refuses_the_set_naming_index_kind_name_and_field() -> None:
    # The case: a good new application, then a service naming an unlinked resource.
    request = declared(
        apply_app("shop", channel("staging", "eu-1")),
        api_pb2.ApplyServiceRequest(service=service("shop", "web", resources=["db"])),
    )
    with pytest.raises(InvalidArgument) as caught:
        decide(apply_all(State(), [k8s("eu-1")]), command(request))
    (violation,) = caught.value.violations
    assert violation.field == "declarations[1].service.resources[0]"
    assert violation.description.startswith('service "shop/web": resource "db" is not linked')

    # Errors other than bad input keep their kind and name the declaration too.
    orphan = declared(api_pb2.ApplyServiceRequest(service=service("nowhere", "web")))
    with pytest.raises(NotFound, match=r'^declarations\[0\] \(service "nowhere/web"\): service.application: '):
        decide(State(), command(orphan))


def test_later_declarations_do_not_see_what_follows_them() -> None:
    # In order: a service before its application is refused, though the set holds both.
    request = declared(
        api_pb2.ApplyServiceRequest(service=service("shop", "web")),
        apply_app("shop", channel("staging", "eu-1")),
    )
    with pytest.raises(NotFound, match=r"^declarations\[0\] "):
        decide(apply_all(State(), [k8s("eu-1")]), command(request))


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (api_pb2.ApplyDeclarationsRequest(), "declarations", "is empty"),
        (api_pb2.ApplyDeclarationsRequest(declarations=[D(), D()]), "declarations[0]", "declares nothing"),
        (declared(k8s("eu-1"), protection("smoke"), k8s("eu-1")), "declarations[2]",
         'runtime "eu-1" is declared twice (also declarations[0])'),
        (declared(*[k8s(f"r-{i}") for i in range(MAX_DECLARATIONS + 1)]), "declarations",
         f"the limit is {MAX_DECLARATIONS}"),
        (declared(api_pb2.ApplyApplicationRequest(
            application=resources_pb2.Application(name="big", description="x" * MAX_DECLARATIONS_BYTES))),
         "declarations", f"the limit is {MAX_DECLARATIONS_BYTES}"),
    ],
    ids=["empty", "nothing-declared", "twice", "too-many", "too-large"],
)
def test_malformed_sets_are_refused_before_anything_is_decided(
    request_: api_pb2.ApplyDeclarationsRequest, field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(request_))
    (violation,) = caught.value.violations
    assert violation.field == field and words in violation.description, violation


def test_an_application_resource_and_an_infrastructure_one_of_the_same_name_are_not_duplicates() -> None:
    request = declared(
        infra_resource("db"), apply_app("shop", channel("staging", "eu-1")), app_resource("shop", "db")
    )
    decision = decide(apply_all(State(), [k8s("eu-1")]), command(request))
    assert [stream for stream, _ in decision.events] == ["resource/infra/db", "app/shop", "resource/app/shop/db"]
