"""The API's view of convergence: where each service is in each channel, as the planner
last recorded it.

The planner owns the decisions; this read model only folds its InstanceStatusChanged
events (channel-level and per target), so `convoy status`, `deploy --wait` and the web
UI can answer without the planner process.

Besides the latest release and its status it keeps what *runs*: the last release that
reached CONVERGED in the channel (and on each target), or that a rollback restored
(ROLLED_BACK names the restored release in `rollback_release_id` at channel level and in
`release_id` on a target). A later release that fails, waits or never gets there leaves
it alone — so a prod that never received a bad release still reads as running the good
one. The restored release's version comes from its ReleaseCreated, folded here too. 

It is mutable and indexed by (application,
service, channel): a fleet release records hundreds of thousands of status changes, and
an immutable copy per event (as the catalog does) would cost quadratic time.

Reads answer copies of each channel's message as last built, rebuilt only after a fold
changed that channel: the web UI's fleet page reads every channel of the fleet (1,000
services × 3 channels, 50,000 targets), and building them all anew in Python on every
read was most of that page's server time (bench/ui.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import Message

from eventstore.types import RecordedEvent
from schemas.convoy.v1 import api_pb2, convergence_pb2, events_pb2


@dataclass(slots=True, frozen=True)
class _Running:
    release_id: str
    version: str
    since: datetime


@dataclass(slots=True)
class _Target:
    runtime: str
    namespace: str
    status: int = 0
    release_id: str = ""
    version: str = ""
    reason: str = ""
    updated_at: datetime | None = None
    running: _Running | None = None


@dataclass(slots=True)
class _Channel:
    application: str
    service: str
    channel: str
    release_id: str = ""
    version: str = ""
    status: int = 0
    reason: str = ""
    rollback_release_id: str = ""
    updated_at: datetime | None = None
    position: int = 0
    running: _Running | None = None
    targets: dict[tuple[str, str], _Target] = field(default_factory=dict)


CONVERGED = convergence_pb2.INSTANCE_STATUS_CONVERGED
ROLLED_BACK = convergence_pb2.INSTANCE_STATUS_ROLLED_BACK


class ConvergenceView:
    def __init__(self) -> None:
        self._channels: dict[tuple[str, str, str], _Channel] = {}
        self._releases: dict[str, tuple[str, str, str]] = {}
        """release id -> (application, service, version): the version a rollback restores."""
        self._built: dict[tuple[str, str, str], api_pb2.ChannelConvergence] = {}
        """Each channel's answer as last built; a fold that changes a channel drops its entry."""

    def fold(self, recorded: RecordedEvent, message: Message) -> None:
        if isinstance(message, events_pb2.ReleaseCreated):
            release = message.release
            self._releases[release.id] = (release.application, release.service, release.version)
        elif isinstance(message, events_pb2.InstanceStatusChanged):
            key = (message.application, message.service, message.channel)
            self._built.pop(key, None)
            channel = self._channels.get(key)
            if channel is None:
                channel = self._channels[key] = _Channel(*key)
            if message.target.runtime:
                tkey = (message.target.runtime, message.target.namespace)
                target = channel.targets.setdefault(tkey, _Target(*tkey))
                target.status, target.release_id, target.version = message.new_status, message.release_id, message.version
                target.reason, target.updated_at = message.reason, recorded.recorded_at
                if message.new_status in (CONVERGED, ROLLED_BACK):  # a target's events name the release it runs
                    target.running = _Running(message.release_id, message.version, recorded.recorded_at)
            else:
                channel.release_id, channel.version = message.release_id, message.version
                channel.status, channel.reason = message.new_status, message.reason
                channel.rollback_release_id = message.rollback_release_id
                channel.updated_at, channel.position = recorded.recorded_at, recorded.position
                if message.new_status == CONVERGED:
                    channel.running = _Running(message.release_id, message.version, recorded.recorded_at)
                elif message.new_status == ROLLED_BACK and message.rollback_release_id:
                    restored = message.rollback_release_id
                    version = self._releases.get(restored, ("", "", ""))[2]
                    channel.running = _Running(restored, version, recorded.recorded_at)
        elif isinstance(message, events_pb2.ServiceDeleted):
            for key in [k for k in self._channels if k[:2] == (message.application, message.name)]:
                del self._channels[key]
                self._built.pop(key, None)
            for rid in [r for r, (a, s, _) in self._releases.items() if (a, s) == (message.application, message.name)]:
                del self._releases[rid]
        elif isinstance(message, events_pb2.ApplicationDeleted):
            for key in [k for k in self._channels if k[0] == message.name]:
                del self._channels[key]
                self._built.pop(key, None)
            for rid in [r for r, (a, _, _) in self._releases.items() if a == message.name]:
                del self._releases[rid]

    # -- snapshots (services.api.snapshots) --------------------------------------------

    def export(self) -> tuple[list[api_pb2.ChannelConvergence], dict[str, tuple[str, str, str]]]:
        """Everything the view holds: each channel as its answer (which carries every
        field the view keeps), in fold order, and the release index (a copy)."""
        return [self._answer(key, channel) for key, channel in self._channels.items()], dict(self._releases)

    def restore(self, channels: list[api_pb2.ChannelConvergence], releases: dict[str, tuple[str, str, str]]) -> None:
        """Hold what `export` described (a snapshot), instead of anything folded before."""
        self._channels, self._built, self._releases = {}, {}, dict(releases)
        for answer in channels:
            channel = _Channel(
                answer.application, answer.service, answer.channel, answer.release_id, answer.version,
                answer.status, answer.reason, answer.rollback_release_id, _time(answer, "updated_at"),
                answer.position, _running(answer),
            )
            for t in answer.targets:
                channel.targets[(t.runtime, t.namespace)] = _Target(
                    t.runtime, t.namespace, t.status, t.release_id, t.version, t.reason, _time(t, "updated_at"),
                    _running(t),
                )
            self._channels[(answer.application, answer.service, answer.channel)] = channel

    def channel(self, app: str, service: str, channel: str) -> api_pb2.ChannelConvergence | None:
        key = (app, service, channel)
        return self._answer(key, self._channels[key]) if key in self._channels else None

    def of(self, app: str, service: str = "") -> list[api_pb2.ChannelConvergence]:
        keys = sorted(k for k in self._channels if k[0] == app and (not service or k[1] == service))
        return [self._answer(key, self._channels[key]) for key in keys]

    def _answer(self, key: tuple[str, str, str], channel: _Channel) -> api_pb2.ChannelConvergence:
        """A copy of the channel's message (callers may change theirs), built once per change."""
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = _message(channel)
        out = api_pb2.ChannelConvergence()
        out.CopyFrom(built)
        return out


