"""Validating a service's `FollowRepository` subscription at ApplyService.

The followed repository must be on a declared registry (that is where its credentials
and request budget live), name no tag or digest (the strategy picks tags), and the
service must have one program (the image a new release replaces, as `convoy deploy
--image` does). The strategy's own rules — a semver range that parses, a tag for
`digest`, patterns that compile — are services.registry.selection's.
"""

from __future__ import annotations

from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import Problems
from services.api.domain.registries import image_registry
from services.api.domain.state import State
from services.api.domain.validation import check_duration, listing, q
from services.registry.selection import check_subscription
from services.registry.reference import ImageReference

STRATEGIES: Final = {
    resources_pb2.FOLLOW_STRATEGY_SEMVER: "semver",
    resources_pb2.FOLLOW_STRATEGY_LEXICAL: "lexical",
    resources_pb2.FOLLOW_STRATEGY_DIGEST: "digest",
}
MAX_IGNORE: Final = 32


def check_shape(problems: Problems, service: resources_pb2.Service) -> None:
    if not service.HasField("follow"):
        return
    follow = service.follow
    at = "service.follow"
    try:
        reference = ImageReference.parse(follow.repository)
    except ValueError as e:
        problems.add(f"{at}.repository", f"{e}; name it as host[:port]/repository")
    else:
        if reference.tag or reference.digest:
            problems.add(f"{at}.repository", f"{q(follow.repository)}: name the repository without a tag or digest")
    strategy = STRATEGIES.get(follow.strategy)
    if strategy is None:
        problems.add(f"{at}.strategy", f"required: one of {listing(n.upper() for n in STRATEGIES.values())} (FOLLOW_STRATEGY_…)")
    elif len(follow.ignore_tags) > MAX_IGNORE:
        problems.add(f"{at}.ignore_tags", f"at most {MAX_IGNORE} patterns")
    else:
        for problem in check_subscription(strategy, follow.constraint, follow.allow_tags, list(follow.ignore_tags)):
            problems.add(at, problem)
    check_duration(problems, at, follow, "interval")
    if len(service.programs) != 1:
        problems.add(
            at,
            f"a followed repository replaces the image of a single-program service; this one has {len(service.programs)} programs",
        )
    elif follow.program and follow.program != service.programs[0].name:
        problems.add(f"{at}.program", f"{q(follow.program)} is not the service's program {q(service.programs[0].name)}")


def check_references(problems: Problems, service: resources_pb2.Service, state: State) -> None:
    if not service.HasField("follow"):
        return
    if image_registry(state, service.follow.repository) is None:
        problems.add(
            "service.follow.repository",
            f"{q(service.follow.repository)} is on no declared registry (declared: {listing(state.registries)}); "
            "declare its registry first (kind: Registry)",
        )
