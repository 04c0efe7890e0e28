"""Bearer tokens: who is calling, and may they call this method.

A token secret reads `cvy_<token_id>_<random>`. The id lets the API find the token in
the catalog (`State.tokens`, folded from TokenCreated/TokenRevoked) without scanning;
the catalog holds only a digest of the secret, compared in constant time, so neither the
log nor the bus ever carries a usable credential. With an instance token key (ApiServer's
`token_key`) the digest is HMAC-SHA256(key, secret): a catalog copied to another instance,
with another key, verifies nothing there; tokens recorded before (SHA-256 only) keep
working. Roles are ordered viewer < deployer < approver < admin and each method names the
least one it needs.

A token past its `expires_at` (by the API's clock) is refused, saying when it expired. A
bearer value that is a JWT is an SSO token (services.api.oidc) when SSO is configured.
Either way the caller becomes a `Principal`: the principal its events record (a token's
owner, or `sso:<alias>:<sub>`), its role and its scope (services.api.scopes).

On first start no token exists, so nobody could create one: `write_admin_secret` is how
the server hands the bootstrap admin token (created by the actor "bootstrap") to the
operator — a file readable only by its owner, never a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime
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
from services.api.oidc import SsoVerifier, looks_like_jwt
from services.api.scopes import UNSCOPED, Scope

PREFIX: Final = "cvy_"
MAX_SECRET_LENGTH: Final = 512
ADMIN_TOKEN_FILE: Final = "admin-token"
BOOTSTRAP_ACTOR: Final = "bootstrap"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `name` is the principal (a token's owner, normalised:
    services.principals, or an SSO subject `sso:<alias>:<sub>`), recorded as the actor of
    its events and compared by approvals. `token_id` names the credential (for an SSO
    caller, the principal itself) in logs and idempotency receipts."""

    token_id: str
    name: str
    role: int
    scope: Scope = field(default=UNSCOPED)

    def describe(self) -> str:
        return f"token {self.token_id!r}" if not principals.is_sso(self.token_id) else f"SSO user {self.name}"


def token_digest(token_key: bytes, secret: str) -> str:
    """HMAC-SHA256 of a token secret under the instance's token key, hex."""
    return hmac.new(token_key, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def mint(*, agent_credential: bool = False, token_key: bytes | None = None) -> Minted:
    """Fresh ids and secrets, with the token secret in the `cvy_<id>_<random>` form the
    API can look up (the domain's own `Minted.fresh()` does not embed the id). With
    `agent_credential`, also the bcrypt of the credential secret (its NATS password);
    with `token_key`, the keyed digest of the token secret."""
    fresh = Minted.fresh()
    token_secret = f"{PREFIX}{fresh.token_id}_{secrets.token_urlsafe(32)}"
    return Minted(
        release_id=fresh.release_id,
        token_id=fresh.token_id,
        token_secret=token_secret,
        token_hmac=token_digest(token_key, token_secret) if token_key else "",
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


def authenticate(
    state: State,
    authorization: str | None,
    *,
    now: datetime,
    token_key: bytes | None = None,
    sso: SsoVerifier | None = None,
) -> Principal:
    """The live token (or, with `sso`, the SSO caller) whose credential was sent, or
    `Unauthenticated` (one message for every kind of wrong secret, so probing learns
    nothing about which tokens exist; an expired token, whose secret was right, is told so)."""
    secret = bearer_secret(authorization)
    refused = Unauthenticated("invalid or revoked token")
    if sso is not None and looks_like_jwt(secret):
        identity = sso.verify(secret)
        return Principal(token_id=identity.principal, name=identity.principal, role=identity.role, scope=identity.scope)
    if len(secret) > MAX_SECRET_LENGTH or not secret.startswith(PREFIX):
        raise refused
    token_id, sep, rest = secret[len(PREFIX) :].partition("_")
    if not sep or not token_id or not rest:
        raise refused
    token = state.tokens.get(token_id)
    if token is not None and token.secret_hmac:
        # Keyed tokens verify only with this instance's key; without one, nothing matches.
        digest = token_digest(token_key, secret) if token_key else ""
        expected = token.secret_hmac if token_key else "!"
    else:
        digest = sha256_hex(secret)
        expected = token.secret_sha256 if token is not None and token.secret_sha256 else "!" * len(digest)
    if not hmac.compare_digest(expected, digest) or token is None or token.revoked:
        raise refused
    if token.expires_at is not None and now >= token.expires_at:
        raise Unauthenticated(
            f"token {token.token_id!r} expired at {token.expires_at.isoformat().replace('+00:00', 'Z')}; "
            "ask an admin for a new one"
        )
    # Tokens named before names were normalised act under their normal form.
    return Principal(
        token_id=token.token_id,
        name=principals.normalise(token.principal),
        role=role_of(token),
        scope=Scope.of(token.scope_applications, token.scope_channels),
    )


def authorize(principal: Principal, min_role: int, method: str) -> None:
    if principal.role < min_role:
        raise PermissionDenied(
            f"{method} needs the {ROLE_LABELS.get(min_role, 'admin')} role; {principal.describe()} "
            f"is {ROLE_LABELS.get(principal.role, 'without a role')}"
        )


def has_live_admin(state: State) -> bool:
    return any(role_of(t) == options_pb2.ROLE_ADMIN and not t.revoked for t in state.tokens.values())


def write_admin_secret(state_dir: Path, secret: str) -> Path:
    """Write the bootstrap secret to `<state_dir>/admin-token`, mode 0600 from the start
    (no window where another user could read it)."""
    return securefile.write_private(state_dir / ADMIN_TOKEN_FILE, secret + "\n")