def _time(message: Message, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


def _running(answer: api_pb2.ChannelConvergence | api_pb2.TargetConvergence) -> _Running | None:
    if not answer.HasField("running_since"):
        return None
    return _Running(answer.running_release_id, answer.running_version, answer.running_since.ToDatetime(tzinfo=UTC))


def _message(channel: _Channel) -> api_pb2.ChannelConvergence:
    out = api_pb2.ChannelConvergence(
        application=channel.application,
        service=channel.service,
        channel=channel.channel,
        release_id=channel.release_id,
        version=channel.version,
        status=channel.status,  # type: ignore[arg-type]
        reason=channel.reason,
        position=channel.position,
        rollback_release_id=channel.rollback_release_id,
    )
    if channel.updated_at is not None:
        out.updated_at.FromDatetime(channel.updated_at)
    if channel.running is not None:
        out.running_release_id, out.running_version = channel.running.release_id, channel.running.version
        out.running_since.FromDatetime(channel.running.since)
    for target in sorted(channel.targets.values(), key=lambda t: (t.runtime, t.namespace)):
        t = out.targets.add(
            runtime=target.runtime,
            namespace=target.namespace,
            status=target.status,  # type: ignore[arg-type]
            release_id=target.release_id,
            version=target.version,
            reason=target.reason,
        )
        if target.updated_at is not None:
            t.updated_at.FromDatetime(target.updated_at)
        if target.running is not None:
            t.running_release_id, t.running_version = target.running.release_id, target.running.version
            t.running_since.FromDatetime(target.running.since)
    return out
