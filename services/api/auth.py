"""Bearer tokens: who is calling, and may they call this method.

A token secret reads `cvy_<token_id>_<random>`. The id lets the API find the token in
the catalog (`State.tokens`, folded from TokenCreated/TokenRevoked) without scanning;
the catalog holds only the secret's SHA-256, compared in constant time, so neither the
log nor the bus ever carries a usable credential. Roles are ordered viewer < deployer <
approver < admin and each method names the least one it needs.

On first start no token exists, so nobody could create one: `write_admin_secret` is how
the server hands the bootstrap admin token (created by the actor "bootstrap") to the
operator — a file readable only by its owner, never a log line.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import bcrypt

from eventstore import securefile
from schemas.convoy.v1 import options_pb2
from services import principals
from services.api.domain import Minted, PermissionDenied, State
from services.api.domain.commands import sha256_hex
from services.api.domain.tokens import role_of
from services.api.errors import Unauthenticated
from services.api.methods import ROLE_LABELS

PREFIX: Final = "cvy_"
MAX_SECRET_LENGTH: Final = 512
ADMIN_TOKEN_FILE: Final = "admin-token"
BOOTSTRAP_ACTOR: Final = "bootstrap"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `name` (its token's name, normalised: services.principals)
    is recorded as the actor of its events."""

    token_id: str
    name: str
    role: int


def mint(*, agent_credential: bool = False) -> Minted:
    """Fresh ids and secrets, with the token secret in the `cvy_<id>_<random>` form the
    API can look up (the domain's own `Minted.fresh()` does not embed the id). With
    `agent_credential`, also the bcrypt of the credential secret (its NATS password)."""
    fresh = Minted.fresh()
    return Minted(
        release_id=fresh.release_id,
        token_id=fresh.token_id,
        token_secret=f"{PREFIX}{fresh.token_id}_{secrets.token_urlsafe(32)}",
        credential_id=fresh.credential_id,
        credential_secret=fresh.credential_secret,
        credential_bcrypt=nats_password_bcrypt(fresh.credential_secret) if agent_credential else "",
    )


AGENT_BCRYPT_ROUNDS: Final = 8
"""Work factor of an agent's NATS password hash. The secret is 256 random bits, so the
cost protects nothing a brute force could reach; it is kept low because nats-server
checks the hash on every (re)connection of every agent."""


def nats_password_bcrypt(secret: str) -> str:
    return bcrypt.hashpw(secret.encode("utf-8"), bcrypt.gensalt(AGENT_BCRYPT_ROUNDS)).decode("ascii")


def bearer_secret(authorization: str | None) -> str:
    """The secret in an `authorization` header/metadata value."""
    if not authorization:
        raise Unauthenticated("missing credentials: send `authorization: Bearer <token secret>`")
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("malformed authorization: expected `Bearer <token secret>`")
    return secret.strip()


def authenticate(state: State, authorization: str | None) -> Principal:
    """The live token whose secret was sent, or `Unauthenticated` (one message for
    every kind of wrong secret, so probing learns nothing about which tokens exist)."""
    secret = bearer_secret(authorization)
    refused = Unauthenticated("invalid or revoked token")
    if len(secret) > MAX_SECRET_LENGTH or not secret.startswith(PREFIX):
        raise refused
    token_id, sep, rest = secret[len(PREFIX) :].partition("_")
    if not sep or not token_id or not rest:
        raise refused
    token = state.tokens.get(token_id)
    digest = sha256_hex(secret)
    expected = token.secret_sha256 if token is not None else "0" * len(digest)
    if not hmac.compare_digest(expected, digest) or token is None or token.revoked:
        raise refused
    # Tokens named before names were normalised act under their normal form.
    return Principal(token_id=token.token_id, name=principals.normalise(token.name), role=role_of(token))


def authorize(principal: Principal, min_role: int, method: str) -> None:
    if principal.role < min_role:
        raise PermissionDenied(
            f"{method} needs the {ROLE_LABELS.get(min_role, 'admin')} role; token {principal.token_id!r} "
            f"is {ROLE_LABELS.get(principal.role, 'without a role')}"
        )


def has_live_admin(state: State) -> bool:
    return any(role_of(t) == options_pb2.ROLE_ADMIN and not t.revoked for t in state.tokens.values())


def write_admin_secret(state_dir: Path, secret: str) -> Path:
    """Write the bootstrap secret to `<state_dir>/admin-token`, mode 0600 from the start
    (no window where another user could read it)."""
    return securefile.write_private(state_dir / ADMIN_TOKEN_FILE, secret + "\n")
