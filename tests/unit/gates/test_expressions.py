"""The gate expression language: what it accepts, what it says about what it rejects, and
how it judges real-shaped answers (ServiceNow's Table API, Jira's issue API)."""

from __future__ import annotations

from typing import Any

import pytest

from services import expressions
from services.expressions import ExpressionError, parse

SNOW = {"result": [{"number": "CHG0030001", "approval": "approved", "state": "-1"}]}
JIRA = {"key": "OPS-7", "fields": {"status": {"name": "Done"}, "labels": ["change", "prod"]}}


def holds(source: str, body: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> bool:
    return parse(source).holds(status=status, body=body, headers=headers or {})


@pytest.mark.parametrize(
    ("source", "body", "expected"),
    [
        ('status == 200 and body.result[0].approval == "approved"', SNOW, True),
        ('body.result[0].approval == "rejected"', SNOW, False),
        ('body.fields.status.name in ["Done", "Approved"]', JIRA, True),
        ('body.fields.status.name not in ["Done", "Approved"]', JIRA, False),
        ('not body.fields.status.name == "Done"', JIRA, False),
        ('body.fields.status.name == "Open" or body.key matches "^OPS-[0-9]+$"', JIRA, True),
        ('body.fields.labels contains "prod"', JIRA, True),
        ('body["fields"]["status"]["name"] == "Done"', JIRA, True),
        ("body.result[0].state == -1", SNOW, False),  # a string is not a number: no coercion
        ('body.result[0].state == "-1"', SNOW, True),
        ("body.result[5].approval == null", SNOW, True),  # missing is null, never an error
        ('body.result[0].approval == "approved"', {"result": []}, False),
        ('body.result[0].approval == "approved"', None, False),  # not JSON
        ("status >= 500", None, False),
        ("(status == 200 or status == 201) and not (body.key == null)", JIRA, True),
        ("body.count > 2", {"count": 3}, True),
        ('body.count > "2"', {"count": 3}, False),
        ("body.ok", {"ok": True}, True),
        ("body.ok == true", {"ok": 1}, False),
    ],
)
def test_expressions_judge_answers(source: str, body: Any, expected: bool) -> None:
    assert holds(source, body) is expected


def test_header_names_are_case_insensitive() -> None:
    assert holds('headers.x-change-state == "approved"', headers={"X-Change-State": "approved"})
    assert holds('headers["X-Change-State"] matches "^appr"', headers={"x-change-state": "approved"})
    assert not holds('headers.x-change-state == "approved"', headers={})


def test_a_ticket_expression_extracts_a_value() -> None:
    assert parse("body.result[0].number").evaluate(status=200, body=SNOW, headers={}) == "CHG0030001"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("", "empty expression"),
        ('status == 200 and', "ends too early"),
        ('body.result[0.approval == "x"', "at column 14: expected ']' to close the '[' at column 12, found '.'"),
        ('status = 200', "unexpected character '='"),
        ('response.status == 200', "unknown name 'response'; an answer has status, body, headers"),
        ('status == 200 200', "at column 15: unexpected '200'"),
        ('(status == 200', "expected ')' to close the '(' at column 1"),
        ('body.x matches body.y', "`matches` takes a string pattern"),
        ('body.x matches "(["', "bad pattern"),
        ('__import__("os")', "unknown name '__import__'"),
        ('body.x == and', "found the keyword 'and'"),
    ],
)
def test_parse_errors_name_the_column_and_what_was_expected(source: str, error: str) -> None:
    with pytest.raises(ExpressionError) as raised:
        parse(source)
    assert error in str(raised.value)
    assert expressions.check(source) == str(raised.value)


def test_check_is_empty_for_a_good_expression() -> None:
    assert expressions.check('body.fields.status.name in ["Done"]') == ""
