"""The API's convergence read model folds what the pure planner really records: besides
the latest release and its status, what *runs* in each channel and on each target — the
last release that converged there, or that a rollback restored."""

from __future__ import annotations

import uuid
from datetime import timedelta

from google.protobuf.message import Message

from eventstore.types import RecordedEvent
from schemas.convoy.v1 import api_pb2
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from services.api.convergence import ConvergenceView
from services.planner.engine import Output
from tests.unit.planner.world import START, World, channel, intents


class Folded(World):
    """The planner's world, with every input and output folded into a ConvergenceView the
    way the API's projection would meet them in the log."""

    def __init__(self) -> None:
        super().__init__()
        self.view = ConvergenceView()
        self._at = 0

    def _fold(self, message: Message) -> None:
        self._at += 1
        recorded = RecordedEvent(self._at, "s/x", 1, uuid.uuid4(), message.DESCRIPTOR.full_name, 1, b"", "t", None, None, self.now)
        self.view.fold(recorded, message)

    def feed(self, message: Message, actor: str = "alice") -> list[Output]:
        self._fold(message)
        out = super().feed(message, actor)
        for o in out:
            self._fold(o.message)
        return out

    def channel(self, name: str) -> api_pb2.ChannelConvergence:
        found = self.view.channel("shop", "web", name)
        assert found is not None
        return found


def running(c: api_pb2.ChannelConvergence | api_pb2.TargetConvergence) -> tuple[str, str]:
    return c.running_release_id, c.running_version


def staging_prod(world: World) -> None:
    world.setup(channel("staging", "stg-1"), channel("prod", "eu-1", "us-1", stable="staging", approval=1))


def test_what_runs_is_the_release_that_converged_and_since_when() -> None:
    world = Folded()
    staging_prod(world)
    [first] = intents(world.deploy("v1"))
    assert world.channel("staging").running_release_id == ""  # deploying: nothing converged yet
    world.now += timedelta(minutes=1)
    world.healthy([first])
    world.now += timedelta(minutes=1)
    world.converge_all(world.approve("v1", "prod", "bob"))

    staging, prod = world.channel("staging"), world.channel("prod")
    assert running(staging) == ("rel-web-v1", "v1") == running(prod)
    assert staging.running_since.ToDatetime().replace(tzinfo=START.tzinfo) == START + timedelta(minutes=1)
    assert prod.running_since.ToDatetime().replace(tzinfo=START.tzinfo) == START + timedelta(minutes=2)
    assert [running(t) for t in prod.targets] == [("rel-web-v1", "v1")] * 2
    assert all(t.HasField("running_since") for t in prod.targets)


def test_a_later_release_that_fails_leaves_the_converged_one_running() -> None:
    world = Folded()
    world.setup(channel("staging", "stg-1"), auto_rollback=False)
    world.converge_all(world.deploy("v1"))
    [v2] = intents(world.deploy("v2"))

    world.report(v2, C.OBSERVATION_KIND_FAILED, reason="crash_loop")

    staging = world.channel("staging")
    assert (staging.version, staging.status) == ("v2", C.INSTANCE_STATUS_FAILED)
    assert running(staging) == ("rel-web-v1", "v1")
    [target] = staging.targets
    assert (target.version, target.status, running(target)) == ("v2", C.INSTANCE_STATUS_FAILED, ("rel-web-v1", "v1"))


def test_a_rollback_restores_what_runs_and_prod_that_never_got_the_release_runs_on() -> None:
    world = Folded()
    staging_prod(world)
    world.converge_all(world.deploy("v1"))
    world.converge_all(world.approve("v1", "prod", "bob"))
    before = world.channel("prod").running_since
    [v2] = intents(world.deploy("v2"))
    world.now += timedelta(minutes=5)
    rollback = intents(world.report(v2, C.OBSERVATION_KIND_FAILED, reason="crash_loop"))
    assert running(world.channel("staging")) == ("rel-web-v1", "v1")  # v2 never converged: v1 is the last that did

    world.now += timedelta(minutes=1)
    world.healthy(rollback)

    staging, prod = world.channel("staging"), world.channel("prod")
    assert (staging.release_id, staging.status) == ("rel-web-v2", C.INSTANCE_STATUS_ROLLED_BACK)
    assert running(staging) == ("rel-web-v1", "v1")
    assert staging.running_since.ToDatetime().replace(tzinfo=START.tzinfo) == START + timedelta(minutes=6)
    [target] = staging.targets
    assert (target.status, running(target)) == (C.INSTANCE_STATUS_ROLLED_BACK, ("rel-web-v1", "v1"))
    # prod: its latest release is v2 (FAILED: staging gave up), but it runs v1, untouched.
    assert (prod.version, prod.status) == ("v2", C.INSTANCE_STATUS_FAILED)
    assert running(prod) == ("rel-web-v1", "v1") and prod.running_since == before
    assert {(t.status, t.running_version) for t in prod.targets} == {(C.INSTANCE_STATUS_CONVERGED, "v1")}


def test_a_manual_rollback_of_a_converged_release_runs_the_earlier_one() -> None:
    world = Folded()
    world.setup(channel("staging", "stg-1"))
    world.converge_all(world.deploy("v1"))
    world.converge_all(world.deploy("v2"))
    assert running(world.channel("staging")) == ("rel-web-v2", "v2")

    out = world.feed(E.RollbackRequested(application="shop", service="web", reason="bad numbers"), actor="erin")
    assert running(world.channel("staging")) == ("rel-web-v2", "v2")  # still rolling back
    world.healthy(intents(out))

    assert running(world.channel("staging")) == ("rel-web-v1", "v1")


def test_a_first_release_that_fails_runs_nothing_and_deleting_the_service_forgets_it() -> None:
    world = Folded()
    world.setup(channel("staging", "stg-1"))
    [v1] = intents(world.deploy("v1"))
    world.report(v1, C.OBSERVATION_KIND_FAILED, reason="crash_loop")
    staging = world.channel("staging")
    assert running(staging) == ("", "") and not staging.HasField("running_since")

    world.feed(E.ServiceDeleted(application="shop", name="web"))
    assert world.view.channel("shop", "web", "staging") is None
