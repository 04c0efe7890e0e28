"""A small, safe expression language for judging HTTP answers (change-ticket gates).

A gate decides from an answer whether a change is approved: `status == 200 and
body.result[0].approval == "approved"`, `body.fields.status.name in ["Done", "Approved"]`,
`not (headers.x-state matches "^rej")`. Users write these in configuration, so they are
parsed here — never `eval`ed — into a tree of plain tuples that can only read the answer:
no calls, no attribute access on Python objects, no loops. Parsing happens when a
protection is declared (ApplyProtection, `convoy config validate`), so a typo is reported
with its column then, not at 3 a.m. when the gate first polls.

Grammar (lowest precedence first):

    expr    := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | compare
    compare := value (OP value)?         OP: == != < <= > >= in "not in" matches contains
    value   := path | string | number | true | false | null | "[" [expr ("," expr)*] "]" | "(" expr ")"
    path    := ROOT ("." NAME | "[" (integer | string) "]")*     ROOT: status, body, headers

Evaluation never raises on data: a missing field is `null`, a comparison between
values of different types is false, so `body.result[0].approval == "approved"` on an
empty result is simply false (keep polling). Header names are case-insensitive.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROOTS = ("status", "body", "headers")
MAX_LENGTH = 2000
MAX_PATTERN = 200
MAX_MATCH_INPUT = 64 * 1024

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\.)
  | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "matches", "contains", "true", "false", "null"}
_COMPARE = {"==", "!=", "<", "<=", ">", ">=", "in", "not in", "matches", "contains"}


class ExpressionError(ValueError):
    """The expression cannot be parsed; the message names the column and what was expected."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    column: int


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression: `evaluate` it against answers as often as needed."""

    source: str
    tree: tuple[Any, ...]

    def evaluate(self, *, status: int, body: Any, headers: Mapping[str, str]) -> Any:
        roots = {"status": status, "body": body, "headers": {k.lower(): v for k, v in headers.items()}}
        return _eval(self.tree, roots)

    def holds(self, *, status: int, body: Any, headers: Mapping[str, str]) -> bool:
        return _truthy(self.evaluate(status=status, body=body, headers=headers))


def parse(source: str) -> Expression:
    if not source.strip():
        raise ExpressionError("empty expression")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    parser = _Parser(source, _tokenize(source))
    tree = parser.expr()
    if parser.peek() is not None:
        token = parser.peek()
        assert token is not None
        raise ExpressionError(f"at column {token.column}: unexpected {token.text!r} after a complete expression")
    return Expression(source, tree)


def check(source: str) -> str:
    """The parse error of `source` as text, empty when it parses."""
    try:
        parse(source)
    except ExpressionError as error:
        return str(error)
    return ""


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(source):
        match = _TOKEN.match(source, at)
        if match is None:
            raise ExpressionError(f"at column {at + 1}: unexpected character {source[at]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(0), at + 1))
        at = match.end()
    return tokens


class _Parser:
    def __init__(self, source: str, tokens: list[_Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.at = 0

    def peek(self, ahead: int = 0) -> _Token | None:
        index = self.at + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise ExpressionError(f"at column {len(self.source) + 1}: the expression ends too early")
        self.at += 1
        return token

    def is_word(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token is not None and token.kind == "name" and token.text == word

    def is_op(self, op: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == op

    def expect_op(self, op: str, what: str) -> None:
        if self.peek() is None:
            raise ExpressionError(f"at column {len(self.source) + 1}: expected {op!r} {what}, found the end")
        token = self.take()
        if token.kind != "op" or token.text != op:
            raise ExpressionError(f"at column {token.column}: expected {op!r} {what}, found {token.text!r}")

    def expr(self) -> tuple[Any, ...]:
        left = self.conjunction()
        while self.is_word("or"):
            self.take()
            left = ("or", left, self.conjunction())
        return left

    def conjunction(self) -> tuple[Any, ...]:
        left = self.unary()
        while self.is_word("and"):
            self.take()
            left = ("and", left, self.unary())
        return left

    def unary(self) -> tuple[Any, ...]:
        if self.is_word("not") and not self.is_word("in", 1):
            self.take()
            return ("not", self.unary())
        return self.compare()

    def compare(self) -> tuple[Any, ...]:
        left = self.value()
        token = self.peek()
        if token is None:
            return left
        op = ""
        if token.kind == "op" and token.text in _COMPARE:
            op = token.text
        elif token.kind == "name" and token.text in ("in", "matches", "contains"):
            op = token.text
        elif self.is_word("not") and self.is_word("in", 1):
            self.take()
            op = "not in"
        if not op:
            return left
        self.take()
        right = self.value()
        if op == "matches":
            if right[0] != "lit" or not isinstance(right[1], str):
                raise ExpressionError(f"at column {token.column}: `matches` takes a string pattern on its right")
            if len(right[1]) > MAX_PATTERN:
                raise ExpressionError(f"at column {token.column}: the pattern is longer than {MAX_PATTERN} characters")
            try:
                right = ("re", re.compile(right[1]))
            except re.error as error:
                raise ExpressionError(f"at column {token.column}: bad pattern {right[1]!r}: {error}") from None
        return ("cmp", op, left, right)

    def value(self) -> tuple[Any, ...]:
        token = self.take()
        if token.kind == "string":
            return ("lit", _unquote(token))
        if token.kind == "number":
            return ("lit", float(token.text) if "." in token.text else int(token.text))
        if token.kind == "op" and token.text == "(":
            inner = self.expr()
            self.expect_op(")", f"to close the '(' at column {token.column}")
            return inner
        if token.kind == "op" and token.text == "[":
            items: list[tuple[Any, ...]] = []
            if not self.is_op("]"):
                items.append(self.expr())
                while self.is_op(","):
                    self.take()
                    items.append(self.expr())
            self.expect_op("]", f"to close the list at column {token.column}")
            return ("list", tuple(items))
        if token.kind == "name":
            if token.text in ("true", "false"):
                return ("lit", token.text == "true")
            if token.text == "null":
                return ("lit", None)
            if token.text in _KEYWORDS:
                raise ExpressionError(f"at column {token.column}: expected a value, found the keyword {token.text!r}")
            if token.text not in ROOTS:
                raise ExpressionError(
                    f"at column {token.column}: unknown name {token.text!r}; an answer has {', '.join(ROOTS)}"
                )
            return self.path(token.text)
        raise ExpressionError(f"at column {token.column}: expected a value, found {token.text!r}")

    def path(self, root: str) -> tuple[Any, ...]:
        steps: list[str | int] = []
        while True:
            if self.is_op("."):
                self.take()
                name = self.take()
                if name.kind not in ("name", "number"):
                    raise ExpressionError(f"at column {name.column}: expected a field name after '.', found {name.text!r}")
                steps.append(name.text.lower() if root == "headers" else name.text)
            elif self.is_op("["):
                opening = self.take()
                key = self.take()
                if key.kind == "number" and "." not in key.text:
                    steps.append(int(key.text))
                elif key.kind == "string":
                    text = _unquote(key)
                    steps.append(text.lower() if root == "headers" else text)
                else:
                    raise ExpressionError(f"at column {key.column}: expected an index or a quoted key, found {key.text!r}")
                self.expect_op("]", f"to close the '[' at column {opening.column}")
            else:
                return ("path", root, tuple(steps))


def _unquote(token: _Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _eval(node: tuple[Any, ...], roots: Mapping[str, Any]) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "list":
        return [_eval(item, roots) for item in node[1]]
    if kind == "path":
        return _lookup(roots[node[1]], node[2])
    if kind == "not":
        return not _truthy(_eval(node[1], roots))
    if kind == "and":
        return _truthy(_eval(node[1], roots)) and _truthy(_eval(node[2], roots))
    if kind == "or":
        return _truthy(_eval(node[1], roots)) or _truthy(_eval(node[2], roots))
    if kind == "cmp":
        return _compare(node[1], _eval(node[2], roots), node[3], roots)
    raise AssertionError(f"unknown node {kind}")


def _lookup(value: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        if isinstance(step, int) and isinstance(value, list):
            value = value[step] if -len(value) <= step < len(value) else None
        elif isinstance(value, dict):
            value = value.get(str(step))
        else:
            return None
    return value


def _compare(op: str, left: Any, right_node: tuple[Any, ...], roots: Mapping[str, Any]) -> bool:
    if op == "matches":
        return isinstance(left, str) and right_node[1].search(left[:MAX_MATCH_INPUT]) is not None
    right = _eval(right_node, roots)
    if op in ("==", "!="):
        same = _same_kind(left, right) and left == right
        return same if op == "==" else not same
    if op in ("in", "not in"):
        found = isinstance(right, list) and any(_same_kind(left, item) and left == item for item in right)
        found = found or (isinstance(right, str) and isinstance(left, str) and left in right)
        return found if op == "in" else not found
    if op == "contains":
        if isinstance(left, list):
            return any(_same_kind(item, right) and item == right for item in left)
        return isinstance(left, str) and isinstance(right, str) and right in left
    if not _same_kind(left, right) or left is None or isinstance(left, bool | list | dict):
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return type(a) is type(b)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})
