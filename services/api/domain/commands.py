"""What goes into `decide` and what comes out.

A command is an API request message (from api.proto) plus the context the request
cannot carry: who sends it, with which role, and the values the shell minted for it.
Anything random — release ids, token ids and secrets, agent credential ids and secrets —
is minted by the shell (`Minted.fresh()`) and passed in, so `decide` stays a pure,
deterministic function that tests can call with fixed values.

A `Decision` is the list of (stream id, event) to append, in order, plus an optional
response payload: the created Release, the minted token or agent credential. Secrets
appear only in that response; events carry their SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar

from google.protobuf.message import Message

from schemas.convoy.v1 import options_pb2

M = TypeVar("M", bound=Message)

MIN_SECRET_LENGTH: Final = 16
"""Minted secrets shorter than this are refused (BadCommandContext)."""


def sha256_hex(secret: str) -> str:
    """What events record instead of a secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A secret value as the keyring encrypted it (AES-256-GCM, the name as associated data)."""

    name: str
    key_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Minted:
    """Fresh ids and secrets for the commands that create something.

    Only the fields a command needs are read: Deploy reads `release_id`; CreateToken
    reads `token_id` and `token_secret`; IssueAgentCredential reads `credential_id`,
    `credential_secret` and `credential_bcrypt`. A token id becomes a stream id part (`token/<id>`): letters,
    digits, '.', ':', '@', '-' — no '_'. Secrets must be at least 16 characters."""

    release_id: str = ""
    token_id: str = ""
    token_secret: str = ""
    token_hmac: str = ""
    """CreateToken with an instance token key: HMAC-SHA256(key, token_secret), hex. Empty:
    the token records the secret's SHA-256 (no key configured)."""
    credential_id: str = ""
    credential_secret: str = ""
    credential_bcrypt: str = ""
    """bcrypt of `credential_secret` (the agent's NATS password hash): slow to compute, so
    the shell fills it only for IssueAgentCredential (`auth.mint(agent_credential=True)`)."""
    sealed: tuple[SealedSecret, ...] = ()
    """SetSecret: the value encrypted by the keyring; RotateSecretKey: every secret
    re-encrypted under `secret_key_id`. The shell seals; `decide` never sees a key."""
    secret_key_id: str = ""
    previous_key_id: str = ""
    retired_key_ids: tuple[str, ...] = ()

    @classmethod
    def fresh(cls) -> Minted:
        """Random values for every field. Called by the shell, never by `decide`."""
        return cls(
            release_id=str(uuid.uuid4()),
            token_id=f"tok-{uuid.uuid4().hex}",
            token_secret=f"cvy_{secrets.token_urlsafe(32)}",
            credential_id=f"cred-{uuid.uuid4().hex}",
            credential_secret=secrets.token_urlsafe(32),
        )


@dataclass(frozen=True, slots=True)
class Command:
    """An API request with its context.

    `actor` is who asks (recorded on the events by the caller, and the approver of an
    approval); `role` is the caller's `options_pb2.Role` — the API checks each method's
    least role before calling `decide`, the domain only consults it for rules that need
    it. `method` is the RPC method name ("Deploy" or a full "/convoy.v1.ReleaseService/Deploy"),
    for messages and logs; every RPC has its own request type, so routing never needs it."""

    request: Message
    actor: str
    role: int = options_pb2.ROLE_UNSPECIFIED
    minted: Minted = field(default_factory=Minted)
    method: str = ""
    images: Mapping[str, str] = field(default_factory=dict)
    """Deploy: the digest each registry image resolved to, by image as asked for
    (`host/repository:tag`), looked up by the shell just before deciding
    (services.api.images). `decide` never asks a registry."""


class StreamEvent(NamedTuple):
    """One event to append and the stream it belongs to."""

    stream_id: str
    event: Message


@dataclass(frozen=True, slots=True)
class Decision:
    """What a command decided: events to append (empty = nothing changed) and the
    payload of the answer, if the method returns more than a `WriteResult`."""

    events: tuple[StreamEvent, ...] = ()
    response: Message | None = None

    @property
    def changed(self) -> bool:
        return bool(self.events)

    @classmethod
    def unchanged(cls, response: Message | None = None) -> Decision:
        return cls((), response)

    @classmethod
    def of(cls, stream_id: str, event: Message, response: Message | None = None) -> Decision:
        return cls((StreamEvent(stream_id, event),), response)


def clean(message: M) -> M:
    """A copy without unknown fields: what a request contributes to events and state.
    Unknown fields (sent by a newer client) would otherwise leak into the record and
    make equal declarations compare unequal."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.DiscardUnknownFields()
    return copy
