"""The isolation table as a whole: enough rows, every deny paired with an allow."""

from __future__ import annotations

import importlib
import pkgutil

import tests.isolation as package
from tests.isolation.table import MIN_ROWS, Row, pairing_problems


def all_rows() -> list[Row]:
    rows: list[Row] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("test_") and info.name != "test_table":
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            rows.extend(getattr(module, "ROWS", []))
    return rows


def test_every_deny_is_paired_with_an_allow_on_the_same_probe() -> None:
    assert pairing_problems(all_rows()) == []


def test_the_table_has_enough_rows() -> None:
    rows = all_rows()
    assert len(rows) >= MIN_ROWS, f"only {len(rows)} rows"
    assert any(r.allowed for r in rows) and any(not r.allowed for r in rows)


def test_pairing_problems_finds_an_unpaired_deny() -> None:
    allow = Row("x.allow", "a", "r", "read", True, probe="p")
    assert pairing_problems([allow, Row("x.deny", "b", "r", "read", False, pair="x.allow", probe="p")]) == []
    assert pairing_problems([Row("x.deny", "b", "r", "read", False, pair="missing", probe="p")])
    assert pairing_problems([allow, Row("x.deny", "b", "r", "read", False, pair="x.allow", probe="q")])
