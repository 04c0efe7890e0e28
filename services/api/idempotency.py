"""Idempotency keys: a retried mutating request gets the first answer, not a second command.

Clients that lose an answer (a timeout, a dropped connection) resend with the same
`Idempotency-Key`; the API looks the key up per calling token and, when the request is
the same (same method, same request bytes), replays the recorded answer. The same key
with a different request is a client bug and is refused with a clear message.

Records live in the `api_idempotency` table (migration 0003) so every API process
shares them. They are written after the events commit, outside that transaction (the
store's `commit` owns its transaction): if the process dies in between, a retry decides
again against the new state — declarative commands then answer "unchanged", a Deploy
of the same version answers AlreadyExists. Secrets are never stored: a replayed
CreateToken or IssueAgentCredential answer says the secret was shown once (the first
answer) and names what was created, so the caller can revoke or rotate it.
Records are kept indefinitely for now; pruning by `created_at` is a follow-up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Protocol

from google.protobuf.message import Message

from eventstore.postgres import guarded
from services.api.errors import IdempotencyMismatch, invalid

MAX_KEY_LENGTH: Final = 200


@dataclass(frozen=True, slots=True)
class Record:
    method: str
    request_sha256: bytes
    response: bytes
    position: int


class IdempotencyStore(Protocol):
    async def get(self, token_id: str, key: str) -> Record | None: ...

    async def put(self, token_id: str, key: str, record: Record) -> Record:
        """Store `record` unless the key is taken; return what is stored now."""
        ...


def check_key(key: str) -> str:
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise invalid("idempotency-key", f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
    return key


def request_hash(method: str, request: Message) -> bytes:
    """Same method and same request content (map order does not matter) = same hash."""
    digest = hashlib.sha256(method.encode())
    digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.digest()


def matching(record: Record, method: str, request_sha256: bytes, key: str) -> Record:
    """`record` when it answers this request; `IdempotencyMismatch` when the key was used
    for something else."""
    if record.method != method or record.request_sha256 != request_sha256:
        what = f"{record.method}" if record.method != method else f"a different {method} request"
        raise IdempotencyMismatch(
            f"idempotency key {key!r} was already used for {what}; use a new key for a new request "
            "(a retry must repeat the first request exactly)"
        )
    return record


class PostgresIdempotency:
    """Records in the store's schema (the pool's search_path points there)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def get(self, token_id: str, key: str) -> Record | None:
        row = await guarded(
            "idempotency lookup",
            lambda: self._pool.fetchrow(
                "SELECT method, request_sha256, response, position FROM api_idempotency "
                "WHERE token_id = $1 AND key = $2",
                token_id,
                key,
            ),
        )
        return None if row is None else Record(row[0], bytes(row[1]), bytes(row[2]), row[3])

    async def put(self, token_id: str, key: str, record: Record) -> Record:
        await guarded(
            "idempotency record",
            lambda: self._pool.execute(
                "INSERT INTO api_idempotency (token_id, key, method, request_sha256, response, position) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token_id, key) DO NOTHING",
                token_id,
                key,
                record.method,
                record.request_sha256,
                record.response,
                record.position,
            ),
        )
        stored = await self.get(token_id, key)
        return stored if stored is not None else record


class MemoryIdempotency:
    """For stores without PostgreSQL (the in-memory store in unit tests): one process only."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], Record] = {}

    async def get(self, token_id: str, key: str) -> Record | None:
        return self._records.get((token_id, key))

    async def put(self, token_id: str, key: str, record: Record) -> Record:
        return self._records.setdefault((token_id, key), record)
