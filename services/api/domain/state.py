"""The catalog: everything `decide` needs to know, folded from the event log.

One immutable value holds the whole declared world — applications with their channels,
services, runtimes (with their paused flag and agent credential generation),
protections, resources, each service's releases with the approvals, rejections and
bypasses they collected, paused convergences and API tokens. Commands validate against
it as a whole because Convoy's rules cross entities (a channel binds runtimes, a service
uses resources of its application), and it is small: declarations, not observations.

The value is frozen: every mapping is a read-only view and `evolve` builds a new State
for each event, sharing what did not change. The protobuf messages inside are treated as
read-only too; `decide` and `evolve` copy them on the way in and out, so a caller that
mutates a request or an emitted event cannot change a State.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar

from schemas.convoy.v1 import resources_pb2

K = TypeVar("K")
V = TypeVar("V")

ServiceKey = tuple[str, str]
"""(application, service)."""
ResourceKey = tuple[int, str, str]
"""(scope, application — empty for infrastructure scope, name)."""
ApprovalKey = tuple[str, str]
"""(channel, manual approval name)."""
BypassKey = tuple[str, str]
"""(channel, bypass target — see `bypass`)."""
ConvergenceKey = tuple[str, str, str]
"""(application, service, channel — empty for every channel)."""


def frozen(mapping: Mapping[K, V] | None = None) -> Mapping[K, V]:
    """A read-only copy."""
    return MappingProxyType(dict(mapping or {}))


def _copy(mapping: Mapping[K, V]) -> dict[K, V]:
    """A plain dict copy. A State's mappings are read-only views of dicts, and
    `dict(view)` goes through the generic mapping protocol (a lookup per key: ~15 us
    for 128 entries) where the view's own `copy()` copies the dict beneath (~1 us)."""
    if isinstance(mapping, MappingProxyType | dict):
        copy = mapping.copy()
        if type(copy) is dict:
            return copy
    return dict(mapping)


def with_item(mapping: Mapping[K, V], key: K, value: V) -> Mapping[K, V]:
    """A read-only copy of `mapping` with `key` set."""
    copy = _copy(mapping)
    copy[key] = value
    return MappingProxyType(copy)


def without(mapping: Mapping[K, V], key: K) -> Mapping[K, V]:
    """A read-only copy of `mapping` without `key` (absent is fine)."""
    copy = _copy(mapping)
    copy.pop(key, None)
    return MappingProxyType(copy)


@dataclass(frozen=True, slots=True)
class RuntimeRecord:
    """A registered runtime as declared (labels included) plus its operational flags."""

    runtime: resources_pb2.Runtime
    paused: bool = False
    pause_reason: str = ""
    credential_generation: int = 0
    credential_id: str = ""
    credential_sha256: str = ""


@dataclass(frozen=True, slots=True)
class Rejection:
    approver: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """A release and the human decisions recorded about it, per channel."""

    release: resources_pb2.Release
    approvals: Mapping[ApprovalKey, tuple[str, ...]] = field(default_factory=frozen)
    """Distinct approvers per (channel, approval), in the order they approved."""
    rejections: Mapping[ApprovalKey, tuple[Rejection, ...]] = field(default_factory=frozen)
    bypasses: Mapping[BypassKey, str] = field(default_factory=frozen)
    """Reason per (channel, target)."""


