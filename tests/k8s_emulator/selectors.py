"""Label and field selectors, as list and watch requests send them.

Label selectors support the full string syntax (`a=b`, `a==b`, `a!=b`, `a in (x,y)`,
`a notin (x)`, `a`, `!a`); field selectors the fields the apiserver indexes for the
emulated types (`metadata.name`, `metadata.namespace`, `status.phase`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.k8s_emulator import errors

JSON = dict[str, Any]
Matcher = Callable[[JSON], bool]

_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_matcher(selector: str | None) -> Matcher:
    if not selector:
        return lambda obj: True
    tests: list[Callable[[dict[str, str]], bool]] = []
    for raw in _split(selector):
        term = raw.strip()
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) != v)
        elif "==" in term or ("=" in term and " in " not in term):
            k, v = (s.strip() for s in re.split("==?", term, maxsplit=1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) == v)
        else:
            match = _SET.match(term)
            if not match:
                raise errors.bad_request(f"unable to parse requirement: {term!r}")
            negated, key, op, values = match.groups()
            if op:
                wanted = {v.strip() for v in values.split(",") if v.strip()}
                if op == "in":
                    tests.append(lambda labels, k=key, w=wanted: labels.get(k) in w)
                else:
                    tests.append(lambda labels, k=key, w=wanted: labels.get(k) not in w)
            elif negated:
                tests.append(lambda labels, k=key: k not in labels)
            else:
                tests.append(lambda labels, k=key: k in labels)
    return lambda obj: all(t((obj.get("metadata") or {}).get("labels") or {}) for t in tests)


FIELDS: dict[str, Callable[[JSON], str]] = {
    "metadata.name": lambda o: (o.get("metadata") or {}).get("name", ""),
    "metadata.namespace": lambda o: (o.get("metadata") or {}).get("namespace", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
}


def field_matcher(selector: str | None) -> Matcher:
    if not selector:
        return lambda obj: True
    tests: list[Matcher] = []
    for term in _split(selector):
        negate = "!=" in term
        field, value = (s.strip() for s in re.split("!=|==?", term, maxsplit=1))
        getter = FIELDS.get(field)
        if getter is None:
            raise errors.bad_request(f'"{field}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        if negate:
            tests.append(lambda o, g=getter, v=value: g(o) != v)
        else:
            tests.append(lambda o, g=getter, v=value: g(o) == v)
    return lambda obj: all(t(obj) for t in tests)
