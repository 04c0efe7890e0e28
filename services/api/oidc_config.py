"""The SSO configuration: which OIDC issuers the API trusts, and what their groups may do.

Read from a YAML file (`--oidc-config FILE` / `CONVOY_OIDC_CONFIG`) once at start-up:

```yaml
issuers:
  - alias: corp                              # the <alias> in principals "sso:corp:<sub>"
    issuer: https://login.example.com/       # the tokens' `iss`, exactly
    audience: convoy                         # the tokens' `aud` must hold it
    jwks: https://login.example.com/jwks.json  # or a file path
    groupsClaim: groups                      # default "groups"
    groups:
      - group: platform
        role: admin
      - group: shop-team
        role: deployer
        scope: {applications: [shop], channels: [staging]}
jwksCacheSeconds: 300                        # default 300
leewaySeconds: 30                            # clock skew allowed on exp/nbf/iat, default 30
```

Pure: parsing and checking a mapping into frozen dataclasses, with errors that name the
field. A caller in several groups gets the highest role they map to; its scope is the
union of the scopes of the groups with that role (none: unrestricted, if any of them is
unscoped). A caller in no mapped group is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from schemas.convoy.v1 import options_pb2
from services.api.domain.tokens import ROLES_BY_NAME
from services.api.scopes import UNSCOPED, Scope

_ALIAS: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_DNS: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


class OidcConfigError(ValueError):
    """The SSO configuration is wrong; the message names the field. Fix the file."""


@dataclass(frozen=True, slots=True)
class Grant:
    group: str
    role: int
    scope: Scope = UNSCOPED


@dataclass(frozen=True, slots=True)
class Issuer:
    alias: str
    issuer: str
    audience: str
    jwks: str
    groups_claim: str = "groups"
    grants: tuple[Grant, ...] = ()

    @property
    def jwks_is_url(self) -> bool:
        return self.jwks.startswith(("https://", "http://"))

    def grant_for(self, groups: Iterable[str]) -> tuple[int, Scope] | None:
        """(role, scope) for a caller in `groups`, or None when no group is mapped."""
        member = set(groups)
        matched = [g for g in self.grants if g.group in member]
        if not matched:
            return None
        role = max(g.role for g in matched)
        top = [g for g in matched if g.role == role]
        if any(not g.scope.restricted for g in top):
            return role, UNSCOPED
        apps: set[str] = set()
        channels: set[str] = set()
        for g in top:
            apps |= g.scope.applications
            channels |= g.scope.channels
        return role, Scope.of(apps, channels)


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuers: tuple[Issuer, ...]
    jwks_cache_seconds: float = 300.0
    leeway_seconds: float = 30.0

    def by_issuer(self, iss: str) -> Issuer | None:
        return next((i for i in self.issuers if i.issuer == iss), None)


def load(path: Path | str) -> OidcConfig:
    """Read and check the YAML file at `path`."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise OidcConfigError(f"cannot read the OIDC configuration {str(path)!r}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise OidcConfigError(f"{path}: not YAML: {e}") from None
    return parse(data, base=Path(path).parent)


def parse(data: object, *, base: Path = Path(".")) -> OidcConfig:
    if not isinstance(data, Mapping):
        raise OidcConfigError("the OIDC configuration must be a mapping with an `issuers` list")
    issuers_raw = data.get("issuers")
    if not isinstance(issuers_raw, list) or not issuers_raw:
        raise OidcConfigError("issuers: required, a non-empty list")
    issuers = tuple(_issuer(item, f"issuers[{i}]", base) for i, item in enumerate(issuers_raw))
    seen: set[str] = set()
    for i, issuer in enumerate(issuers):
        if issuer.alias in seen:
            raise OidcConfigError(f"issuers[{i}].alias: {issuer.alias!r} is used twice")
        seen.add(issuer.alias)
    ttl = _number(data.get("jwksCacheSeconds", 300), "jwksCacheSeconds", low=1)
    leeway = _number(data.get("leewaySeconds", 30), "leewaySeconds", low=0, high=300)
    return OidcConfig(issuers=issuers, jwks_cache_seconds=ttl, leeway_seconds=leeway)


def _number(value: object, at: str, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (high is not None and value > high):
        bound = f" and at most {high:g}" if high is not None else ""
        raise OidcConfigError(f"{at}: a number of at least {low:g}{bound}")
    return float(value)


def _text(item: Mapping[str, Any], key: str, at: str, *, required: bool = True, default: str = "") -> str:
    value = item.get(key, default)
    if not isinstance(value, str) or (required and not value.strip()):
        raise OidcConfigError(f"{at}.{key}: required, a string")
    return value.strip()


def _issuer(item: object, at: str, base: Path) -> Issuer:
    if not isinstance(item, Mapping):
        raise OidcConfigError(f"{at}: a mapping with alias, issuer, audience, jwks and groups")
    alias = _text(item, "alias", at)
    if _ALIAS.fullmatch(alias) is None:
        raise OidcConfigError(f"{at}.alias: {alias!r}: lower-case letters, digits and '-', at most 32")
    issuer = _text(item, "issuer", at)
    audience = _text(item, "audience", at)
    jwks = _text(item, "jwks", at)
    if jwks.startswith("http://"):
        host = urlsplit(jwks).hostname or ""
        if host not in LOOPBACK:
            raise OidcConfigError(f"{at}.jwks: fetch keys over https:// (plain http only on loopback)")
    elif not jwks.startswith("https://"):
        path = Path(jwks) if Path(jwks).is_absolute() else base / jwks
        jwks = str(path)
    groups_claim = _text(item, "groupsClaim", at, required=False, default="groups") or "groups"
    grants_raw = item.get("groups")
    if not isinstance(grants_raw, list) or not grants_raw:
        raise OidcConfigError(f"{at}.groups: required, a list of {{group, role, scope}}")
    grants = tuple(_grant(g, f"{at}.groups[{j}]") for j, g in enumerate(grants_raw))
    return Issuer(alias, issuer, audience, jwks, groups_claim, grants)


def _grant(item: object, at: str) -> Grant:
    if not isinstance(item, Mapping):
        raise OidcConfigError(f"{at}: a mapping with group, role and optional scope")
    group = _text(item, "group", at)
    role_name = _text(item, "role", at)
    role = ROLES_BY_NAME.get(role_name)
    if role is None or role == options_pb2.ROLE_UNSPECIFIED:
        raise OidcConfigError(f"{at}.role: {role_name!r} is not one of {', '.join(ROLES_BY_NAME)}")
    scope_raw = item.get("scope") or {}
    if not isinstance(scope_raw, Mapping):
        raise OidcConfigError(f"{at}.scope: a mapping with applications and/or channels")
    names: dict[str, list[str]] = {}
    for key in ("applications", "channels"):
        value = scope_raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and _DNS.fullmatch(v) for v in value):
            raise OidcConfigError(f"{at}.scope.{key}: a list of names (lower-case DNS labels)")
        names[key] = value
    return Grant(group, role, Scope.of(names["applications"], names["channels"]))
