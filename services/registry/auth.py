"""Registry authentication, the pure parts: reading `WWW-Authenticate` challenges and token
answers, and a per-scope token cache that expires by a clock value it is given.

Registries follow distribution's token protocol (`docs/spec/auth/token.md`): an anonymous
request gets `401` with `Bearer realm="…",service="…",scope="…"`; the client asks the realm
for a token (Basic credentials when it has them) and retries. Some (distribution's htpasswd
mode) answer `Basic realm="…"` instead. Quoted values carry commas (`scope="repository:a:pull,push"`),
so the header is scanned, not split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_EXPIRES_IN = 60
"""Seconds a token lives when the answer does not say (the token spec's default)."""
MAX_TOKEN_ANSWER = 1024 * 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BARE_VALUE = re.compile(r"[^,\s]+")
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """Lowercased: `bearer`, `basic`."""
    params: dict[str, str] = field(default_factory=dict)
    """Parameter names lowercased (`realm`, `service`, `scope`, `error`), values as sent."""


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in the `WWW-Authenticate` headers. Raises ValueError for text that is
    not a challenge list (the message says where it went wrong)."""
    found: list[Challenge] = []
    for header in headers:
        found.extend(_parse_header(header))
    return found


def _parse_header(text: str) -> list[Challenge]:
    challenges: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        m = _TOKEN.match(text, i)
        if m is None:
            raise ValueError(f"WWW-Authenticate {text!r}: unexpected {text[i]!r} at position {i}")
        name, j = m.group(), m.end()
        k = j
        while k < n and text[k] in " \t":
            k += 1
        if challenges and k < n and text[k] == "=":
            k += 1
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] == '"':
                value, i = _quoted(text, k)
            else:
                v = _BARE_VALUE.match(text, k)
                if v is None:
                    raise ValueError(f"WWW-Authenticate {text!r}: parameter {name!r} has no value")
                value, i = v.group(), v.end()
            challenges[-1][1][name.lower()] = value
        else:
            challenges.append((name.lower(), {}))
            i = k
    return [Challenge(scheme, params) for scheme, params in challenges]


def _quoted(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ValueError(f"WWW-Authenticate {text!r}: a quoted value is not closed")


def parse_token_answer(body: bytes) -> tuple[str, int]:
    """(token, expires_in seconds) from a token service's JSON answer, which may name the token
    `token` or `access_token` (OAuth2 style). Raises ValueError naming what is wrong — never
    quoting the body, which may hold a token."""
    if len(body) > MAX_TOKEN_ANSWER:
        raise ValueError(f"the token answer is larger than {MAX_TOKEN_ANSWER} bytes")
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the token answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ValueError("the token answer is not a JSON object")
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("the token answer has no `token` or `access_token` string")
    if not _TOKEN_TEXT.fullmatch(token):
        raise ValueError("the token answer's token has characters a header cannot carry")
    expires = answer.get("expires_in", DEFAULT_EXPIRES_IN)
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        raise ValueError("the token answer's `expires_in` is not a positive number")
    return token, int(expires)


class TokenCache:
    """Bearer tokens per (realm, service, scope), valid until their expiry minus a margin
    (so a token is not used in the last seconds of its life). Time is whatever `now` the
    caller passes: no clock here."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    @staticmethod
    def margin(expires_in: float) -> float:
        return min(5.0, expires_in / 10)

    def get(self, key: tuple[str, str, str], now: float) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, until = entry
        if now >= until:
            del self._tokens[key]
            return None
        return token

    def put(self, key: tuple[str, str, str], token: str, expires_in: float, now: float) -> None:
        self._tokens[key] = (token, now + expires_in - self.margin(expires_in))

    def drop(self, key: tuple[str, str, str]) -> None:
        self._tokens.pop(key, None)
