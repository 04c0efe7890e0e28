"""The convergence lifecycle, transition by transition, driven through the pure planner."""

from __future__ import annotations

from datetime import timedelta

from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from tests.unit.planner.world import World, changes, channel, intents, of, seconds


def staging_prod(world: World, *, approval: int = 1, **kw: object) -> None:
    world.setup(channel("staging", "stg-1"), channel("prod", "eu-1", "us-1", stable="staging", approval=approval), **kw)  # type: ignore[arg-type]


def test_a_release_deploys_to_staging_while_prod_waits_for_staging() -> None:
    world = World()
    staging_prod(world)

    out = world.deploy("v1")

    assert changes(out) == [("staging", "PENDING", "DEPLOYING"), ("prod", "PENDING", "WAITING_PRECONDITIONS")]
    [intent] = intents(out)
    assert (intent.target.runtime, intent.target.namespace) == ("stg-1", "convoy-shop-staging")
    assert intent.generation == 1 and intent.action == C.INTENT_ACTION_APPLY and not intent.rollback
    assert intent.spec.version == "v1" and intent.spec.replicas == 2
    assert intent.spec.programs[0].image == "registry.example/web:v1"  # parameter substituted
    assert len(intent.spec_hash) == 64
    assert "waiting for staging to be stable at v1" in world.reason("prod")
    assert changes(out, targets=True) == [("staging/stg-1", "PENDING", "DEPLOYING")]


def test_staging_converged_moves_prod_to_approval_and_approval_deploys_it() -> None:
    world = World()
    staging_prod(world)
    [intent] = intents(world.deploy("v1"))

    out = world.healthy([intent])

    # Nothing to verify in staging (no post-deployment protection): straight to CONVERGED.
    assert changes(out) == [
        ("staging", "DEPLOYING", "CONVERGED"),
        ("prod", "WAITING_PRECONDITIONS", "WAITING_APPROVAL"),
    ]
    assert world.reason("prod") == "waiting for 1 approval of signoff (0 given)"
    assert intents(out) == []

    out = world.approve("v1", "prod", "bob")
    assert changes(out) == [("prod", "WAITING_APPROVAL", "DEPLOYING")]
    assert sorted(i.target.runtime for i in intents(out)) == ["eu-1", "us-1"]

    out = world.healthy(intents(out))
    assert changes(out)[-1] == ("prod", "DEPLOYING", "CONVERGED")
    assert world.state.convergences[("shop", "web", "prod")].converged_release_id == "rel-web-v1"


def test_approvals_need_distinct_approvers_and_the_reason_names_them() -> None:
    world = World()
    staging_prod(world, approval=2)
    world.healthy(intents(world.deploy("v1")))

    world.approve("v1", "prod", "bob")
    world.approve("v1", "prod", "bob")  # the same person twice counts once

    assert world.status("prod") == "WAITING_APPROVAL"
    assert world.reason("prod") == "waiting for 2 approvals of signoff (1 given: bob at 12:00)"
    out = world.approve("v1", "prod", "carol")
    assert changes(out) == [("prod", "WAITING_APPROVAL", "DEPLOYING")]


def test_a_four_eyes_approval_names_who_cannot_give_it() -> None:
    world = World()
    prod = channel("prod", "eu-1", stable="staging", approval=1)
    prod.preconditions[-1].manual_approval.exclude_deployer = True
    world.setup(channel("staging", "stg-1"), prod)
    world.healthy(intents(world.deploy("v1", actor="dave")))

    assert world.reason("prod") == "waiting for 1 approval of signoff (0 given; not dave, who deployed it)"


def test_a_rejection_fails_the_channel_without_deploying() -> None:
    world = World()
    staging_prod(world)
    world.healthy(intents(world.deploy("v1")))

    out = world.feed(E.ApprovalRejected(release_id="rel-web-v1", application="shop", service="web", channel="prod",
                                        approval="signoff", approver="dave", reason="not on a Friday"), actor="dave")

    assert changes(out) == [("prod", "WAITING_APPROVAL", "FAILED")]
    assert world.reason("prod") == "rejected by dave (signoff): not on a Friday"
    assert intents(out) == []


