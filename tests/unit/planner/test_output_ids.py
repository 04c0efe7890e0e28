"""Output event ids are uuid5 of the input's id and the output's place: the planner's
faster derivation must give exactly `uuid.uuid5(OUTPUT_NAMESPACE, name)`, or a planner
after the upgrade would write its outputs again under new ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from eventstore.codec import convoy_registry
from schemas.convoy.v1 import events_pb2 as E
from services.planner.engine import Input, Output
from services.planner.runner import OUTPUT_NAMESPACE, _output_id, output_events


@pytest.mark.parametrize("name", ["", "x", f"{uuid.uuid4()}/0", f"{uuid.uuid4()}/intent/p01/ns/app/svc/3", "ünï/✓"])
def test_the_output_id_is_uuid5_of_its_name(name: str) -> None:
    made = _output_id(name)
    assert made == uuid.uuid5(OUTPUT_NAMESPACE, name)
    assert type(made) is uuid.UUID and made.version == 5


def test_output_events_ids_as_before() -> None:
    cause = Input(E.ReleaseCreated(), 7, uuid.uuid4(), "bench", datetime(2026, 12, 2, tzinfo=UTC), "release/shop/web")
    outputs = [Output("convergence/shop/web/prod", E.InstanceStatusChanged(application="shop")) for _ in range(3)]
    events = output_events(convoy_registry(), cause, outputs, None)
    assert [e.event_id for _, e in events] == [uuid.uuid5(OUTPUT_NAMESPACE, f"{cause.event_id}/{i}") for i in range(3)]
    assert all(e.causation_id == cause.event_id == e.correlation_id for _, e in events)
