"""evolve: covers every event in events.proto, refuses anything else, folds leniently."""

from __future__ import annotations

import pytest

from eventstore.errors import UnknownEventType
from schemas.convoy.v1 import api_pb2, events_pb2, legacy_pb2, resources_pb2
from services.api.domain import State, evolve, fold
from services.api.domain.folding import HANDLED_EVENT_TYPES
from tests.unit.domain.builders import deployed, shop


def test_every_event_type_is_folded() -> None:
    declared = {events_pb2.DESCRIPTOR.message_types_by_name[name].full_name for name in events_pb2.DESCRIPTOR.message_types_by_name}
    assert HANDLED_EVENT_TYPES == declared


@pytest.mark.parametrize("message", [legacy_pb2.ApplicationCreatedV1(name="x"), api_pb2.DeployRequest(), resources_pb2.Application()])
def test_anything_else_is_refused(message: object) -> None:
    with pytest.raises(UnknownEventType, match="is not a current Convoy event"):
        evolve(State(), message)  # type: ignore[arg-type]


def test_every_event_folds_on_an_empty_catalog() -> None:
    state = State()
    for name in events_pb2.DESCRIPTOR.message_types_by_name:
        state = evolve(state, getattr(events_pb2, name)())
    assert isinstance(state, State)


def test_events_about_missing_things_change_nothing() -> None:
    state = shop()
    for event in [
        events_pb2.RuntimeLabelled(name="mars", labels={"a": "b"}),
        events_pb2.RuntimePaused(name="mars"),
        events_pb2.AgentCredentialIssued(runtime="mars", generation=3),
        events_pb2.ApprovalGranted(release_id="nope", application="shop", service="api", channel="prod", approval="x", approver="a"),
        events_pb2.ServiceConfigured(service=resources_pb2.Service(application="nope", name="x")),
        events_pb2.ReleaseCreated(release=resources_pb2.Release(id="r", application="shop", service="nope")),
        events_pb2.ConvergencePaused(application="shop", service="nope"),
        events_pb2.TokenRevoked(token_id="nope"),
        events_pb2.RollbackRequested(application="shop", service="api", reason="x"),
    ]:
        assert evolve(state, event) == state, event


def test_deleting_an_application_takes_what_belongs_to_it() -> None:
    state = fold(deployed(), [events_pb2.ConvergencePaused(application="shop", service="api")])
    state = evolve(state, events_pb2.ApplicationDeleted(name="shop"))
    assert "shop" not in state.applications
    assert not [k for k in state.services if k[0] == "shop"]
    assert not [k for k in state.releases if k[0] == "shop"]
    assert not [k for k in state.resources if k[1] == "shop"]
    assert state.paused_convergences == {}
    assert "billing" in state.applications


def test_state_is_read_only_and_isolated_from_event_mutation() -> None:
    event = events_pb2.ProtectionConfigured(protection=resources_pb2.Protection(name="p"))
    state = evolve(State(), event)
    event.protection.name = "changed"
    assert state.protections["p"].name == "p"
    with pytest.raises(TypeError):
        state.protections["q"] = resources_pb2.Protection()  # type: ignore[index]
