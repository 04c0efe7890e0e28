"""The planner's gates count approvals per principal (services.principals): in a log
recorded before token names were normalised, `bob`, `bob ` and `bоb` (Cyrillic о) are one
approval, and none of them counts where `bob` deployed and the deployer is excluded."""

from __future__ import annotations

from schemas.convoy.v1 import events_pb2 as E
from tests.unit.planner.world import World, channel, intents

CYRILLIC_BOB = "b\u043eb"


def granted(approver: str) -> E.ApprovalGranted:
    return E.ApprovalGranted(release_id="rel-web-v1", application="shop", service="web", channel="prod",
                             approval="signoff", approver=approver)


def four_eyes(world: World, deployer: str) -> None:
    prod = channel("prod", "eu-1", stable="staging", approval=2)
    prod.preconditions[-1].manual_approval.exclude_deployer = True
    world.setup(channel("staging", "stg-1"), prod)
    world.healthy(intents(world.deploy("v1", actor=deployer)))


def test_the_issues_four_eyes_scenario_does_not_converge() -> None:
    world = World()
    four_eyes(world, "bob")
    for approver in ("bob ", CYRILLIC_BOB):  # the deployer, twice, under other spellings
        world.feed(granted(approver), actor=approver)

    assert world.status("prod") == "WAITING_APPROVAL"
    assert world.reason("prod") == "waiting for 2 approvals of signoff (0 given; not bob, who deployed it)"
    world.feed(granted("carol"), actor="carol")
    world.feed(granted("Carol"), actor="Carol")
    assert world.status("prod") == "WAITING_APPROVAL"
    assert world.reason("prod").startswith("waiting for 2 approvals of signoff (1 given: carol at ")
    world.feed(granted("dave"), actor="dave")
    assert world.status("prod") == "DEPLOYING"