def test_a_bypassed_approval_deploys_and_is_audited_in_the_reason_trail() -> None:
    world = World()
    staging_prod(world)
    world.healthy(intents(world.deploy("v1")))

    out = world.feed(E.BypassGranted(release_id="rel-web-v1", application="shop", service="web", channel="prod",
                                     target="precondition:signoff", reason="hotfix INC-1"))

    assert changes(out) == [("prod", "WAITING_APPROVAL", "DEPLOYING")]
    assert len(intents(out)) == 2


def test_a_closed_deploy_window_waits_for_a_timer_that_opens_it() -> None:
    world = World()  # Thursday 12:00 UTC
    window = R.DeployWindow(days=["thu"], start="14:00", end="16:00", timezone="UTC")
    world.setup(channel("staging", "stg-1", windows=[window]))

    out = world.deploy("v1")

    assert changes(out) == [("staging", "PENDING", "WAITING_PRECONDITIONS")]
    assert "outside the deploy window (thu 14:00-16:00 UTC); opens Thu 2026-11-26 14:00 UTC" in world.reason("staging")
    [timer] = of(out, E.TimerScheduled)
    assert timer.purpose == "window" and timer.fire_at.ToJsonString() == "2026-11-26T14:00:00Z"

    assert world.advance(timedelta(hours=1)) == []  # 13:00: nothing due
    out = world.advance(timedelta(hours=1))  # 14:00
    assert changes(out) == [("staging", "WAITING_PRECONDITIONS", "DEPLOYING")]
    assert len(intents(out)) == 1


def test_a_window_in_another_time_zone_and_on_another_day() -> None:
    world = World()  # Thursday 12:00 UTC = 13:00 in Berlin
    window = R.DeployWindow(days=["mon"], start="09:00", end="11:00", timezone="Europe/Berlin")
    world.setup(channel("staging", "stg-1", windows=[window]))

    world.deploy("v1")

    [timer] = world.state.timers.values()
    assert timer.fire_at.isoformat() == "2026-11-30T08:00:00+00:00"  # Monday 09:00 CET


def test_failure_rolls_back_to_the_last_converged_release() -> None:
    world = World()
    world.setup(channel("staging", "stg-1", "stg-2"))
    world.converge_all(world.deploy("v1"))
    v2 = intents(world.deploy("v2"))
    assert [i.generation for i in v2] == [2, 2]

    out = world.report(v2[0], C.OBSERVATION_KIND_FAILED, reason="crash_loop", message="pods crash-looping")

    assert changes(out) == [("staging", "DEPLOYING", "FAILED"), ("staging", "FAILED", "ROLLING_BACK")]
    rollback = intents(out)
    assert {i.target.runtime for i in rollback} == {"stg-1", "stg-2"}
    assert all(i.rollback and i.spec.version == "v1" and i.generation == 3 for i in rollback)
    assert "crash loop on runtime stg-1 at 12:00 (pods crash-looping)" in world.reason("staging")

    out = world.healthy(rollback)
    assert changes(out)[-1] == ("staging", "ROLLING_BACK", "ROLLED_BACK")
    assert world.reason("staging") == "rolled back to v1: crash loop on runtime stg-1 at 12:00 (pods crash-looping)"


def test_auto_rollback_can_be_disabled_per_service() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"), auto_rollback=False)
    world.converge_all(world.deploy("v1"))
    [v2] = intents(world.deploy("v2"))

    out = world.report(v2, C.OBSERVATION_KIND_FAILED, reason="image_pull")

    assert changes(out) == [("staging", "DEPLOYING", "FAILED")]
    assert intents(out) == []


def test_a_first_release_that_fails_has_nothing_to_roll_back_to() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"))
    [v1] = intents(world.deploy("v1"))

    out = world.report(v1, C.OBSERVATION_KIND_FAILED, reason="crash_loop")

    assert changes(out) == [("staging", "DEPLOYING", "FAILED")]


