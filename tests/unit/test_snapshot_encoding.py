"""The snapshot envelope (eventstore.snapshots): what it seals comes back only to a
reader of the same kind and fold version with an intact checksum; timestamps survive
exactly; a new event schema version changes the fold version by itself; the payload
encodings of the API's catalog and the planner's state round-trip."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from eventstore.codec import convoy_registry
from eventstore.snapshots import SnapshotRejected, fold_version_of, seal, stamp, unseal, unstamp
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.api import snapshots as api_snapshots
from services.api.convergence import ConvergenceView
from services.api.domain import State, evolve
from services.planner import snapshots as planner_snapshots
from tests.unit.planner.world import World, channel


def sealed(payload: bytes = b"payload" * 100):
    return seal(name="api", kind="api", fold_version="f1", position=42, payload=payload)


def test_what_is_sealed_unseals_for_the_same_kind_and_version() -> None:
    assert unseal(sealed(), kind="api", fold_version="f1") == b"payload" * 100


@pytest.mark.parametrize("kind, version", [("planner", "f1"), ("api", "f2")])
def test_another_kind_or_fold_version_is_rejected(kind: str, version: str) -> None:
    with pytest.raises(SnapshotRejected):
        unseal(sealed(), kind=kind, fold_version=version)


def test_a_flipped_byte_a_foreign_format_or_a_moved_row_is_rejected() -> None:
    snapshot = sealed()
    body = bytearray(snapshot.body)
    body[len(body) // 2] ^= 0x01
    for broken in (
        dataclasses.replace(snapshot, body=bytes(body)),
        dataclasses.replace(snapshot, body=b"\xff\xff\xff"),
        dataclasses.replace(snapshot, format_version=2),
        dataclasses.replace(snapshot, position=41),  # the row says another position than the envelope
    ):
        with pytest.raises(SnapshotRejected):
            unseal(broken, kind="api", fold_version="f1")


def test_the_fold_version_follows_the_event_schema_versions() -> None:
    versions = dict(convoy_registry().versions())
    same = fold_version_of("api-1", dict(reversed(list(versions.items()))))
    assert fold_version_of("api-1", versions) == same
    bumped = {**versions, "convoy.v1.TokenCreated": versions["convoy.v1.TokenCreated"] + 1}
    assert fold_version_of("api-1", bumped) != same
    assert fold_version_of("api-2", versions) != same


def test_timestamps_round_trip_exactly_and_naive_ones_are_refused() -> None:
    for moment in (datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                   datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
                   datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=2)))):
        holder = E.TokenCreated()
        stamp(holder.expires_at, moment)
        assert unstamp(holder, "expires_at") == moment
    assert unstamp(E.TokenCreated(), "expires_at") is None
    with pytest.raises(ValueError, match="naive"):
        stamp(Timestamp(), datetime(2026, 1, 1))


def test_the_api_catalog_round_trips() -> None:
    state = State()
    events = [
        E.ApplicationCreated(application=R.Application(name="shop", release_channels=[channel("prod", "r1")])),
        E.RuntimeRegistered(runtime=R.Runtime(name="r1", kind=R.RUNTIME_KIND_EXEC)),
        E.ServiceConfigured(service=R.Service(application="shop", name="web", replicas=1), created=True),
        E.ReleaseCreated(release=R.Release(id="rel-1", application="shop", service="web", version="v1")),
        E.ApprovalGranted(release_id="rel-1", application="shop", service="web", channel="prod", approval="a", approver="ann"),
        E.ApprovalRejected(release_id="rel-1", application="shop", service="web", channel="prod", approval="a",
                           approver="bob", reason="no"),
        E.ConvergencePaused(application="shop", service="web", channel="prod", reason="x"),
        E.TokenCreated(token_id="t", name="ci", role="admin", secret_hmac="00"),
        E.SecretSet(name="pw", key_id="k", nonce=b"n", ciphertext=b"c"),
    ]
    for event in events:
        state = evolve(state, event)
    restored = api_snapshots.restore(
        api_snapshots.capture(state, {"app/shop": 1}, ConvergenceView()).SerializeToString(), 9
    )
    assert restored.state == state and restored.versions == {"app/shop": 1} and restored.position == 9


def test_the_planner_state_round_trips_in_order() -> None:
    world = World()
    world.setup(channel("staging", "a", "b"), channel("prod", "c", stable="staging", approval=1), services=("web", "api"))
    world.converge_all(world.deploy("v1"))
    world.converge_all(world.deploy("v1", service="api"))
    payload = planner_snapshots.capture(world.state).SerializeToString()
    restored = planner_snapshots.restore(payload, world.state.position)
    assert restored == world.state
    assert list(restored.convergences) == list(world.state.convergences)
    assert list(restored.by_service) == list(world.state.by_service)
    with pytest.raises(ValueError):
        planner_snapshots.restore(payload, world.state.position - 1)  # the state is after its snapshot's position
