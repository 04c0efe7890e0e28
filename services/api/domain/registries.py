"""ApplyRegistry and DeleteRegistry: container registries as infrastructure.

A registry is visible to every application. Its URL's host[:port] is how images name
it: an image `host/repository:tag` whose host is a declared registry's is resolved to a
digest when a release is created (releases.deploy pins it), and repositories on it can
be followed (FollowRepository). Two registries with one host would make that ambiguous,
so hosts are unique. Credentials are a username and a `SecretRef` — never a password in
the log. A registry that a service follows, or whose images a service's programs use,
cannot be deleted: those services would silently stop being pinned or followed.
"""

from __future__ import annotations

import math
from typing import Final
from urllib.parse import urlsplit

from google.protobuf import duration_pb2

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import streams
from services.api.domain.commands import Command, Decision, clean
from services.api.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Problems
from services.api.domain.secretrefs import check_ref
from services.api.domain.state import State
from services.api.domain.validation import check_duration, check_labels, check_name, listing, q

MAX_RPS: Final = 10_000.0
MIN_POLL_FLOOR_SECONDS: Final = 1
DEFAULT_MIN_POLL_SECONDS: Final = 60


def registry_host(url: str) -> str | None:
    """host[:port] of a registry URL, lower-cased (None: not an http(s) URL)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.netloc.lower()


def _check_url(problems: Problems, field: str, url: str) -> None:
    if not url:
        problems.add(field, "required: the registry's base URL, e.g. https://registry.example.com")
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        problems.add(field, f"{q(url[:120])} is not a URL")
        return
    if len(url) > 2048 or parts.scheme not in ("http", "https") or not parts.hostname:
        problems.add(field, f"{q(url[:120])} is not an http(s) URL with a host")
    elif parts.username or parts.password:
        problems.add(field, "must not carry credentials: set username and password (a secret reference)")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        problems.add(field, "must be the registry's base URL (no path, query or fragment): the API lives at /v2/")


def image_host(image: str) -> str:
    """The registry host an image names, read as Docker does even when the rest of the
    reference is malformed (so a bad reference on a declared registry is refused, not
    left unpinned)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host = first.lower()
        return "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
    return "registry-1.docker.io"


def image_registry(state: State, image: str) -> resources_pb2.Registry | None:
    """The declared registry an image is on (by host), or None."""
    host = image_host(image)
    for registry in state.registries.values():
        if registry_host(registry.url) == host:
            return registry
    return None


def apply_registry(state: State, request: api_pb2.ApplyRegistryRequest, command: Command) -> Decision:
    if not request.HasField("registry"):
        raise InvalidArgument.at("registry", "required: the complete registry declaration")
    registry = clean(request.registry)
    problems = Problems()
    check_name(problems, "registry.name", registry.name, what="registry name")
    _check_url(problems, "registry.url", registry.url)
    if len(registry.username) > 256 or any(ch.isspace() or ch == ":" for ch in registry.username):
        problems.add("registry.username", "at most 256 characters, no spaces or ':'")
    if registry.HasField("password"):
        if registry.password.WhichOneof("source") == "kubernetes":
            problems.add(
                "registry.password.kubernetes",
                "a Kubernetes Secret is only readable inside a cluster, and the API asks the registry: use env, file or convoy",
            )
        else:
            check_ref(problems, "registry.password", registry.password)
        if not registry.username:
            problems.add("registry.username", "required with a password (Basic credentials)")
    rps = registry.requests_per_second
    if not math.isfinite(rps) or rps < 0 or rps > MAX_RPS:
        problems.add("registry.requests_per_second", f"must be between 0 (unlimited) and {MAX_RPS:g}")
    if check_duration(problems, "registry", registry, "min_poll_interval") and registry.HasField("min_poll_interval"):
        if registry.min_poll_interval.ToTimedelta().total_seconds() < MIN_POLL_FLOOR_SECONDS:
            problems.add("registry.min_poll_interval", f"must be at least {MIN_POLL_FLOOR_SECONDS}s")
    check_labels(problems, "registry.labels", registry.labels)
    problems.raise_if_any()
    if not registry.HasField("min_poll_interval"):
        registry.min_poll_interval.CopyFrom(duration_pb2.Duration(seconds=DEFAULT_MIN_POLL_SECONDS))
    host = registry_host(registry.url)
    clash = sorted(r.name for r in state.registries.values() if r.name != registry.name and registry_host(r.url) == host)
    if clash:
        raise FailedPrecondition(
            f"registry.url: registry {q(clash[0])} already has the host {q(host)}; images name a registry by "
            "host, so each host is declared once — change that registry instead"
        )
    if state.registries.get(registry.name) == registry:
        return Decision.unchanged()
    return Decision.of(streams.registry(registry.name), events_pb2.RegistryConfigured(registry=registry))


def users(state: State, registry: resources_pb2.Registry) -> list[str]:
    """Services that follow a repository on the registry or run images from it."""
    host = registry_host(registry.url)
    found = []
    for (app, name), service in state.services.items():
        images = [p.image for p in service.programs if p.image]
        if service.HasField("follow"):
            images.append(service.follow.repository)
        if any(image_host(image) == host for image in images):
            found.append(f"{app}/{name}")
    return sorted(found)


def delete_registry(state: State, request: api_pb2.DeleteRegistryRequest, command: Command) -> Decision:
    problems = Problems()
    check_name(problems, "name", request.name, what="registry name")
    problems.raise_if_any()
    registry = state.registries.get(request.name)
    if registry is None:
        raise NotFound(f"registry {q(request.name)} does not exist")
    using = users(state, registry)
    if using:
        raise FailedPrecondition(
            f"registry {q(request.name)} is still used by services ({listing(using)}): their images or followed "
            "repositories are on it; change those services first"
        )
    return Decision.of(streams.registry(request.name), events_pb2.RegistryDeleted(name=request.name))