@dataclass(frozen=True, slots=True)
class ServiceReleases:
    """One service's releases, by id and in creation order."""

    by_id: Mapping[str, ReleaseRecord] = field(default_factory=frozen)
    order: tuple[str, ...] = ()

    @property
    def latest(self) -> ReleaseRecord | None:
        return self.by_id[self.order[-1]] if self.order else None

    def with_version(self, version: str) -> ReleaseRecord | None:
        for record in self.by_id.values():
            if record.release.version == version:
                return record
        return None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    name: str
    role: str
    """"viewer", "deployer", "approver" or "admin" (as recorded in TokenCreated)."""
    secret_sha256: str
    revoked: bool = False
    revoke_reason: str = ""
    secret_hmac: str = ""
    """HMAC-SHA256 of the secret under the instance's token key (empty: a token created
    without a key, verified by `secret_sha256`)."""
    expires_at: datetime | None = None
    """None: never expires."""
    scope_applications: tuple[str, ...] = ()
    scope_channels: tuple[str, ...] = ()
    """Empty: not restricted (services.api.scopes)."""
    owner: str = ""
    """The principal the token acts as; empty (tokens before owners): its name."""

    @property
    def principal(self) -> str:
        return self.owner or self.name


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A Convoy-kept secret as the log holds it: ciphertext only."""

    name: str
    key_id: str
    nonce: bytes
    ciphertext: bytes
    cause: str = "set"


@dataclass(frozen=True, slots=True)
class State:
    """The catalog. `State()` is the empty one, before the first event."""

    applications: Mapping[str, resources_pb2.Application] = field(default_factory=frozen)
    services: Mapping[ServiceKey, resources_pb2.Service] = field(default_factory=frozen)
    runtimes: Mapping[str, RuntimeRecord] = field(default_factory=frozen)
    protections: Mapping[str, resources_pb2.Protection] = field(default_factory=frozen)
    resources: Mapping[ResourceKey, resources_pb2.Resource] = field(default_factory=frozen)
    releases: Mapping[ServiceKey, ServiceReleases] = field(default_factory=frozen)
    paused_convergences: Mapping[ConvergenceKey, str] = field(default_factory=frozen)
    """Reason per paused (application, service, channel); channel "" = every channel."""
    tokens: Mapping[str, TokenRecord] = field(default_factory=frozen)
    registries: Mapping[str, resources_pb2.Registry] = field(default_factory=frozen)
    secrets: Mapping[str, SecretRecord] = field(default_factory=frozen)
    secret_key_id: str = ""
    """The keyring key the last rotation made current ("" before any rotation)."""

    # -- queries used by several commands (and by the planner's tests) --------------

    def services_of(self, app: str) -> list[str]:
        """Names of the application's services, sorted."""
        return sorted(name for (owner, name) in self.services if owner == app)

    def releases_of(self, app: str, service: str) -> ServiceReleases:
        return self.releases.get((app, service), ServiceReleases())

    def release(self, app: str, service: str, release_id: str) -> ReleaseRecord | None:
        return self.releases_of(app, service).by_id.get(release_id)

    def find_release(self, release_id: str) -> ReleaseRecord | None:
        """A release by id alone, whichever service it belongs to."""
        for history in self.releases.values():
            record = history.by_id.get(release_id)
            if record is not None:
                return record
        return None

    def visible_resource(self, app: str, name: str) -> resources_pb2.Resource | None:
        """The resource `name` as application `app` sees it: its own application
        resource of that name if linked (it shadows an infrastructure one), else the
        infrastructure resource, else None."""
        own = self.resources.get((resources_pb2.RESOURCE_SCOPE_APPLICATION, app, name))
        if own is not None:
            return own
        return self.resources.get((resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE, "", name))

    def runtime_bindings(self, runtime: str) -> list[tuple[str, str]]:
        """(application, channel) pairs whose channel binds `runtime`, sorted."""
        found = {
            (app.name, channel.name)
            for app in self.applications.values()
            for channel in app.release_channels
            for binding in channel.runtimes
            if binding.runtime == runtime
        }
        return sorted(found)

    def protection_attachments(self, protection: str) -> list[tuple[str, str]]:
        """(application, channel) pairs that attach `protection`, sorted."""
        found = {
            (app.name, channel.name)
            for app in self.applications.values()
            for channel in app.release_channels
            for attachment in channel.protections
            if attachment.protection == protection
        }
        return sorted(found)

    def is_convergence_paused(self, app: str, service: str, channel: str) -> bool:
        """Whether the service's convergence in `channel` is paused (there, or everywhere)."""
        return (app, service, "") in self.paused_convergences or (app, service, channel) in self.paused_convergences


def find_channel(application: resources_pb2.Application, name: str) -> resources_pb2.ReleaseChannel | None:
    for channel in application.release_channels:
        if channel.name == name:
            return channel
    return None
