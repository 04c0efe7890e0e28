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
can revoke or rotate it. Receipts are kept indefinitely for now; pruning by
`created_at` is a follow-up.
"""

from __future__ import annotations

import hashlib
from typing import Final

from google.protobuf.message import Message

from eventstore.types import Receipt
from schemas.convoy.v1 import api_pb2
from services.api.domain import FailedPrecondition
from services.api import redaction
from services.api.errors import IdempotencyMismatch, invalid

MAX_KEY_LENGTH: Final = 200
SECRET_FIELD: Final = "secret"


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
