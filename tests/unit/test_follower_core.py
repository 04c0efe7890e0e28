"""The follower's pure decisions: which image becomes a release, under which version and key."""

from __future__ import annotations

from google.protobuf import duration_pb2

from schemas.convoy.v1 import resources_pb2 as R
from services.follower import core

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def subscription(strategy: int, *, released: tuple[core.Released, ...] = (), constraint: str = "",
                 versions: frozenset[str] | None = None, interval: int = 0, floor: int = 60) -> core.Subscription:
    follow = R.FollowRepository(repository="reg.example.com/shop/api", strategy=strategy, constraint=constraint)
    if interval:
        follow.interval.CopyFrom(duration_pb2.Duration(seconds=interval))
    registry = R.Registry(name="hub", url="https://reg.example.com", min_poll_interval=duration_pb2.Duration(seconds=floor))
    return core.Subscription("shop", "api", follow, registry, released,
                             versions if versions is not None else frozenset(r.version for r in released))


def test_semver_deploys_a_new_tag_once_with_a_key_from_the_digest() -> None:
    s = subscription(R.FOLLOW_STRATEGY_SEMVER, constraint=">=1.0.0")
    assert core.choose(s, ["0.9.0", "1.0.0", "1.2.0", "latest"]) == "1.2.0"
    deploy = core.decide(s, "1.2.0", D1)
    assert deploy == core.Deploy("shop", "api", "1.2.0", "reg.example.com/shop/api:1.2.0", D1, f"follow:shop/api:{D1}")
    assert core.decide(s, "1.2.0", D1) == deploy  # deterministic: the same request, the same key
    done = subscription(R.FOLLOW_STRATEGY_SEMVER, released=(core.Released("1.2.0", "1.2.0", D1),))
    assert core.decide(done, "1.2.0", D2) is None, "a moved immutable tag is not a new image"


def test_semver_never_downgrades_what_was_released() -> None:
    s = subscription(R.FOLLOW_STRATEGY_SEMVER, released=(core.Released("2.0.0", "2.0.0", D1),))
    assert core.decide(s, "1.9.0", D2) is None
    assert core.decide(s, "2.1.0", D2) is not None


def test_a_version_taken_by_hand_gets_the_digest_as_suffix() -> None:
    s = subscription(R.FOLLOW_STRATEGY_SEMVER, versions=frozenset({"1.2.0"}))
    deploy = core.decide(s, "1.2.0", D1)
    assert deploy is not None and deploy.version == "1.2.0-" + "1" * 12


def test_digest_follows_a_moved_tag_and_never_goes_back() -> None:
    s = subscription(R.FOLLOW_STRATEGY_DIGEST, constraint="latest")
    assert core.choose(s, ["latest", "1.0.0"]) == "latest"
    first = core.decide(s, "latest", D1)
    assert first is not None and first.version == "latest-" + "1" * 12
    after = subscription(R.FOLLOW_STRATEGY_DIGEST, constraint="latest", released=(core.Released(first.version, "latest", D1),))
    assert core.decide(after, "latest", D1) is None
    moved = core.decide(after, "latest", D2)
    assert moved is not None and moved.digest == D2 and moved.version == "latest-" + "2" * 12
    both = subscription(R.FOLLOW_STRATEGY_DIGEST, constraint="latest", released=(
        core.Released(first.version, "latest", D1), core.Released(moved.version, "latest", D2)))
    assert core.decide(both, "latest", D1) is None, "going back to a released digest is a rollback"
    assert core.decide(both, "latest", D3) is not None


def test_lexical_takes_the_greatest_tag() -> None:
    s = subscription(R.FOLLOW_STRATEGY_LEXICAL)
    assert core.choose(s, ["2026-01-02", "2026-01-10", "2025-12-31"]) == "2026-01-10"
    released = subscription(R.FOLLOW_STRATEGY_LEXICAL, released=(core.Released("2026-01-10", "2026-01-10", D1),))
    assert core.decide(released, "2026-01-02", D2) is None


def test_polling_is_never_faster_than_the_registry_allows() -> None:
    assert subscription(R.FOLLOW_STRATEGY_SEMVER, interval=10, floor=60).interval_seconds(300) == 60
    assert subscription(R.FOLLOW_STRATEGY_SEMVER, interval=600, floor=60).interval_seconds(300) == 600
    assert subscription(R.FOLLOW_STRATEGY_SEMVER, floor=60).interval_seconds(300) == 300


def test_a_push_is_reflected_once_its_tag_is_listed_and_if_selected_at_its_digest() -> None:
    assert not core.reflected("1.1.0", D2, ["1.0.0"], "1.0.0", D1), "not listed yet"
    assert not core.reflected("1.0.0", D2, ["1.0.0"], "1.0.0", D1), "selected, still at the old digest"
    assert core.reflected("1.0.0", D2, ["1.0.0"], "1.0.0", D2)
    assert core.reflected("latest", D3, ["1.0.0", "latest"], "1.0.0", D1), "listed, not the selected tag"