def test_a_release_that_failed_upstream_fails_downstream_instead_of_waiting_forever() -> None:
    world = World()
    staging_prod(world)
    world.converge_all(world.deploy("v1"))
    world.converge_all(world.approve("v1", "prod", "bob"))
    assert world.status("prod") == "CONVERGED"
    [v2] = intents(world.deploy("v2"))

    out = world.report(v2, C.OBSERVATION_KIND_FAILED, reason="crash_loop")

    assert ("prod", "WAITING_PRECONDITIONS", "FAILED") in changes(out)
    assert world.reason("prod").startswith("staging ROLLING_BACK at v2: automatic rollback to v1")
    assert not [i for i in intents(out) if i.target.runtime != "stg-1"]  # prod untouched


def test_a_newer_release_replaces_one_still_in_flight() -> None:
    world = World()
    staging_prod(world)
    world.deploy("v1")

    out = world.deploy("v2")

    assert changes(out)[:2] == [("staging", "DEPLOYING", "REPLACED"), ("prod", "WAITING_PRECONDITIONS", "REPLACED")]
    [intent] = intents(out)
    assert intent.spec.version == "v2" and intent.generation == 2


def test_observations_about_an_older_generation_are_ignored() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"))
    [v1] = intents(world.deploy("v1"))
    world.deploy("v2")

    out = world.report(v1, C.OBSERVATION_KIND_HEALTHY)

    assert out == []
    assert world.status("staging") == "DEPLOYING"


def test_pausing_a_convergence_stops_it_and_resuming_continues() -> None:
    world = World()
    staging_prod(world, approval=0)
    world.feed(E.ConvergencePaused(application="shop", service="web", channel="prod", reason="freeze"))
    world.converge_all(world.deploy("v1"))

    assert world.status("prod") == "PAUSED" and world.reason("prod") == "paused: freeze"
    out = world.feed(E.ConvergenceResumed(application="shop", service="web", channel="prod"))
    assert changes(out) == [("prod", "PAUSED", "PENDING"), ("prod", "PENDING", "DEPLOYING")]
    assert world.status("prod") == "DEPLOYING"
    assert len(intents(out)) == 2


def test_a_paused_runtime_gets_no_intents_until_resumed() -> None:
    world = World()
    world.setup(channel("prod", "eu-1", "us-1"))
    world.feed(E.RuntimePaused(name="us-1", reason="maintenance"))

    out = world.deploy("v1")

    assert [i.target.runtime for i in intents(out)] == ["eu-1"]
    assert world.reason("prod").endswith("waiting for paused runtime(s) us-1")
    world.healthy(intents(out))
    assert world.status("prod") == "DEPLOYING"
    out = world.feed(E.RuntimeResumed(name="us-1"))
    assert [i.target.runtime for i in intents(out)] == ["us-1"]


def test_max_concurrent_runtimes_limits_a_fleet_rollout() -> None:
    world = World()
    runtimes = [f"rt-{i}" for i in range(5)]
    world.setup(channel("prod", *runtimes, max_concurrent=2))

    first = intents(world.deploy("v1"))
    assert [i.target.runtime for i in first] == ["rt-0", "rt-1"]
    assert world.reason("prod") == "deploying v1 to 5 runtime(s) (2 at a time)"

    second = intents(world.healthy(first[:1]))
    assert [i.target.runtime for i in second] == ["rt-2"]
    everything = world.converge_all(world.healthy(second + first[1:2]))
    assert world.status("prod") == "CONVERGED"
    assert sorted(i.target.runtime for i in intents(everything)) == ["rt-3", "rt-4"]


