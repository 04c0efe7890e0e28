"""`SnapshotStore` on PostgreSQL: the `snapshots` table (migration 0005) of the
instance's schema, on the event store's pool.

Snapshots live beside the log so that every process of an instance (several API
processes, a standby planner) starts from the same ones and nothing else needs backing
up: losing the table costs one full refold, never data. Each save inserts (or replaces
the row at the same position) and deletes all but the newest `keep` of its (name, kind)
in one transaction.
"""

from __future__ import annotations

import asyncpg

from eventstore.postgres import guarded
from eventstore.snapshots import KEEP, Snapshot

_SAVE = (
    "INSERT INTO snapshots (name, kind, position, format_version, fold_version, taken_at, body) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name, kind, position) DO UPDATE SET "
    "format_version = excluded.format_version, fold_version = excluded.fold_version, "
    "taken_at = excluded.taken_at, body = excluded.body"
)
_PRUNE = (
    "DELETE FROM snapshots WHERE name = $1 AND kind = $2 AND position < ("
    "SELECT min(position) FROM (SELECT position FROM snapshots WHERE name = $1 AND kind = $2 "
    "ORDER BY position DESC LIMIT $3) AS newest)"
)
_LIST = (
    "SELECT name, kind, position, format_version, fold_version, taken_at, body FROM snapshots "
    "WHERE name = $1 AND kind = $2 ORDER BY position DESC"
)


class PostgresSnapshotStore:
    """Snapshots in the schema the pool's search_path names (PostgresEventStore.pool)."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def save(self, snapshot: Snapshot, *, keep: int = KEEP) -> None:
        async def run() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    _SAVE, snapshot.name, snapshot.kind, snapshot.position, snapshot.format_version,
                    snapshot.fold_version, snapshot.taken_at, snapshot.body,
                )
                await conn.execute(_PRUNE, snapshot.name, snapshot.kind, max(1, keep))

        await guarded("saving a snapshot", run)

    async def stored(self, name: str, kind: str) -> list[Snapshot]:
        rows = await guarded("reading snapshots", lambda: self._pool.fetch(_LIST, name, kind))
        return [
            Snapshot(
                name=r["name"], kind=r["kind"], format_version=r["format_version"], fold_version=r["fold_version"],
                position=r["position"], taken_at=r["taken_at"], body=bytes(r["body"]),
            )
            for r in rows
        ]
