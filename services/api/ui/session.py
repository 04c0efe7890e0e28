"""Browser sessions: an API token in an HttpOnly cookie, and the CSRF token derived from it.

The session cookie holds the token secret (or the SSO token) itself (HttpOnly, SameSite=Strict, Path=/), so
every page authenticates exactly as an API call does and a revoked token ends the session
at the next request — no second credential store, and any API replica can serve any
session. The CSRF token every form carries is an HMAC of a fixed label keyed by that
secret: a page of another origin can neither read the cookie nor compute the token, and a
replica verifies it with nothing but the cookie. Sign-in itself is protected by a
double-submit nonce (a short-lived cookie and the same value in the form), so another
site cannot sign a browser in under the attacker's token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

SESSION_COOKIE: Final = "convoy_session"
LOGIN_COOKIE: Final = "convoy_login"
CSRF_FIELD: Final = "csrf"
_LABEL: Final = b"convoy-ui-csrf-v1"
MAX_COOKIE_SECRET: Final = 3800
"""Browsers drop cookies over 4 KiB silently; an SSO token (a JWT) larger than this is
refused at sign-in with a message instead."""


def csrf_token(secret: str) -> str:
    """The CSRF token of the session whose token secret is `secret`."""
    return hmac.new(secret.encode("utf-8"), _LABEL, hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, sent: str | None) -> bool:
    """Whether a form's CSRF token belongs to this session (constant time)."""
    if not secret or not sent:
        return False
    return hmac.compare_digest(csrf_token(secret), sent)


def login_nonce() -> str:
    return secrets.token_urlsafe(24)


def nonce_ok(cookie: str | None, sent: str | None) -> bool:
    if not cookie or not sent:
        return False
    return hmac.compare_digest(cookie, sent)


def cookie_attributes(*, secure: bool, max_age: int | None = None) -> dict[str, object]:
    """aiohttp `set_cookie` keyword arguments for a session cookie."""
    attrs: dict[str, object] = {"httponly": True, "samesite": "Strict", "path": "/", "secure": secure}
    if max_age is not None:
        attrs["max_age"] = max_age
    return attrs
