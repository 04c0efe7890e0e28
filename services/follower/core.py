"""What a followed repository asks for now: a pure decision per subscription.

A subscription (a service's `FollowRepository`) is looked at with the repository's tags
and, for the tag its strategy selects, the digest the registry answered. The decision
is a deploy — or nothing — from that and the releases the service already has:

- `semver` / `lexical` treat tags as immutable: the selected tag is deployed once, and
  never when a tag at least as high (by the strategy's order) was released from this
  repository already — a subscription never downgrades what someone deployed by hand.
- `digest` tracks a mutable tag: a digest different from the newest release's pinned
  digest of that tag is a new image. Going back to a digest released before is a
  rollback, which is a person's decision (`convoy rollback`), so it is not deployed.

A deploy names its version (the tag; the tag and a digest prefix when the tag is
mutable or already used as a version) and an idempotency key derived from the service
and the digest: polls and push notifications — in one process or several — that pick
the same image send the same request with the same key, and the API's receipts make
it one release.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.registry import selection
from services.registry.reference import ImageReference

_VERSION: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
STRATEGY_NAMES: Final = {
    resources_pb2.FOLLOW_STRATEGY_SEMVER: "semver",
    resources_pb2.FOLLOW_STRATEGY_LEXICAL: "lexical",
    resources_pb2.FOLLOW_STRATEGY_DIGEST: "digest",
}


@dataclass(frozen=True, slots=True)
class Released:
    """A release of the service whose image came from the followed repository."""

    version: str
    tag: str | None
    digest: str


@dataclass(frozen=True, slots=True)
class Subscription:
    application: str
    service: str
    follow: resources_pb2.FollowRepository
    registry: resources_pb2.Registry
    released: tuple[Released, ...]
    """Oldest first."""
    versions: frozenset[str]
    """Every version label the service has (versions are unique per service)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.application, self.service)

    @property
    def strategy(self) -> str:
        return STRATEGY_NAMES.get(self.follow.strategy, "")

    @property
    def repository(self) -> ImageReference:
        return ImageReference.parse(self.follow.repository)

    def interval_seconds(self, default: float) -> float:
        """How often to look: the subscription's interval, never below the registry's minimum."""
        asked = self.follow.interval.ToTimedelta().total_seconds() if self.follow.HasField("interval") else default
        floor = self.registry.min_poll_interval.ToTimedelta().total_seconds()
        return max(asked, floor, 1.0)


@dataclass(frozen=True, slots=True)
class Deploy:
    application: str
    service: str
    version: str
    image: str
    """repository:tag, as a person would deploy it; the API pins the digest."""
    digest: str
    idempotency_key: str


def choose(subscription: Subscription, tags: Sequence[str]) -> str | None:
    """The tag the strategy selects among `tags` (None: nothing eligible)."""
    follow = subscription.follow
    return selection.select(
        tags,
        strategy=subscription.strategy,
        constraint=follow.constraint,
        allow=follow.allow_tags,
        ignore=list(follow.ignore_tags),
    )


def decide(subscription: Subscription, tag: str, digest: str) -> Deploy | None:
    """Whether the selected `tag` (now at `digest`) becomes a release."""
    released = subscription.released
    if subscription.strategy == "digest":
        same_tag = [r for r in released if r.tag == tag]
        if same_tag and same_tag[-1].digest == digest:
            return None
        if any(r.digest == digest for r in released):
            return None  # a digest released before: going back is a rollback, not discovery
        version = _versioned(f"{tag}-{digest.removeprefix('sha256:')[:12]}")
    else:
        if any(r.tag == tag for r in released):
            return None
        if _not_above(subscription, tag):
            return None
        version = _versioned(tag)
        if version in subscription.versions:
            version = _versioned(f"{tag}-{digest.removeprefix('sha256:')[:12]}")
    if version in subscription.versions:
        return None
    return Deploy(
        application=subscription.application,
        service=subscription.service,
        version=version,
        image=f"{subscription.follow.repository}:{tag}",
        digest=digest,
        idempotency_key=f"follow:{subscription.application}/{subscription.service}:{digest}",
    )


def _not_above(subscription: Subscription, tag: str) -> bool:
    """Whether a tag released from this repository already ranks at least as high as `tag`."""
    known = [r.tag for r in subscription.released if r.tag]
    if not known:
        return False
    best = selection.select(
        [*known, tag], strategy=subscription.strategy, constraint="", allow="", ignore=[]
    )
    return best is not None and best != tag


def _versioned(text: str) -> str:
    """A valid version label from a tag (tags allow what versions allow, nearly)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "-", text)[:128]
    if not cleaned or not cleaned[0].isalnum():
        cleaned = f"v{cleaned}"[:128]
    assert _VERSION.fullmatch(cleaned), cleaned
    return cleaned


def reflected(pushed_tag: str, pushed_digest: str, tags: Sequence[str], selected: str | None, digest: str | None) -> bool:
    """Whether a look already saw what a push notification announced. Distribution
    notifies a manifest push before it moves the tag, so a look woken by the notification
    can see the repository as it was: the pushed tag not listed yet, or — when it is the
    tag the strategy selected — still at its old digest. Such a look is repeated shortly."""
    if pushed_tag not in tags:
        return False
    return pushed_tag != selected or digest == pushed_digest

