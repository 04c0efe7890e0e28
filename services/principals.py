"""Who did it, as a name: principals normalised, restricted, and compared one way.

Until real identities arrive, a person is the name of their API token: the actor of every
event they cause, the deployer of a release, an approver. Four eyes and "two distinct
approvers" compare those names, so names that look alike must be alike: `bob`, `bob `
(a trailing space), `Bob` and `bоb` (with a Cyrillic о) are one person.

- `normalise` is what a new token's name is stored as: NFKC, case-folded, surrounding
  whitespace stripped.
- `problem` says why a name cannot be a new token's: after normalising it must be 1–64
  of ASCII letters, digits, `.`, `-`, `_`, `@`, starting with a letter or digit (one
  script, nothing to confuse; no `:`, which system actors use: `agent:<runtime>`,
  `registry:<name>`).
- `key` is what two names are compared by, wherever they are (the API's decisions, the
  planner's gates, uniqueness among live tokens): the normalised name with invisible
  format characters and accents dropped and letters of other scripts that imitate Latin
  ones folded onto them — so stored events and tokens named before these rules existed still compare
  right.

SSO callers are `sso:<issuer alias>:<sub>` (`sso`): the `sso:` prefix has a `:`, which
no token name may hold, so it cannot be mistaken for a token's owner named by its name,
and no system actor uses it. The `sub` is the issuer's opaque identifier: an SSO
principal is kept and compared exactly (no case folding: `sub` values are case
sensitive), only surrounding whitespace is stripped.

Pure (only `unicodedata`), shared by services.api and services.planner, which may not
import each other.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

MAX_NAME: Final = 64
_SAFE: Final = re.compile(r"[a-z0-9][a-z0-9._@-]*")
SSO_PREFIX: Final = "sso:"
MAX_SUB: Final = 255
_ALIAS: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SUB: Final = re.compile(r"[\x21-\x7e]{1,255}")

# Letters of other scripts that render like a Latin letter, after case folding (so the
# capitals that imitate one are here as their lower-case forms): Cyrillic, Greek, and a
# few Latin look-alikes NFKC leaves alone. Not Unicode's whole confusables table: new
# names are ASCII-only, this only keeps names recorded before that rule comparable.
_LOOKALIKES: Final = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ѵ": "v", "ү": "y", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "m", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ζ": "z", "ϲ": "c", "ϳ": "j",
    # Latin and others NFKC keeps distinct
    "ı": "i", "ȷ": "j", "ɩ": "i", "ʟ": "l", "ɪ": "i", "ᴏ": "o", "ѡ": "w",
}
_FOLD: Final = str.maketrans(_LOOKALIKES)


def sso(alias: str, sub: str) -> str:
    """The principal of an SSO caller: `sso:<issuer alias>:<sub>`."""
    return f"{SSO_PREFIX}{alias}:{sub}"


def is_sso(name: str) -> bool:
    return name.strip().startswith(SSO_PREFIX)


def normalise(name: str) -> str:
    """NFKC, case-folded (NFKC again, as Unicode's NFKC_Casefold), stripped. An SSO
    principal is only stripped (its `sub` is compared exactly)."""
    if is_sso(name):
        return name.strip()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).strip()


def key(name: str) -> str:
    """What principals are compared by: equal keys are the same principal."""
    if is_sso(name):
        return name.strip()
    decomposed = unicodedata.normalize("NFD", normalise(name))
    visible = "".join(c for c in decomposed if unicodedata.category(c) not in ("Cf", "Mn", "Me"))
    return visible.translate(_FOLD).strip()


def same(a: str, b: str) -> bool:
    return key(a) == key(b)


def problem(name: str) -> str | None:
    """Why `name` cannot name a new token (None: it can, as `normalise(name)`)."""
    normal = normalise(name)
    if not normal:
        return 'required: who the token is for, e.g. "ci-deployer" or "alice@example.com"'
    if len(normal) > MAX_NAME:
        return f"at most {MAX_NAME} characters"
    if _SAFE.fullmatch(normal) is None:
        odd = next((c for c in normal if not (c.isascii() and (c.isalnum() or c in "._@-"))), None)
        detail = f"; {odd!r} ({unicodedata.name(odd, f'U+{ord(odd):04X}')}) is not one of them" if odd else ""
        return (
            "use ASCII letters, digits, '.', '-', '_' and '@', starting with a letter or digit "
            f"(names are compared case-insensitively){detail}"
        )
    return None


def owner_problem(owner: str) -> str | None:
    """Why `owner` cannot own a token (None: it can, as `normalise(owner)`): a name as
    `problem` allows, or an SSO principal `sso:<alias>:<sub>`."""
    if not is_sso(owner):
        return problem(owner)
    alias, sep, sub = owner.strip()[len(SSO_PREFIX) :].partition(":")
    if not sep or _ALIAS.fullmatch(alias) is None or _SUB.fullmatch(sub) is None:
        return (
            "an SSO owner reads sso:<issuer alias>:<sub> (the alias as in the OIDC configuration: "
            f"lower-case letters, digits, '-'; the sub: 1-{MAX_SUB} printable ASCII characters, no spaces)"
        )
    return None
