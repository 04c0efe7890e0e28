"""Which tag of a repository to deploy: the pure rule a repository subscription applies to a
tag list (Kargo's `imageSelectionStrategy`, Flux's `ImagePolicy`).

- `semver`: the highest tag that is a semantic version (`1.2.3`, `v1.2.3-rc.1`; all three
  numbers required) satisfying `constraint`, in the Masterminds/npm dialect: `>=1.2.0 <2.0.0`,
  `^1.2`, `~1.2.3`, `1.x`, `1.2 - 1.4`, `*`; commas or spaces mean AND, `||` means OR.
  Pre-releases are candidates only when the constraint names one of the same version, as
  npm does: `>=1.3.0-rc.1 <2.0.0` admits `1.3.0-rc.2`, not `2.0.0-beta.1`.
- `lexical`: the greatest tag in plain string order (date-stamped tags: `2026-01-31-abc`).
- `digest`: the mutable tag named by `constraint` (`latest`); the caller compares its digest
  with the one deployed.

`allow` is a regular expression a tag must match fully; `ignore` entries drop tags: a glob
(`*-debug`, or a plain tag) unless it starts with `^`, then a regular expression matched fully.
Bad constraints and patterns raise ValueError saying what is wrong; `check_subscription`
collects those problems for validation when a subscription is declared.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

STRATEGIES = ("semver", "lexical", "digest")

_SEMVER = re.compile(
    r"v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_COMPARATOR = re.compile(
    r"(>=|<=|!=|=>|=<|~>|>|<|=|~|\^)?\s*"
    r"(v?(?:[0-9]+|[xX*])(?:\.(?:[0-9]+|[xX*])){0,2}(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)"
)
_PARTIAL = re.compile(r"v?([0-9]+|[xX*])(?:\.([0-9]+|[xX*]))?(?:\.([0-9]+|[xX*]))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
_HYPHEN = re.compile(r"(\S+)\s+-\s+(\S+)")


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """A tag as a semantic version, or None when it is not one."""
        m = _SEMVER.fullmatch(text)
        if m is None:
            return None
        pre = tuple(m.group(4).split(".")) if m.group(4) else ()
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)

    @property
    def core(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.patch

    def key(self) -> tuple:
        """Semantic-version precedence: a release sorts above its pre-releases; numeric
        identifiers below alphanumeric ones; build metadata is ignored."""
        if not self.pre:
            return (*self.core, (1,))
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (*self.core, (0, ids))


Predicate = Callable[[Version], bool]


@dataclass(frozen=True)
class _Partial:
    parts: tuple[int | None, int | None, int | None]
    pre: tuple[str, ...]

    @property
    def specified(self) -> int:
        """How many leading numbers are given (3 for a full version)."""
        count = 0
        for part in self.parts:
            if part is None:
                break
            count += 1
        return count

    def lower(self) -> Version:
        major, minor, patch = (p or 0 for p in self.parts)
        return Version(major, minor, patch, self.pre)

    def upper(self) -> tuple[int, int, int]:
        """The first core version above every version this partial names (1.2 → 1.3.0)."""
        major, minor, _ = (p or 0 for p in self.parts)
        if self.specified == 0:
            return (2**63, 0, 0)
        if self.specified == 1:
            return (major + 1, 0, 0)
        return (major, minor + 1, 0)


def _partial(text: str, constraint: str) -> _Partial:
    m = _PARTIAL.fullmatch(text)
    if m is None:
        raise ValueError(f"semver constraint {constraint!r}: {text!r} is not a version")
    raw = [m.group(1), m.group(2), m.group(3)]
    parts: list[int | None] = []
    wild = False
    for part in raw:
        if part is None or part in ("x", "X", "*"):
            wild = True
            parts.append(None)
        elif wild:
            raise ValueError(f"semver constraint {constraint!r}: {text!r} has a number after a wildcard")
        else:
            parts.append(int(part))
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    if pre and None in parts:
        raise ValueError(f"semver constraint {constraint!r}: {text!r} has a pre-release on a partial version")
    return _Partial((parts[0], parts[1], parts[2]), pre)


def _ge(bound: Version) -> Predicate:
    return lambda v: v.key() >= bound.key()


def _below_core(core: tuple[int, int, int]) -> Predicate:
    return lambda v: v.core < core


def _comparator(op: str, p: _Partial) -> list[Predicate]:
    full = p.specified == 3
    low = p.lower()
    if op in ("", "="):
        return [lambda v: v.key() == low.key()] if full else [_ge(low), _below_core(p.upper())]
    if op == "!=":
        if full:
            return [lambda v: v.key() != low.key()]
        upper = p.upper()
        return [lambda v: not (v.key() >= low.key() and v.core < upper)]
    if op == ">":
        return [lambda v: v.key() > low.key()] if full else [lambda v: v.core >= p.upper()]
    if op in (">=", "=>"):
        return [_ge(low)]
    if op == "<":
        return [lambda v: v.key() < low.key()]
    if op in ("<=", "=<"):
        return [lambda v: v.key() <= low.key()] if full else [_below_core(p.upper())]
    if op in ("~", "~>"):
        major, minor, _ = (x or 0 for x in p.parts)
        upper = (major + 1, 0, 0) if p.specified == 1 else (major, minor + 1, 0)
        return [_ge(low), _below_core(upper)] if p.specified else []
    # "^": up to the next change of the leftmost non-zero number given.
    major, minor, patch = (x or 0 for x in p.parts)
    if p.specified == 0:
        return []
    if major > 0 or p.specified == 1:
        upper = (major + 1, 0, 0)
    elif minor > 0 or p.specified == 2:
        upper = (0, minor + 1, 0)
    else:
        upper = (0, 0, patch + 1)
    return [_ge(low), _below_core(upper)]


@dataclass(frozen=True)
class Constraint:
    """OR of AND groups; each group knows the versions whose pre-releases it admits (those
    its comparators name with a pre-release)."""

    groups: tuple[tuple[tuple[Predicate, ...], frozenset[tuple[int, int, int]]], ...]

    @classmethod
    def parse(cls, text: str) -> Constraint:
        groups: list[tuple[tuple[Predicate, ...], frozenset[tuple[int, int, int]]]] = []
        for alternative in text.split("||"):
            alternative = alternative.strip()
            if not alternative and text.strip():
                raise ValueError(f"semver constraint {text!r}: an empty alternative around '||'")
            predicates: list[Predicate] = []
            names_pre: set[tuple[int, int, int]] = set()
            rest = _HYPHEN.sub(lambda m: f"\x00{m.group(1)}\x00{m.group(2)}", alternative)
            position = 0
            rest = rest.replace(",", " ")
            while position < len(rest):
                if rest[position].isspace():
                    position += 1
                    continue
                if rest[position] == "\x00":
                    low_text, _, tail = rest[position + 1 :].partition("\x00")
                    high_text = tail.split(" ", 1)[0]
                    low, high = _partial(low_text, text), _partial(high_text, text)
                    names_pre |= {p.lower().core for p in (low, high) if p.pre}
                    predicates += _comparator(">=", low) + _comparator("<=", high)
                    position += 1 + len(low_text) + 1 + len(high_text)
                    continue
                m = _COMPARATOR.match(rest, position)
                if m is None or (m.end() < len(rest) and not rest[m.end()].isspace()):
                    bad = rest[position:].split(" ", 1)[0]
                    raise ValueError(
                        f"semver constraint {text!r}: cannot read {bad!r} "
                        "(expected an operator =, !=, >, >=, <, <=, ~, ^ and a version such as 1.2.3, 1.2 or 1.x)"
                    )
                version = _partial(m.group(2), text)
                if version.pre:
                    names_pre.add(version.lower().core)
                predicates += _comparator(m.group(1) or "", version)
                position = m.end()
            groups.append((tuple(predicates), frozenset(names_pre)))
        return cls(tuple(groups))

    def admits(self, version: Version) -> bool:
        for predicates, names_pre in self.groups:
            if version.pre and version.core not in names_pre:
                continue
            if all(p(version) for p in predicates):
                return True
        return False


def satisfies(tag: str, constraint: str) -> bool:
    """Whether a tag is a semantic version satisfying the constraint."""
    version = Version.parse(tag)
    return version is not None and Constraint.parse(constraint).admits(version)


def _allow(allow: str) -> re.Pattern[str] | None:
    if not allow:
        return None
    try:
        return re.compile(allow)
    except re.error as e:
        raise ValueError(f"allow pattern {allow!r} is not a regular expression: {e}") from None


def _ignore(ignore: Sequence[str]) -> list[Callable[[str], bool]]:
    if isinstance(ignore, str):
        raise ValueError("ignore must be a list of patterns, not one string")
    matchers: list[Callable[[str], bool]] = []
    for entry in ignore:
        if not entry:
            raise ValueError("an ignore pattern is empty")
        if entry.startswith("^"):
            try:
                pattern = re.compile(entry)
            except re.error as e:
                raise ValueError(f"ignore pattern {entry!r} is not a regular expression: {e}") from None
            matchers.append(lambda tag, p=pattern: p.fullmatch(tag) is not None)
        else:
            matchers.append(lambda tag, g=entry: fnmatch.fnmatchcase(tag, g))
    return matchers


def select(
    tags: Iterable[str], *, strategy: str, constraint: str = "", allow: str = "", ignore: Sequence[str] = ()
) -> str | None:
    """The tag to deploy, or None when no tag qualifies."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    allowed = _allow(allow)
    dropped = _ignore(ignore)
    if strategy == "semver":
        parsed = Constraint.parse(constraint or "*")
    elif strategy == "lexical" and constraint:
        raise ValueError("the lexical strategy takes no constraint (use allow to narrow the tags)")
    elif strategy == "digest" and not constraint:
        raise ValueError("the digest strategy needs the tag to follow as its constraint (for example latest)")
    candidates = [
        tag for tag in tags
        if (allowed is None or allowed.fullmatch(tag)) and not any(drop(tag) for drop in dropped)
    ]
    if strategy == "digest":
        return constraint if constraint in candidates else None
    if strategy == "lexical":
        return max(candidates, default=None)
    best: tuple[tuple, str] | None = None
    for tag in candidates:
        version = Version.parse(tag)
        if version is not None and parsed.admits(version):
            ranked = (version.key(), tag)
            if best is None or ranked > best:
                best = ranked
    return None if best is None else best[1]


def check_subscription(strategy: str, constraint: str, allow: str, ignore: Sequence[str]) -> list[str]:
    """Every problem with a subscription's selection rule (empty when it is usable)."""
    try:
        select((), strategy=strategy, constraint=constraint, allow="", ignore=())
    except ValueError as e:
        problems = [str(e)]
    else:
        problems = []
    for check in (lambda: _allow(allow), lambda: _ignore(ignore)):
        try:
            check()
        except ValueError as e:
            problems.append(str(e))
    return problems
