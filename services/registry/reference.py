"""Image references (`host/repository:tag@digest`), parsed the way Docker does, with no I/O.

A release pins each image to a digest, so the form agents apply is `pinned()`:
`host/repo@sha256:…`. Parsing follows distribution's reference grammar closely enough to
refuse what a registry would refuse, with a message that says which part is wrong. Docker Hub
short names are normalised (`nginx` → `registry-1.docker.io/library/nginx`), so two spellings
of one image compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
MAX_NAME = 255

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def is_digest(text: str) -> bool:
    """`sha256:` and 64 lowercase hex digits (the only algorithm Convoy pins with)."""
    return DIGEST.fullmatch(text) is not None


def check_repository(name: str) -> None:
    """Raise ValueError unless `name` is a valid repository path (`demo/app`)."""
    if not name:
        raise ValueError("the repository name is empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"the repository name is longer than {MAX_NAME} characters")
    for part in name.split("/"):
        if not _COMPONENT.fullmatch(part):
            raise ValueError(
                f"repository {name!r}: component {part!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )


@dataclass(frozen=True)
class ImageReference:
    host: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        original = text
        if not text or text != text.strip():
            raise ValueError(f"image reference {original!r}: empty or surrounded by whitespace")
        digest: str | None = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not is_digest(digest):
                raise ValueError(
                    f"image reference {original!r}: digest {digest!r} is not sha256: followed by 64 lowercase hex digits"
                )
        tag: str | None = None
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
            if not TAG.fullmatch(tag):
                raise ValueError(
                    f"image reference {original!r}: tag {tag!r} must be 1-128 characters of letters, digits, '_', '.', '-' "
                    "(not starting with '.' or '-')"
                )
        first, _, rest = text.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            host, repository = first, rest
            if not _HOST.fullmatch(host):
                raise ValueError(f"image reference {original!r}: {host!r} is not a valid registry host")
        else:
            host, repository = DOCKER_HUB, text
        if host.lower() in _HUB_ALIASES:
            host = DOCKER_HUB
            if "/" not in repository:
                repository = f"library/{repository}"
        try:
            check_repository(repository)
        except ValueError as e:
            raise ValueError(f"image reference {original!r}: {e}") from None
        return cls(host=host, repository=repository, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """`host/repository`, without tag or digest."""
        return f"{self.host}/{self.repository}"

    def pinned(self, digest: str) -> str:
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not sha256: followed by 64 lowercase hex digits")
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text
