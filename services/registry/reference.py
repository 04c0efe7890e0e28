"""Image references: `host[:port]/repository[:tag][@sha256:…]`, parsed the way Docker does.

A name's first component is a registry host when it contains a `.` or a `:` or is
`localhost`; otherwise the image is on Docker Hub (`registry-1.docker.io`, with
`library/` for one-component names). Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DOCKER_HUB: Final = "registry-1.docker.io"
_COMPONENT: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")
_HOST: Final = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:]+\](?::[0-9]{1,5})?")


def is_digest(text: str) -> bool:
    return _DIGEST.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class ImageReference:
    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        if not text or len(text) > 512 or any(ch.isspace() for ch in text):
            raise ValueError(f"{text[:80]!r} is not an image reference (empty, too long or with spaces)")
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not is_digest(digest):
                raise ValueError(f"{text!r}: the digest must be sha256:<64 lowercase hex>")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.fullmatch(tag):
                raise ValueError(f"{text!r}: {tag!r} is not a valid tag")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            if not _HOST.fullmatch(first):
                raise ValueError(f"{text!r}: {first!r} is not a registry host")
            host, path = first, remainder
        else:
            host, path = DOCKER_HUB, rest
            if first in ("docker.io", "index.docker.io"):
                path = remainder
            if "/" not in path:
                path = f"library/{path}"
        if host in ("docker.io", "index.docker.io"):
            host = DOCKER_HUB
        if not path or not all(_COMPONENT.fullmatch(part) for part in path.split("/")):
            raise ValueError(
                f"{text!r}: {path!r} is not a repository name (lowercase letters, digits and separators)"
            )
        return cls(host=host, repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """host/repository, without tag or digest."""
        return f"{self.host}/{self.repository}"

    def pinned(self, digest: str) -> str:
        """What agents apply: `host/repository@sha256:…`."""
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not a sha256 digest")
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