def test_manual_rollback_restores_the_previous_release_everywhere_at_once() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"), channel("prod", "eu-1", stable="staging"))
    world.converge_all(world.deploy("v1"))
    world.converge_all(world.deploy("v2"))
    assert world.status("prod") == "CONVERGED"

    out = world.feed(E.RollbackRequested(application="shop", service="web", reason="bad numbers"), actor="erin")

    assert changes(out) == [("staging", "CONVERGED", "ROLLING_BACK"), ("prod", "CONVERGED", "ROLLING_BACK")]
    assert {(i.target.runtime, i.spec.version, i.rollback) for i in intents(out)} == {("stg-1", "v1", True), ("eu-1", "v1", True)}
    assert world.reason("prod") == "rollback requested by erin: bad numbers (to v1)"
    world.healthy(intents(out))
    assert world.status("prod") == "ROLLED_BACK" and world.status("staging") == "ROLLED_BACK"


def test_a_target_without_a_verdict_past_its_deadline_waits_and_says_so() -> None:
    """The agent never took the intent (a bus outage, a stopped agent): the deadline names
    it and the release waits — silence is no verdict on the workload."""
    world = World()
    world.setup(channel("staging", "stg-1"))
    out = world.deploy("v1")
    [timer] = of(out, E.TimerScheduled)
    # The default deadline (10 minutes) plus a grace for the agent's own report.
    assert timer.purpose == "deadline" and timer.fire_at.ToJsonString() == "2026-11-26T12:10:15Z"
    assert world.advance(timedelta(minutes=10)) == []

    out = world.advance(timedelta(seconds=15))

    assert changes(out) == [("staging", "DEPLOYING", "DEPLOYING")]  # a new reason, no failure
    assert world.status("staging") == "DEPLOYING"
    assert world.reason("staging") == (
        "deploying v1 to 1 runtime(s); runtime stg-1's agent has not taken the intent issued at 12:00: "
        "is the agent running and connected? (not a failure: the release waits)"
    )
    assert world.advance(timedelta(hours=3)) == []  # and it keeps waiting, quietly


def test_the_deadline_runs_from_the_agents_receipt_and_a_late_healthy_converges() -> None:
    """The issue's outage: the intent reached the agent 75 s late and its report later
    still. The deadline counts from the RECEIVED; the late HEALTHY converges the release."""
    world = World()
    world.setup(channel("staging", "stg-1"))
    [intent] = intents(world.deploy("v1"))
    world.advance(timedelta(minutes=11))  # overdue: the agent has not taken it
    assert "has not taken the intent" in world.reason("staging")

    out = world.report(intent, C.OBSERVATION_KIND_RECEIVED)
    assert world.reason("staging") == "deploying v1 to 1 runtime(s)"  # the wait is the workload's again
    [timer] = [t for t in of(out, E.TimerScheduled) if t.purpose == "deadline"]
    assert timer.fire_at.ToJsonString() == "2026-11-26T12:21:15Z"  # 10m15s from the receipt
    out = world.advance(timedelta(minutes=10, seconds=15))
    assert world.reason("staging").startswith("deploying v1 to 1 runtime(s); no verdict from runtime stg-1 within 10m15s")
    assert world.status("staging") == "DEPLOYING"

    world.healthy([intent])
    assert world.status("staging") == "CONVERGED"


def test_the_agents_own_failure_report_still_fails_and_rolls_back() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"))
    world.converge_all(world.deploy("v1"))
    [intent] = intents(world.deploy("v2"))
    world.report(intent, C.OBSERVATION_KIND_RECEIVED)
    out = world.report(intent, C.OBSERVATION_KIND_FAILED, reason="progress_deadline", message="not ready within the 30s progress deadline")
    assert changes(out)[:2] == [("staging", "DEPLOYING", "FAILED"), ("staging", "FAILED", "ROLLING_BACK")]


