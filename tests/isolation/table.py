"""The isolation table: (principal, resource, action) → allowed or denied, row by row.

Two Convoy instances, `a` and `b`, share one nats-server and one PostgreSQL (DESIGN.md:
isolated by NATS account, database schema and role, and token keys). Each row names who
tries what on which resource and whether the servers must let it happen.

A deny proves nothing on its own: a dead server, a typo'd subject or a wrong port also
"refuses". So every deny row names its `pair`, an allow row that runs the *same probe*
(the same code path: same client kind, same call, same kind of resource) with only the
principal or the resource changed — and a probe recognises a denial only by the specific
refusal the server gives for missing permission (a PostgreSQL `InsufficientPrivilege`,
a NATS permissions violation, gRPC `UNAUTHENTICATED`, HTTP 401 …). Anything else it
meets is an error that fails the row, never a pass.

Each test module of this package lists its rows in `ROWS` and checks them with
`check(row, allowed)`; test_table.py checks the pairing over all modules and that there
are enough rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MIN_ROWS = 20


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    """Unique across the package, e.g. "pg.b-reads-a-events"."""
    principal: str
    """Who acts, e.g. "instance b's service role"."""
    resource: str
    """What it acts on, e.g. "schema a, table events"."""
    action: str
    """What it tries, e.g. "SELECT"."""
    allowed: bool
    pair: str = ""
    """For a deny row: the id of the allow row that runs the same probe."""
    probe: str = ""
    """The name of the probe both rows of a pair run (checked to be equal)."""

    def __str__(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        return f"{self.principal} → {self.action} on {self.resource}: {verdict}"


def check(row: Row, allowed: bool) -> None:
    """Assert one row's outcome (`allowed`: what the probe observed)."""
    assert allowed == row.allowed, f"expected {row}, but it was {'allowed' if allowed else 'denied'}"


def pairing_problems(rows: Iterable[Row]) -> list[str]:
    """Why these rows do not form a table where every deny has an allow on its code path."""
    rows = list(rows)
    by_id: dict[str, Row] = {}
    problems: list[str] = []
    for row in rows:
        if row.id in by_id:
            problems.append(f"{row.id}: listed twice")
        by_id[row.id] = row
        if not row.probe:
            problems.append(f"{row.id}: names no probe")
    for row in rows:
        if row.allowed:
            continue
        partner = by_id.get(row.pair)
        if partner is None:
            problems.append(f"{row.id}: a deny whose pair {row.pair!r} is not a row")
        elif not partner.allowed:
            problems.append(f"{row.id}: paired with {partner.id}, which is a deny too")
        elif partner.probe != row.probe:
            problems.append(f"{row.id}: runs probe {row.probe!r} but its allow {partner.id} runs {partner.probe!r}")
    return problems
