"""The API read model's snapshot: the catalog `State`, the stream versions and the
convergence view, as one `ApiSnapshot` message (schemas/convoy/v1/snapshots.proto).

`capture` copies what the projection holds at one position into the message (the State
is immutable, so only the convergence view and the versions are really copied), and
`restore` builds the same values back; a test folds a realistic log both ways and
compares. `FOLD_BASE` is bumped by hand whenever `evolve` or the convergence view folds
differently; the event registry's types and schema versions are mixed in automatically
(eventstore.snapshots.fold_version_of), so a new event version retires old snapshots too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from eventstore.codec import EventRegistry
from eventstore.snapshots import fold_version_of, stamp, unstamp
from schemas.convoy.v1 import api_pb2, snapshots_pb2
from services.api.convergence import ConvergenceView
from services.api.domain.state import (
    Rejection,
    ReleaseRecord,
    RuntimeRecord,
    SecretRecord,
    ServiceReleases,
    State,
    TokenRecord,
    frozen,
)

KIND: Final = "api"
FOLD_BASE: Final = "api-1"
"""Bump when services/api/domain/folding.py or services/api/convergence.py fold differently."""

P = snapshots_pb2


def fold_version(registry: EventRegistry) -> str:
    return fold_version_of(FOLD_BASE, dict(registry.versions()))


@dataclass(frozen=True, slots=True)
class Restored:
    state: State
    versions: dict[str, int]
    channels: list[api_pb2.ChannelConvergence]
    """The convergence view's content (ConvergenceView.restore)."""
    releases: dict[str, tuple[str, str, str]]
    position: int


def capture(state: State, versions: Mapping[str, int], convergence: ConvergenceView) -> snapshots_pb2.ApiSnapshot:
    """The read model as one message (its embedded messages are copied in by protobuf)."""
    return build(state, dict(versions), convergence.export())


Exported = tuple[list[api_pb2.ChannelConvergence], dict[str, tuple[str, str, str]]]


def build(state: State, versions: Mapping[str, int], convergence: Exported) -> snapshots_pb2.ApiSnapshot:
    """`capture` from values the fold no longer changes (the immutable State, a copy of
    the versions, the convergence view's export): safe in a worker thread."""
    out = P.ApiSnapshot(secret_key_id=state.secret_key_id)
    out.applications.extend(state.applications.values())
    for (app, name), service in state.services.items():
        out.services.add(application=app, name=name, service=service)
    for r in state.runtimes.values():
        out.runtimes.add(
            runtime=r.runtime, paused=r.paused, pause_reason=r.pause_reason,
            credential_generation=r.credential_generation, credential_id=r.credential_id,
            credential_sha256=r.credential_sha256,
        )
    out.protections.extend(state.protections.values())
    for (scope, app, name), resource in state.resources.items():
        out.resources.add(scope=scope, application=app, name=name, resource=resource)
    for (app, name), history in state.releases.items():
        entry = out.releases.add(application=app, service=name)
        for release_id in history.order:
            record = history.by_id[release_id]
            release = entry.releases.add(release=record.release)
            for (channel, approval), approvers in record.approvals.items():
                release.approvals.add(channel=channel, approval=approval, approvers=approvers)
            for (channel, approval), rejections in record.rejections.items():
                given = release.rejections.add(channel=channel, approval=approval)
                for rejection in rejections:
                    given.rejections.add(approver=rejection.approver, reason=rejection.reason)
            for (channel, target), reason in record.bypasses.items():
                release.bypasses.add(channel=channel, target=target, reason=reason)
    for (app, name, channel), reason in state.paused_convergences.items():
        out.paused_convergences.add(application=app, service=name, channel=channel, reason=reason)
    for t in state.tokens.values():
        token = out.tokens.add(
            token_id=t.token_id, name=t.name, role=t.role, secret_sha256=t.secret_sha256, revoked=t.revoked,
            revoke_reason=t.revoke_reason, secret_hmac=t.secret_hmac, scope_applications=t.scope_applications,
            scope_channels=t.scope_channels, owner=t.owner,
        )
        stamp(token.expires_at, t.expires_at)
    out.registries.extend(state.registries.values())
    for s in state.secrets.values():
        out.secrets.add(name=s.name, key_id=s.key_id, nonce=s.nonce, ciphertext=s.ciphertext, cause=s.cause)
    out.stream_ids.extend(versions.keys())
    out.stream_versions.extend(versions.values())
    channels, releases = convergence
    out.channels.extend(channels)
    for release_id, (app, name, version) in releases.items():
        out.release_versions.add(release_id=release_id, application=app, service=name, version=version)
    return out


def restore(payload: bytes, position: int) -> Restored:
    """The read model an `ApiSnapshot` payload describes (after `position`)."""
    snap = P.ApiSnapshot()
    snap.ParseFromString(payload)
    if len(snap.stream_ids) != len(snap.stream_versions):
        raise ValueError("stream ids and versions differ in length")
    releases: dict[tuple[str, str], ServiceReleases] = {}
    for entry in snap.releases:
        by_id = {}
        for r in entry.releases:
            by_id[r.release.id] = ReleaseRecord(
                r.release,
                approvals=frozen({(a.channel, a.approval): tuple(a.approvers) for a in r.approvals}),
                rejections=frozen({
                    (g.channel, g.approval): tuple(Rejection(x.approver, x.reason) for x in g.rejections)
                    for g in r.rejections
                }),
                bypasses=frozen({(b.channel, b.target): b.reason for b in r.bypasses}),
            )
        releases[(entry.application, entry.service)] = ServiceReleases(
            by_id=frozen(by_id), order=tuple(r.release.id for r in entry.releases)
        )
    state = State(
        applications=frozen({a.name: a for a in snap.applications}),
        services=frozen({(s.application, s.name): s.service for s in snap.services}),
        runtimes=frozen({
            r.runtime.name: RuntimeRecord(
                r.runtime, r.paused, r.pause_reason, r.credential_generation, r.credential_id, r.credential_sha256
            )
            for r in snap.runtimes
        }),
        protections=frozen({p.name: p for p in snap.protections}),
        resources=frozen({(r.scope, r.application, r.name): r.resource for r in snap.resources}),
        releases=frozen(releases),
        paused_convergences=frozen({(p.application, p.service, p.channel): p.reason for p in snap.paused_convergences}),
        tokens=frozen({
            t.token_id: TokenRecord(
                t.token_id, t.name, t.role, t.secret_sha256, t.revoked, t.revoke_reason, t.secret_hmac,
                unstamp(t, "expires_at"), tuple(t.scope_applications), tuple(t.scope_channels), t.owner,
            )
            for t in snap.tokens
        }),
        registries=frozen({r.name: r for r in snap.registries}),
        secrets=frozen({
            s.name: SecretRecord(s.name, s.key_id, s.nonce, s.ciphertext, s.cause) for s in snap.secrets
        }),
        secret_key_id=snap.secret_key_id,
    )
    versions = dict(zip(snap.stream_ids, snap.stream_versions, strict=True))
    releases_index = {r.release_id: (r.application, r.service, r.version) for r in snap.release_versions}
    return Restored(state, versions, list(snap.channels), releases_index, position)
