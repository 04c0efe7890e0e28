"""Credentials out of anything printed or logged: one pure `redact_url` for every shape.

Convoy is given server addresses with passwords in them — `CONVOY_DATABASE_URL`
(`postgresql://convoy:pw@host/db`, `...?password=pw`, or a libpq `host=h password=pw`
string), `CONVOY_NATS_URL` (`nats://user:pw@h1,nats://user:pw@h2`), webhook URLs with
`?token=` — and prints and logs where it connects. Every such line goes through
`redact_url` (the CLI's prints) or `redact_text` (the structlog safety net in
cli.logging, for strings that merely contain one), so the password is replaced by `***`
while the user, host and port stay readable for whoever debugs the connection.

When unsure where a password ends (a raw `@` in it), more is hidden rather than less.
"""

from __future__ import annotations

import re
from typing import Final

REDACTED: Final = "***"

SECRET_PARAMETERS: Final = (
    "password", "passwd", "pwd", "pass", "sslpassword", "secret", "token", "access_token", "api_key", "apikey",
    "auth_token", "client_secret", "sig", "signature",
)
"""Query / key=value parameters whose value is a credential."""

_NAMES: Final = "|".join(sorted(SECRET_PARAMETERS, key=len, reverse=True))

_USERINFO: Final = re.compile(
    # scheme://user:password@ — the password may hold anything but whitespace and runs to
    # the last `@` before whitespace or the next `scheme://` (lists of URLs stay apart).
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:@/?#,]*:)(?P<secret>(?:(?!\b[A-Za-z][A-Za-z0-9+.\-]*://)\S)*?)@(?=[^@\s]*(?:\s|$|,|\b[A-Za-z][A-Za-z0-9+.\-]*://))"
)
_QUERY: Final = re.compile(rf"(?i)(?P<head>[?&;](?:{_NAMES})=)(?P<secret>[^&#\s]*)")
_KEYWORD: Final = re.compile(rf"(?i)(?P<head>(?<![^\s\"'(,])(?:{_NAMES})\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s'\",)]*)")


def _hide(match: re.Match[str]) -> str:
    return f"{match.group('head')}{REDACTED}" + ("@" if match.re is _USERINFO else "")


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it, and the value of every
    `password=` / `token=`-like parameter (query string or libpq key=value), replaced by
    `***`. Pure; text without credentials comes back unchanged."""
    if "://" in text:  # (every log line's strings pass here: skip what cannot match)
        text = _USERINFO.sub(_hide, text)
    if "=" in text:
        text = _KEYWORD.sub(_hide, _QUERY.sub(_hide, text))
    return text


def redact_url(url: str) -> str:
    """A server address fit to print: `postgresql://convoy:***@127.0.0.1:5432/postgres`,
    `nats://agent:***@h1:4222,nats://agent:***@h2:4222`, `...?sslmode=require&password=***`,
    `host=db user=convoy password=***`. Every scheme; the user, host and port stay."""
    return redact_text(url)
