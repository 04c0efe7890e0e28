"""Tag selection: table tests of each strategy and the constraint dialect, and properties
checked against an independent oracle (plain tuple comparisons): the selected tag satisfies
the constraint, and no allowed tag satisfying it is greater."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.registry.selection import Version, check_subscription, satisfies, select

TAGS = [
    "0.9.9", "1.0.0", "v1.2.0", "1.2.5", "1.3.0-rc.1", "1.3.0-rc.2", "1.3.0", "1.10.0",
    "2.0.0-beta.1", "2.0.0", "2.1.0+build.7", "latest", "main-abc123", "1.4", "01.2.3",
]


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("", "2.1.0+build.7"),
        ("*", "2.1.0+build.7"),
        ("^1.2", "1.10.0"),
        ("^1.2.5", "1.10.0"),
        ("^0.9", "0.9.9"),
        ("^0.0.1", None),
        ("~1.2.0", "1.2.5"),
        ("~1.3", "1.3.0"),
        ("~1", "1.10.0"),
        ("1.x", "1.10.0"),
        ("1.2.*", "1.2.5"),
        ("1.2", "1.2.5"),
        ("=1.2.0", "v1.2.0"),
        ("1.2.0", "v1.2.0"),
        (">=1.2.0 <1.3.0", "1.2.5"),
        (">=1.2.0, <1.3.0", "1.2.5"),
        (">= 1.2.0 , < 1.3.0", "1.2.5"),
        (">1.3.0 <2", "1.10.0"),
        (">1.3", "2.1.0+build.7"),
        ("<=1.3", "1.3.0"),
        ("<1.0.0 || >=2.0.0 <2.1.0", "2.0.0"),
        ("!=2.1.0", "2.0.0"),
        ("1.2 - 1.3", "1.3.0"),
        ("1.2.0 - 1.2.4", "v1.2.0"),
        ("<0.1.0", None),
        # Pre-releases only when the constraint names one of the same version (npm's rule).
        (">=1.3.0-rc.1 <1.3.0", "1.3.0-rc.2"),
        (">=1.3.0-rc.1 <2.0.0", "1.10.0"),
        (">=2.0.0-0 <2.0.0", "2.0.0-beta.1"),
        ("~1.3.0-0", "1.3.0"),
    ],
)
def test_semver(constraint: str, expected: str | None) -> None:
    assert select(TAGS, strategy="semver", constraint=constraint) == expected


def test_not_semver_tags_are_never_candidates() -> None:
    assert Version.parse("1.4") is None and Version.parse("01.2.3") is None and Version.parse("latest") is None
    assert select(["latest", "1.4", "main"], strategy="semver") is None


def test_lexical_and_digest() -> None:
    dated = ["2026-01-30-aaa", "2026-02-01-bbb", "2026-01-31-ccc"]
    assert select(dated, strategy="lexical") == "2026-02-01-bbb"
    assert select(dated, strategy="lexical", ignore=["2026-02-*"]) == "2026-01-31-ccc"
    assert select([], strategy="lexical") is None
    assert select(TAGS, strategy="digest", constraint="latest") == "latest"
    assert select(TAGS, strategy="digest", constraint="stable") is None
    assert select(TAGS, strategy="digest", constraint="latest", ignore=["latest"]) is None


def test_allow_and_ignore() -> None:
    assert select(TAGS, strategy="semver", allow=r"1\.\d+\.\d+") == "1.10.0"
    assert select(TAGS, strategy="semver", allow=r"1\.2") is None  # matched fully, not searched
    assert select(TAGS, strategy="semver", ignore=["2.*"]) == "1.10.0"
    assert select(TAGS, strategy="semver", ignore=[r"^2\..*", "1.10.0"]) == "1.3.0"
    assert select(TAGS, strategy="lexical", ignore=["^[0-9].*"]) == "v1.2.0"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"strategy": "newest"}, "strategy 'newest' is not one of semver, lexical, digest"),
        ({"strategy": "semver", "constraint": ">=1.2.3.4"}, "semver constraint '>=1.2.3.4': cannot read '>=1.2.3.4'"),
        ({"strategy": "semver", "constraint": ">>1"}, "cannot read '>>1'"),
        ({"strategy": "semver", "constraint": "1.x.3"}, "'1.x.3' has a number after a wildcard"),
        ({"strategy": "semver", "constraint": "1 ||"}, "an empty alternative around '||'"),
        ({"strategy": "semver", "constraint": "1.x-rc.1"}, "a pre-release on a partial version"),
        ({"strategy": "lexical", "constraint": "1.x"}, "the lexical strategy takes no constraint"),
        ({"strategy": "digest"}, "the digest strategy needs the tag to follow"),
        ({"strategy": "semver", "allow": "("}, "allow pattern '(' is not a regular expression"),
        ({"strategy": "semver", "ignore": ["^("]}, "ignore pattern '^(' is not a regular expression"),
        ({"strategy": "semver", "ignore": [""]}, "an ignore pattern is empty"),
        ({"strategy": "semver", "ignore": "latest"}, "ignore must be a list of patterns"),
    ],
)
def test_bad_rules_are_value_errors(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        select(TAGS, **arguments)
    assert message in str(refused.value)


def test_check_subscription_lists_every_problem() -> None:
    assert check_subscription("semver", "^1.2", r"\d+\.\d+\.\d+", ["*-debug"]) == []
    problems = check_subscription("semver", ">>1", "(", ["^["])
    assert len(problems) == 3
    assert problems[0].startswith("semver constraint '>>1'")
    assert problems[1].startswith("allow pattern '('") and problems[2].startswith("ignore pattern '^['")
    assert check_subscription("digest", "", "", []) == ["the digest strategy needs the tag to follow as its constraint (for example latest)"]


# --- properties ----------------------------------------------------------------------

cores = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))
pre = st.sampled_from(["", "-rc.1", "-rc.2", "-alpha", "-0"])
tag_lists = st.lists(st.tuples(cores, pre, st.booleans()), max_size=25).map(
    lambda items: [f"{'v' if v else ''}{a}.{b}.{c}{p}" for (a, b, c), p, v in items]
)


def _core(tag: str) -> tuple[int, int, int]:
    a, b, c = tag.removeprefix("v").split("-", 1)[0].split(".")
    return int(a), int(b), int(c)


@given(tags=tag_lists, low=cores, high=cores)
def test_a_range_selects_the_greatest_satisfying_release(tags: list[str], low: tuple, high: tuple) -> None:
    constraint = f">={'.'.join(map(str, low))} <{'.'.join(map(str, high))}"
    chosen = select(tags, strategy="semver", constraint=constraint)
    # The oracle: releases only (the constraint names no pre-release), compared as tuples.
    fitting = [t for t in tags if "-" not in t and low <= _core(t) < high]
    if not fitting:
        assert chosen is None
        return
    assert chosen is not None and "-" not in chosen and low <= _core(chosen) < high
    assert all(_core(t) <= _core(chosen) for t in fitting)
    assert satisfies(chosen, constraint)


@given(tags=tag_lists, base=cores)
def test_caret_stays_below_the_next_breaking_version(tags: list[str], base: tuple) -> None:
    major, minor, patch = base
    ceiling = (major + 1, 0, 0) if major else ((0, minor + 1, 0) if minor else (0, 0, patch + 1))
    chosen = select(tags, strategy="semver", constraint=f"^{major}.{minor}.{patch}")
    fitting = [t for t in tags if "-" not in t and base <= _core(t) < ceiling]
    assert (chosen is None) == (not fitting)
    if chosen is not None:
        assert base <= _core(chosen) < ceiling
        assert all(_core(t) <= _core(chosen) for t in fitting)


@given(tags=st.lists(st.text(alphabet="abcz019.-_", min_size=1, max_size=8), max_size=20))
def test_lexical_is_the_greatest_string(tags: list[str]) -> None:
    assert select(tags, strategy="lexical") == (max(tags) if tags else None)
