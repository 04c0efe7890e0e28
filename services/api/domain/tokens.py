"""CreateToken and RevokeToken: API credentials with a role.

The shell mints the token id and secret; the secret is answered once and only its
SHA-256 is recorded, so the log (and every copy of it on the bus) never holds a usable
credential. Roles are the API's `Role` enum (viewer < deployer < approver < admin),
recorded by name. Revoking is idempotent: revoking a revoked token records nothing.

A token's name is who it is for — the principal its events record, deployers and
approvers included — so names are normalised and restricted (services.principals: NFKC,
case-folded, trimmed, ASCII letters, digits, `.`, `-`, `_`, `@`) and unique among live
tokens as principals compare them: `bob `, `Bob` or `bоb` (Cyrillic о) cannot be a second
`bob` next to the first. A token may name another `owner` (a name, or an SSO principal
`sso:<alias>:<sub>`): the principal it acts as, so one person can hold several tokens
and still be one approver.

Optional expiry and scope are recorded as asked; the shell checks an expiry is in the
future by its clock (`decide` has none) and enforces both (services.api.auth,
services.api.scopes). With an instance token key the shell passes the secret's HMAC in
`Minted.token_hmac` and only that is recorded (no SHA-256 another instance could check).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Final

from schemas.convoy.v1 import api_pb2, events_pb2, options_pb2, resources_pb2
import services.principals as principals
from services.api.domain import streams
from services.api.domain.commands import MIN_SECRET_LENGTH, Command, Decision, sha256_hex
from services.api.domain.errors import AlreadyExists, BadCommandContext, NotFound, Problems
from services.api.domain.state import State, TokenRecord
from services.api.domain.validation import MAX_REASON, check_enum, check_name, check_text, q

ROLE_NAMES: Final = {
    options_pb2.ROLE_VIEWER: "viewer",
    options_pb2.ROLE_DEPLOYER: "deployer",
    options_pb2.ROLE_APPROVER: "approver",
    options_pb2.ROLE_ADMIN: "admin",
}
ROLES_BY_NAME: Final = {name: role for role, name in ROLE_NAMES.items()}
_ROLE_ENUM_NAMES: Final[Mapping[int, str]] = {role: options_pb2.Role.Name(role) for role in ROLE_NAMES}
_TOKEN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:@-]{0,199}")
_HMAC_HEX: Final = re.compile(r"[0-9a-f]{64}")
MAX_SCOPE_ITEMS: Final = 100


def role_of(token: TokenRecord) -> int:
    """The token's role as the `Role` enum (ROLE_UNSPECIFIED for an unknown name)."""
    return ROLES_BY_NAME.get(token.role, options_pb2.ROLE_UNSPECIFIED)


def live_token_named(state: State, name: str) -> TokenRecord | None:
    """The live token whose name is the same principal as `name`, if any."""
    wanted = principals.key(name)
    return next((t for t in state.tokens.values() if not t.revoked and principals.key(t.name) == wanted), None)


def token_for_secret(state: State, secret: str) -> TokenRecord | None:
    """The live (not revoked) token whose secret this is, compared in constant time."""
    digest = sha256_hex(secret)
    found = None
    for token in state.tokens.values():
        if token.secret_sha256 and hmac.compare_digest(token.secret_sha256, digest) and not token.revoked:
            found = token
    return found


def create_token(state: State, request: api_pb2.CreateTokenRequest, command: Command) -> Decision:
    problems = Problems()
    name = principals.normalise(request.name)
    wrong = principals.problem(request.name)
    if wrong is not None:
        problems.add("name", wrong)
    check_enum(problems, "role", request.role, _ROLE_ENUM_NAMES, required=True, what="role")
    owner = principals.normalise(request.owner) if request.owner.strip() else name
    if request.owner.strip():
        wrong_owner = principals.owner_problem(request.owner)
        if wrong_owner is not None:
            problems.add("owner", wrong_owner)
    if request.HasField("expires_at") and request.expires_at.seconds <= 0:
        problems.add("expires_at", "must be a moment after 1970 (leave it unset for a token that never expires)")
    for what, names in (("applications", request.scope.applications), ("channels", request.scope.channels)):
        if len(names) > MAX_SCOPE_ITEMS:
            problems.add(f"scope.{what}", f"at most {MAX_SCOPE_ITEMS} names")
            continue
        for i, item in enumerate(names):
            check_name(problems, f"scope.{what}[{i}]", item, what=what[:-1])
    problems.raise_if_any()
    taken = live_token_named(state, name)
    if taken is not None:
        raise AlreadyExists(
            f"name: a live token is already named {q(taken.name)} (id {taken.token_id}; names compare without case, "
            "accents or look-alike letters); revoke that one first, or choose another name"
        )
    minted = command.minted
    if (
        _TOKEN_ID.fullmatch(minted.token_id) is None
        or minted.token_id in state.tokens
        or len(minted.token_secret) < MIN_SECRET_LENGTH
        or (minted.token_hmac and _HMAC_HEX.fullmatch(minted.token_hmac) is None)
    ):
        raise BadCommandContext(
            "CreateToken needs a fresh Minted.token_id (letters, digits, '.', ':', '@', '-') and a "
            f"Minted.token_secret of at least {MIN_SECRET_LENGTH} characters (use Minted.fresh())"
        )
    scope = resources_pb2.TokenScope(
        applications=list(dict.fromkeys(request.scope.applications)),
        channels=list(dict.fromkeys(request.scope.channels)),
    )
    event = events_pb2.TokenCreated(
        token_id=minted.token_id,
        name=name,
        role=ROLE_NAMES[request.role],
        secret_sha256="" if minted.token_hmac else sha256_hex(minted.token_secret),
        secret_hmac=minted.token_hmac,
        owner=owner,
    )
    response = api_pb2.CreatedToken(
        token_id=minted.token_id, name=name, role=request.role, secret=minted.token_secret, owner=owner
    )
    if scope.applications or scope.channels:
        event.scope.CopyFrom(scope)
        response.scope.CopyFrom(scope)
    if request.HasField("expires_at"):
        event.expires_at.CopyFrom(request.expires_at)
        response.expires_at.CopyFrom(request.expires_at)
    return Decision.of(streams.token(minted.token_id), event, response)


def revoke_token(state: State, request: api_pb2.RevokeTokenRequest, command: Command) -> Decision:
    problems = Problems()
    if not request.token_id:
        problems.add("token_id", "required: the id of the token to revoke")
    check_text(problems, "reason", request.reason, limit=MAX_REASON)
    problems.raise_if_any()
    token = state.tokens.get(request.token_id)
    if token is None:
        raise NotFound(f"token {q(request.token_id)} does not exist")
    if token.revoked:
        return Decision.unchanged()
    event = events_pb2.TokenRevoked(token_id=request.token_id, reason=request.reason)
    return Decision.of(streams.token(request.token_id), event)
