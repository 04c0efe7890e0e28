"""PROVISIONAL (replaced by the registry library's selection module at merge)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

STRATEGIES = ("semver", "lexical", "digest")


def check_subscription(strategy: str, constraint: str, allow: str, ignore: Sequence[str]) -> list[str]:
    problems = []
    for pattern in [allow, *ignore]:
        try:
            re.compile(pattern)
        except re.error as e:
            problems.append(f"{pattern!r} is not a regular expression: {e}")
    if strategy == "digest" and not constraint:
        problems.append("constraint: the tag to track is required for the digest strategy")
    return problems


def select(tags: Iterable[str], *, strategy: str, constraint: str = "", allow: str = "", ignore: Sequence[str] = ()) -> str | None:
    candidates = [t for t in tags if (not allow or re.fullmatch(allow, t)) and not any(re.fullmatch(p, t) for p in ignore)]
    if strategy == "digest":
        return constraint if constraint in candidates else None
    if strategy == "lexical":
        return max(candidates, default=None)
    def key(t: str):
        return tuple(int(x) for x in t.lstrip("v").split("."))
    good = [t for t in candidates if re.fullmatch(r"v?\d+\.\d+\.\d+", t)]
    return max(good, key=key, default=None)
