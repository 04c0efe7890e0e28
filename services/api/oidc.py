"""SSO: OIDC ID/access tokens (JWTs) as bearer credentials, verified against the issuer's keys.

A JWT is accepted only when every check passes: its `iss` is a configured issuer
(services.api.oidc_config), its header's `alg` is RS256 or ES256 (never `none`, never
HS*: a symmetric algorithm would let anyone holding the issuer's *public* key sign), its
`kid` names a key of the issuer's JWKS of the matching type, the signature verifies, the
`aud` holds the configured audience, and `exp`, `nbf` and `iat` hold by the API's clock
(with the configured leeway). The caller's principal is `sso:<alias>:<sub>`
(services.principals.sso); its role and scope come from its groups claim.

Keys: a JWKS file is read, a JWKS URL fetched, and kept for `jwksCacheSeconds`; a token
naming a `kid` the cache lacks makes one refetch (the issuer rotated keys), and a kid
still unknown after that is refused without fetching again until the cache expires —
so a stream of forged kids cannot make the API hammer the issuer. An issuer that cannot
be reached is an outage (UNAVAILABLE, retry), not a bad credential; once keys were loaded,
a failed refresh keeps them in use and retries after 30 seconds. Fetching is the only
I/O (`prepare`, awaited before a call is authenticated); `verify` is synchronous on the
cache, so long-lived streams re-check their credential cheaply.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
import structlog

from eventstore.errors import Unavailable
from services import principals
from services.api.domain import PermissionDenied
from services.api.errors import Unauthenticated
from services.api.oidc_config import Issuer, OidcConfig
from services.api.scopes import Scope

log = structlog.get_logger("convoy.api.oidc")

ALGORITHMS: Final = ("RS256", "ES256")
_KTY: Final = {"RS256": "RSA", "ES256": "EC"}
MAX_JWT_BYTES: Final = 16 * 1024
MAX_JWKS_BYTES: Final = 1024 * 1024
FETCH_TIMEOUT: Final = 10.0
RETRY_AFTER_FAILURE: Final = 30.0
"""Seconds before the keys are fetched again after a failed refresh (cached keys stay in use)."""


@dataclass(frozen=True, slots=True)
class SsoIdentity:
    principal: str
    role: int
    scope: Scope
    expires_at: float


@dataclass(slots=True)
class _Keys:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None
    refetched_for: set[str] = field(default_factory=set)


def looks_like_jwt(secret: str) -> bool:
    return secret.count(".") == 2 and not secret.startswith("cvy_")


Fetch = Callable[[str], Awaitable[bytes]]


async def _http_get(url: str) -> bytes:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        if response.status != 200:
            raise Unavailable(f"the SSO issuer's keys answered HTTP {response.status}; retry later")
        body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise Unavailable("the SSO issuer's JWKS is larger than 1 MiB; fix the issuer's configuration")
        return body


class SsoVerifier:
    """Verifies JWTs of the issuers in `config`; `clock` is the API's (seconds since the epoch)."""

    def __init__(self, config: OidcConfig, *, clock: Callable[[], float] = time.time, fetch: Fetch | None = None) -> None:
        self.config = config
        self._clock = clock
        self._fetch = fetch or _http_get
        self._keys: dict[str, _Keys] = {i.alias: _Keys() for i in config.issuers}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0
        """JWKS loads so far (files and URLs): what tests observe."""

    def _issuer_of(self, token: str) -> tuple[Issuer, dict[str, Any]]:
        refused = Unauthenticated("invalid SSO token: not a JWT from a configured issuer")
        if len(token) > MAX_JWT_BYTES:
            raise refused
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise refused from None
        iss = claims.get("iss")
        issuer = self.config.by_issuer(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated("invalid SSO token: its issuer (iss) is not configured")
        return issuer, header

    async def prepare(self, token: str) -> None:
        """Load the keys `token` needs: the first time, when the cache expired, or once
        for a kid the cache lacks."""
        try:
            issuer, header = self._issuer_of(token)
        except Unauthenticated:
            return  # verify() refuses it with the same message
        kid = header.get("kid")
        cache = self._keys[issuer.alias]
        now = self._clock()
        stale = cache.fetched_at is None or now - cache.fetched_at >= self.config.jwks_cache_seconds
        unknown = isinstance(kid, str) and kid not in cache.keys and kid not in cache.refetched_for
        if not (stale or unknown):
            return
        lock = self._locks.setdefault(issuer.alias, asyncio.Lock())
        async with lock:
            cache = self._keys[issuer.alias]
            now = self._clock()
            stale = cache.fetched_at is None or now - cache.fetched_at >= self.config.jwks_cache_seconds
            unknown = isinstance(kid, str) and kid not in cache.keys and kid not in cache.refetched_for
            if not (stale or unknown):
                return
            try:
                keys = await self._load(issuer)
            except Unavailable:
                if cache.fetched_at is None:
                    raise
                # The issuer is down: keep verifying with the keys we have, and try again
                # shortly rather than on every call.
                cache.fetched_at = now - self.config.jwks_cache_seconds + min(RETRY_AFTER_FAILURE, self.config.jwks_cache_seconds)
                return
            fresh = _Keys(keys=keys, fetched_at=now)
            if not stale and isinstance(kid, str):
                fresh.refetched_for = {*cache.refetched_for, kid}
            self._keys[issuer.alias] = fresh

    async def _load(self, issuer: Issuer) -> dict[str, dict[str, Any]]:
        self.fetches += 1
        try:
            if issuer.jwks_is_url:
                body = await self._fetch(issuer.jwks)
            else:
                body = await asyncio.to_thread(Path(issuer.jwks).read_bytes)
            document = json.loads(body)
        except Unavailable:
            raise
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("oidc keys unavailable", issuer=issuer.alias, error=type(e).__name__)
            raise Unavailable(f"the keys of SSO issuer {issuer.alias!r} could not be loaded; retry later") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise Unavailable(f"the JWKS of SSO issuer {issuer.alias!r} has no `keys` list; fix the issuer's configuration")
        return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}

    def verify(self, token: str) -> SsoIdentity:
        """The caller a JWT stands for, or Unauthenticated saying which check failed."""
        issuer, header = self._issuer_of(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"invalid SSO token: algorithm {str(alg)[:16]!r} is not accepted (RS256 or ES256)")
        kid = header.get("kid")
        jwk = self._keys[issuer.alias].keys.get(kid) if isinstance(kid, str) else None
        if jwk is None:
            raise Unauthenticated(f"invalid SSO token: its key (kid) is not among issuer {issuer.alias!r}'s keys")
        if jwk.get("kty") != _KTY[alg] or jwk.get("alg", alg) != alg:
            raise Unauthenticated(f"invalid SSO token: key {kid!r} is not an {alg} key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                # Times are checked below by the API's clock.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"invalid SSO token: its audience (aud) is not {issuer.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("invalid SSO token: its issuer (iss) is not configured") from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"invalid SSO token: the {e.claim!r} claim is required") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid SSO token: its signature does not verify") from None
        now = self._clock()
        leeway = self.config.leeway_seconds
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat, nbf)):
            raise Unauthenticated("invalid SSO token: exp, iat and nbf must be numbers")
        if now >= exp + leeway:
            raise Unauthenticated(f"SSO token expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}; sign in again")
        if now + leeway < nbf or now + leeway < iat:
            raise Unauthenticated("SSO token is not valid yet (nbf/iat in the future); check the clocks")
        sub = claims.get("sub")
        principal = principals.sso(issuer.alias, sub) if isinstance(sub, str) else ""
        if not principal or principals.owner_problem(principal) is not None:
            raise Unauthenticated("invalid SSO token: `sub` must be 1-255 printable ASCII characters")
        groups = claims.get(issuer.groups_claim, [])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list):
            groups = []
        grant = issuer.grant_for(g for g in groups if isinstance(g, str))
        if grant is None:
            raise PermissionDenied(
                f"SSO user {principal} is in no group mapped to a Convoy role (claim {issuer.groups_claim!r})"
            )
        role, scope = grant
        return SsoIdentity(principal=principal, role=role, scope=scope, expires_at=float(exp))
