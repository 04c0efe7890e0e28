"""Timer ids count per application (planner version 4), so partitions number them as one
planner does, and a TimerFired of a version-3 timer (`tmr-<n>-<purpose>`, numbered across
the instance) already in the log still fires its timer: a log written before the upgrade
folds the same."""

from __future__ import annotations

import uuid
from datetime import timedelta

from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.planner.engine import Input, plan
from tests.unit.planner.world import World, changes, channel, seconds


def soaking(app: str = "shop") -> World:
    world = World()
    world.protection("health", kind="health")
    soak = R.ProtectionAttachment(protection="health", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                  failure_behavior=R.FAILURE_BEHAVIOR_FAIL, duration=seconds(30))
    world.setup(channel("staging", "stg-1", protections=[soak]), app=app)
    return world


def legacy_fired(world: World, timer_id: str, stream: str, *, late: timedelta = timedelta()) -> list:
    [pending] = world.state.timers.values()
    fired = E.TimerFired(timer_id=timer_id)
    fired.fire_at.FromDatetime(pending.fire_at + late)
    fired.fired_at.FromDatetime(pending.fire_at + late)
    world.position += 1
    _, out = plan(world.state, Input(fired, world.position, uuid.uuid4(), "planner", world.now, stream))
    return out


def test_timer_ids_count_per_application() -> None:
    world = soaking()
    world.converge_all(world.deploy("v1"))
    assert world.status("staging") == "VERIFYING"
    assert [t.timer_id for t in world.state.timers.values() if t.purpose == "soak"] == ["tmr/shop/2/soak"]
    assert world.state.timer_seqs == {"shop": 2}  # the progress deadline (cancelled once healthy), then the soak


def test_a_version_3_timer_in_the_log_still_fires() -> None:
    world = soaking()
    world.converge_all(world.deploy("v1"))
    assert [t.purpose for t in world.state.timers.values()] == ["soak"]
    # Another stream, or another firing time, is not this timer.
    assert legacy_fired(world, "tmr-7-soak", "timer/shop/web/prod") == []
    assert legacy_fired(world, "tmr-7-soak", "timer/shop/web/staging", late=timedelta(seconds=1)) == []
    assert world.status("staging") == "VERIFYING"
    out = legacy_fired(world, "tmr-7-soak", "timer/shop/web/staging")
    assert changes(out) == [("staging", "VERIFYING", "CONVERGED")]
    assert not world.state.timers