def test_soak_waits_for_a_timer_and_a_failing_fail_probe_rolls_back() -> None:
    world = World()
    world.protection("http-ok")
    soak = R.ProtectionAttachment(protection="http-ok", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                  failure_behavior=R.FAILURE_BEHAVIOR_FAIL, delay=seconds(5), duration=seconds(30))
    world.setup(channel("staging", "stg-1", protections=[soak]))
    world.converge_all(world.deploy("v1"))
    assert world.status("staging") == "VERIFYING"
    [checks] = of(world.outputs, E.ChecksRequested)
    assert checks.checks[0].check_id == "chk-rel-web-v1.staging.http-ok.post-deployment"
    [v1] = [i for i in intents(world.outputs)]

    # A result before the delay is over does not count; after it, the soak starts.
    world.report(v1, C.OBSERVATION_KIND_CHECK_PASSED, check_id=checks.checks[0].check_id)
    assert "first check at 12:00:05" in world.reason("staging")
    world.advance(timedelta(seconds=5))
    world.report(v1, C.OBSERVATION_KIND_CHECK_PASSED, check_id=checks.checks[0].check_id)
    assert world.reason("staging") == "http-ok: soak ends at 12:00:35 UTC"
    out = world.advance(timedelta(seconds=30))
    assert changes(out) == [("staging", "VERIFYING", "CONVERGED")]
    assert of(out, E.ChecksRequested)[0].checks == []  # agents stop checking

    [v2] = intents(world.deploy("v2"))
    world.healthy([v2])
    world.advance(timedelta(seconds=5))
    check = "chk-rel-web-v2.staging.http-ok.post-deployment"
    out = world.report(v2, C.OBSERVATION_KIND_CHECK_FAILED, check_id=check, message="HTTP 500")
    assert changes(out)[:2] == [("staging", "VERIFYING", "FAILED"), ("staging", "FAILED", "ROLLING_BACK")]
    assert "protection http-ok failed on runtime stg-1 (HTTP 500)" in world.reason("staging")


def test_a_blocking_protection_waits_instead_of_failing() -> None:
    world = World()
    world.protection("smoke", kind="command")
    block = R.ProtectionAttachment(protection="smoke", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                   failure_behavior=R.FAILURE_BEHAVIOR_BLOCK)
    world.setup(channel("staging", "stg-1", protections=[block]))
    [v1] = intents(world.deploy("v1"))
    world.healthy([v1])
    check = "chk-rel-web-v1.staging.smoke.post-deployment"

    world.report(v1, C.OBSERVATION_KIND_CHECK_FAILED, check_id=check, message="exit 1")
    assert world.status("staging") == "VERIFYING"
    assert "protection smoke failed on runtime stg-1 (exit 1); waiting for it to pass" in world.reason("staging")
    out = world.report(v1, C.OBSERVATION_KIND_CHECK_PASSED, check_id=check)
    assert changes(out) == [("staging", "VERIFYING", "CONVERGED")]


def test_deleting_a_service_prunes_its_workloads() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"))
    world.converge_all(world.deploy("v1"))

    out = world.feed(E.ServiceDeleted(application="shop", name="web"))

    [delete] = intents(out)
    assert delete.action == C.INTENT_ACTION_DELETE and delete.generation == 2
    assert ("shop", "web", "staging") not in world.state.convergences


def test_removing_a_runtime_binding_prunes_it_and_a_new_binding_gets_the_converged_release() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"), runtimes=["stg-2"])
    world.converge_all(world.deploy("v1"))

    out = world.feed(E.ApplicationUpdated(application=R.Application(name="shop", release_channels=[channel("staging", "stg-2")])))

    assert {(i.target.runtime, i.action) for i in intents(out)} == {
        ("stg-1", C.INTENT_ACTION_DELETE), ("stg-2", C.INTENT_ACTION_APPLY)}


