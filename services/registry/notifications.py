"""Registry push notifications, read: distribution's notification envelope
(`application/vnd.docker.distribution.events.v1+json`) turned into the pushes it reports.

A registry posts an envelope for every pull and push, of blobs and of manifests; only a
manifest push means "a new image may be there", so that is all this keeps. The body comes
from outside, so it is size-capped and checked field by field; anything malformed is a
ValueError naming the event and the field, never a crash of the endpoint that received it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.registry.reference import TAG, check_repository, is_digest

MAX_ENVELOPE = 1024 * 1024
CONTENT_TYPES = frozenset({"application/vnd.docker.distribution.events.v1+json", "application/json"})
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})


@dataclass(frozen=True)
class Pushed:
    repository: str
    tag: str | None
    """None for a push by digest (a multi-arch image's children)."""
    digest: str
    host: str | None
    """The registry's address as the pushing client used it (`request.host`), when given."""


def parse_envelope(body: bytes, content_type: str) -> list[Pushed]:
    if len(body) > MAX_ENVELOPE:
        raise ValueError(f"the notification is larger than {MAX_ENVELOPE} bytes")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in CONTENT_TYPES:
        raise ValueError(
            f"content type {content_type[:100]!r} is not a registry notification "
            "(application/vnd.docker.distribution.events.v1+json)"
        )
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the notification is not JSON") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise ValueError('the notification is not an object with an "events" list')
    pushes: list[Pushed] = []
    for index, event in enumerate(envelope["events"]):
        where = f"event {index}"
        if not isinstance(event, dict):
            raise ValueError(f"{where} is not an object")
        if event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, dict):
            raise ValueError(f'{where}: "target" is not an object')
        if target.get("mediaType") not in MANIFEST_TYPES:
            continue  # a blob (layer, config) or something this does not deploy
        repository = target.get("repository")
        if not isinstance(repository, str):
            raise ValueError(f'{where}: "target.repository" is not a string')
        try:
            check_repository(repository)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        digest = target.get("digest")
        if not isinstance(digest, str) or not is_digest(digest):
            raise ValueError(f'{where}: "target.digest" is not sha256: followed by 64 lowercase hex digits')
        tag = target.get("tag")
        if tag not in (None, "") and (not isinstance(tag, str) or not TAG.fullmatch(tag)):
            raise ValueError(f'{where}: "target.tag" is not a tag')
        request = event.get("request")
        host = request.get("host") if isinstance(request, dict) else None
        pushes.append(Pushed(repository=repository, tag=tag or None, digest=digest,
                             host=host if isinstance(host, str) and host else None))
    return pushes
