"""Idempotency keys: a retried mutating request gets the first answer, not a second command.

Clients that lose an answer (a timeout, a dropped connection) resend with the same
`Idempotency-Key`; the API looks the key up per calling token and, when the request is
the same (same method, same request bytes), replays the recorded answer. The same key
with a different request is a client bug and is refused with a clear message.

The answer is recorded as a `Receipt` by the event store, in the transaction that
records the command's events (the `api_idempotency` table, migration 0003), so every
API process shares it and a crash can never keep the events without the answer or the
reverse. The store refuses a second receipt for a key (`ReceiptTaken`), which settles a
race between two processes: the loser's events are not written and it answers the
winner's answer. A receipt's response holds no position (the store knows it only while
committing); the receipt's `position` is put back into the answer on replay (`replay`).
Secrets are never stored: a replayed CreateToken or IssueAgentCredential answer says
the secret was shown once (the first answer) and names what was created, so the caller
can revoke or rotate it.

Receipts expire: `ReceiptPurge` deletes those older than the TTL (CONVOY_IDEMPOTENCY_TTL,
24 h by default) in bounded batches, every few minutes, in each API process. So a client
must retry within the TTL; a retry after it may find no receipt and is then a new command
(the command's own checks still apply: re-creating what exists is refused or unchanged).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import structlog

from google.protobuf.message import Message

from eventstore.errors import ConvoyError
from eventstore.tasks import describe, stop_task
from eventstore.types import Receipt
from schemas.convoy.v1 import api_pb2
from services.api.domain import FailedPrecondition
from services.api import redaction
from services.api.errors import IdempotencyMismatch, invalid

log = structlog.get_logger("convoy.api.idempotency")

MAX_KEY_LENGTH: Final = 200
SECRET_FIELD: Final = "secret"
DEFAULT_TTL: Final = 24 * 3600.0
"""Seconds a receipt is kept (eventstore.settings.IDEMPOTENCY_TTL is the same default)."""
PURGE_INTERVAL: Final = 300.0
PURGE_BATCH: Final = 1000


def check_key(key: str) -> str:
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise invalid("idempotency-key", f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
    return key


def request_hash(method: str, request: Message) -> bytes:
    """Same method and same request content (map order does not matter) = same hash.
    Secret-marked fields (SetSecret's value) are left out: the receipt is stored, and a
    hash of a guessable secret is one offline guess away from it. So a retry under the
    same key with another value replays the first answer instead of being refused."""
    digest = hashlib.sha256(method.encode())
    digest.update(b"\0")
    digest.update(redaction.redact(request).SerializeToString(deterministic=True))
    return digest.digest()


def matching(receipt: Receipt, method: str, request_sha256: bytes, key: str) -> Receipt:
    """`receipt` when it answers this request; `IdempotencyMismatch` when the key was
    used for something else."""
    if receipt.method != method or receipt.request_sha256 != request_sha256:
        what = f"{receipt.method}" if receipt.method != method else f"a different {method} request"
        raise IdempotencyMismatch(
            f"idempotency key {key!r} was already used for {what}; use a new key for a new request "
            "(a retry must repeat the first request exactly)"
        )
    return receipt


def recorded(response: Message) -> bytes:
    """The bytes a receipt keeps of an answer: no secret (and, decided before the
    commit, no position yet)."""
    if SECRET_FIELD not in response.DESCRIPTOR.fields_by_name:
        return response.SerializeToString()
    copy = type(response)()
    copy.CopyFrom(response)
    copy.ClearField(SECRET_FIELD)
    return copy.SerializeToString()


def with_position(response: Message, position: int) -> Message:
    """Put the write's position into an answer that reports one (in place)."""
    if isinstance(response, api_pb2.WriteResult):
        response.position = position
    elif isinstance(response, api_pb2.DeployResponse | api_pb2.ApplyDeclarationsResponse) and response.HasField("write"):
        response.write.position = position
    return response


def replay(output: type[Message], name: str, receipt: Receipt, key: str) -> Message:
    """The first answer again; refused (FailedPrecondition) when it carried a secret."""
    response = output()
    response.ParseFromString(receipt.response)
    if SECRET_FIELD in response.DESCRIPTOR.fields_by_name:
        made = getattr(response, "token_id", "") or getattr(response, "credential_id", "")
        raise FailedPrecondition(
            f"idempotency key {key!r} already answered this {name} (it created {made!r}); the secret "
            "is shown only once, in that first answer, and Convoy does not keep it. If it was lost, "
            "revoke or rotate what was created and send a new request with a new key"
        )
    return with_position(response, receipt.position)


class ReceiptPurger(Protocol):
    """The store side of the purge (eventstore.postgres.PostgresEventStore)."""

    async def purge_receipts(self, *, before: datetime, limit: int) -> int: ...


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class PurgeStats:
    purged: int = 0
    """Receipts deleted since start."""
    rounds: int = 0
    failures: int = 0


class ReceiptPurge:
    """Deletes receipts older than `ttl` seconds, `batch` at a time, every `interval`
    seconds: a named, supervised task (a failed round is logged and retried next time).
    `clock` tells the time (injected in tests). `async with ReceiptPurge(...)`."""

    def __init__(
        self,
        *,
        store: ReceiptPurger,
        ttl: float = DEFAULT_TTL,
        interval: float = PURGE_INTERVAL,
        batch: int = PURGE_BATCH,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if ttl <= 0 or interval <= 0 or batch <= 0:
            raise ValueError("ttl, interval and batch must be positive")
        self._store = store
        self.ttl = ttl
        self._interval = interval
        self._batch = batch
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.stats = PurgeStats()

    async def purge(self) -> int:
        """One round: delete every receipt older than the TTL, in batches; how many went."""
        before = self._clock() - timedelta(seconds=self.ttl)
        total = 0
        while True:
            deleted = await self._store.purge_receipts(before=before, limit=self._batch)
            total += deleted
            if deleted < self._batch:
                break
        self.stats.purged += total
        self.stats.rounds += 1
        if total:
            log.info("expired idempotency receipts purged", count=total, older_than=before.isoformat())
        return total

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
            except ConvoyError as error:
                self.stats.failures += 1
                log.warning("idempotency receipt purge failed; trying again later", error=str(error))
            except Exception as error:  # noqa: BLE001 - supervised: the next round tries again
                self.stats.failures += 1
                log.error("idempotency receipt purge failed", error=describe(error))
            await asyncio.sleep(self._interval)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="convoy-api:receipt-purge")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def __aenter__(self) -> ReceiptPurge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
