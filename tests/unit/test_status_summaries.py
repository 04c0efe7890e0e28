"""`convoy status` words: one short sentence per latest release, reasons clipped to a line,
and what runs told apart from what was last released."""

from __future__ import annotations

from services.api import summaries
from schemas.convoy.v1 import api_pb2
from schemas.convoy.v1 import convergence_pb2 as C


def conv(channel: str, version: str, status: int, reason: str = "", *, running: str = "v1",
         targets: tuple[tuple[str, str, int], ...] = ()) -> api_pb2.ChannelConvergence:
    out = api_pb2.ChannelConvergence(application="shop", service="web", channel=channel, release_id=f"rel-{version}",
                                     version=version, status=status, reason=reason,  # type: ignore[arg-type]
                                     running_release_id=f"rel-{running}" if running else "", running_version=running)
    for runtime, on, target_status in targets:
        out.targets.add(runtime=runtime, namespace="ns", release_id=f"rel-{on}", version=on, status=target_status,  # type: ignore[arg-type]
                        running_release_id=f"rel-{running}" if running else "", running_version=running)
    return out


def test_a_probes_html_body_and_extra_lines_stay_in_why() -> None:
    reason = ("rolled back to v1: health check on runtime local at 12:00 (GET / answered 404 — <!DOCTYPE HTML>"
              "<html><head><title>Error response</title></head><body>Nothing matches the given URI</body></html>)")
    clipped = summaries.clip(reason)
    assert clipped == "rolled back to v1: health check on runtime local at 12:00 (GET / answered 404) (convoy why for detail)"
    assert summaries.clip("not ready within the 30s deadline.\nTraceback (most recent call last):\n  …") == (
        "not ready within the 30s deadline. (convoy why for detail)"
    )
    assert summaries.clip("first sentence. Second one with more") == "first sentence. (convoy why for detail)"


def test_a_long_reason_is_bounded_and_a_short_one_left_alone() -> None:
    long = "waiting for " + " and ".join(f"check-{i} to pass" for i in range(40))
    clipped = summaries.clip(long)
    assert clipped.endswith("… (convoy why for detail)") and len(clipped) <= summaries.LIMIT + len(" (convoy why for detail)") + 1
    assert summaries.clip("v1 converged on 1 runtime(s)") == "v1 converged on 1 runtime(s)"
    assert summaries.clip("paused: v1.2.3 is frozen") == "paused: v1.2.3 is frozen"


def test_a_release_that_never_reached_a_channel_is_not_promoted_and_says_why() -> None:
    staging = conv("staging", "v2", C.INSTANCE_STATUS_ROLLED_BACK,
                   "rolled back to v1: crash loop on runtime local at 12:00 (back-off restarting failed container)",
                   targets=(("local", "v1", C.INSTANCE_STATUS_ROLLED_BACK),))
    prod = conv("prod", "v2", C.INSTANCE_STATUS_FAILED, "staging ROLLING_BACK at v2: automatic rollback to v1: …",
                targets=(("local", "v1", C.INSTANCE_STATUS_CONVERGED),))
    both = [staging, prod]

    assert summaries.latest(prod, both) == "v2 not promoted: staging rolled back"
    assert summaries.latest(staging, both) == (
        "v2 failed; rolled back to v1: crash loop on runtime local at 12:00 (back-off restarting failed container)"
    )
    assert (summaries.running(prod), summaries.settled(prod)) == ("v1", 1)
    rejected = conv("prod", "v2", C.INSTANCE_STATUS_FAILED, "rejected by bob (prod-signoff): not today",
                    targets=(("local", "v1", C.INSTANCE_STATUS_CONVERGED),))
    assert summaries.latest(rejected, [rejected]) == "v2 not promoted: rejected by bob (prod-signoff): not today"


def test_the_other_sentences() -> None:
    assert summaries.latest(conv("prod", "v2", C.INSTANCE_STATUS_WAITING_APPROVAL,
                                 "waiting for 1 approval of prod-signoff (0 given)")) == (
        "v2 waiting for 1 approval of prod-signoff (0 given)"
    )
    assert summaries.latest(conv("staging", "v2", C.INSTANCE_STATUS_CONVERGED, running="v2")) == "v2 converged"
    deployed = conv("staging", "v2", C.INSTANCE_STATUS_FAILED, "crash loop on runtime local",
                    targets=(("local", "v2", C.INSTANCE_STATUS_FAILED),))
    assert summaries.latest(deployed) == "v2 failed: crash loop on runtime local"
    assert summaries.settled(deployed) == 0
    manual = conv("prod", "v2", C.INSTANCE_STATUS_ROLLED_BACK, "rolled back to v1: rollback requested by erin (to v1)")
    assert summaries.latest(manual) == "v2 rolled back to v1: rollback requested by erin (to v1)"
    assert summaries.latest(conv("prod", "v2", C.INSTANCE_STATUS_PAUSED, "paused: freeze")) == "v2 paused: freeze"


def test_running_is_told_per_runtime_when_runtimes_differ() -> None:
    c = conv("prod", "v2", C.INSTANCE_STATUS_DEPLOYING, running="")
    c.targets.add(runtime="eu", namespace="shop", running_release_id="rel-v1", running_version="v1")
    c.targets.add(runtime="us", namespace="shop")
    assert summaries.running(c) == "v1 on eu/shop, nothing on us/shop"
    assert summaries.running(conv("prod", "v2", C.INSTANCE_STATUS_DEPLOYING, running="")) == "nothing"