def test_a_dry_run_lists_intents_and_waits_in_order_and_records_nothing() -> None:
    from services.planner.dryrun import simulate

    world = World()
    world.protection("http-ok")
    soak = R.ProtectionAttachment(protection="http-ok", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT],
                                  failure_behavior=R.FAILURE_BEHAVIOR_FAIL, delay=seconds(5), duration=seconds(30))
    world.setup(channel("staging", "stg-1", protections=[soak]), channel("prod", "eu-1", stable="staging", approval=1))
    config = world.state.catalog.services[("shop", "web")]
    before = (world.state.position, len(world.state.convergences), dict(world.state.generations))
    release = R.Release(id="rel-dry", application="shop", service="web", version="v9", config=config)

    steps = simulate(world.state, [E.ReleaseCreated(release=release)], now=world.now, actor="alice")

    plan = [(s.channel, s.action, s.runtime, s.after.total_seconds()) for s in steps]
    assert plan == [
        ("staging", "deploy", "stg-1", 0.0),
        ("prod", "wait", "", 0.0),
        ("staging", "verify", "", 0.0),
        ("prod", "wait", "", 0.0),
        ("staging", "verify", "", 5.0),
        ("staging", "verify", "", 5.0),
        ("prod", "wait", "", 5.0),
        ("staging", "converged", "", 35.0),
        ("prod", "wait", "", 35.0),
    ]
    assert steps[-1].detail == "WAITING_APPROVAL: waiting for 1 approval of signoff (0 given)"
    assert steps[6].detail.endswith("staging VERIFYING, soak ends at 12:00:35 UTC")
    assert (world.state.position, len(world.state.convergences), dict(world.state.generations)) == before


def test_an_older_observation_ingested_late_does_not_undo_a_newer_one() -> None:
    world = World()
    world.setup(channel("staging", "stg-1", "stg-2"))
    v1 = intents(world.deploy("v1"))
    world.now += timedelta(seconds=2)
    world.report(v1[0], C.OBSERVATION_KIND_HEALTHY)
    world.now -= timedelta(seconds=1)  # a PROGRESSING observed earlier arrives after it

    world.report(v1[0], C.OBSERVATION_KIND_PROGRESSING)

    assert world.state.convergences[("shop", "web", "staging")].targets[("stg-1", "convoy-shop-staging")].healthy
    world.now += timedelta(seconds=5)
    assert changes(world.report(v1[1], C.OBSERVATION_KIND_HEALTHY)) == [("staging", "DEPLOYING", "CONVERGED")]


def test_intents_carry_the_services_self_heal_policy() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"))
    [first] = intents(world.deploy("v1"))
    assert not first.repair_drift
    healing = World.service("shop", "web")
    healing.self_heal = True
    world.feed(E.ServiceConfigured(service=healing))

    [second] = intents(world.deploy("v2"))

    assert second.repair_drift


def test_a_rollback_that_fails_too_ends_failed_without_another_rollback() -> None:
    world = World()
    world.setup(channel("staging", "stg-1"))
    world.converge_all(world.deploy("v1"))
    [v2] = intents(world.deploy("v2"))
    [restore] = intents(world.report(v2, C.OBSERVATION_KIND_FAILED, reason="crash_loop"))

    out = world.report(restore, C.OBSERVATION_KIND_FAILED, reason="image_pull", message="registry down")

    assert changes(out) == [("staging", "ROLLING_BACK", "FAILED")]
    assert world.reason("staging").startswith("rollback failed: image pull on runtime stg-1")
    assert intents(out) == []


def test_pre_approval_checks_run_while_approvals_are_collected() -> None:
    world = World()
    world.protection("ticket", kind="command")
    gate = R.ProtectionAttachment(protection="ticket", lifecycle=[R.LIFECYCLE_PRE_APPROVAL],
                                  failure_behavior=R.FAILURE_BEHAVIOR_BLOCK)
    world.setup(channel("prod", "eu-1", approval=1, protections=[gate]))
    out = world.deploy("v1")
    [request] = of(out, E.ChecksRequested)
    assert request.checks[0].lifecycle == R.LIFECYCLE_PRE_APPROVAL
    assert "ticket: waiting for results from eu-1" in world.reason("prod")

    world.approve("v1", "prod", "bob")
    assert world.status("prod") == "WAITING_APPROVAL"  # approved, but the check has not passed
    fake = E.IntentIssued(intent_id="", target=request.target, generation=0,
                          spec=C.WorkloadSpec(application="shop", service="web", channel="prod"))
    out = world.report(fake, C.OBSERVATION_KIND_CHECK_PASSED, check_id=request.checks[0].check_id)

    assert changes(out) == [("prod", "WAITING_APPROVAL", "DEPLOYING")]
