"""Which applications a planner plans: partitioning by application.

One planner process is the fleet's ceiling, but the engine decides each application from
that application's inputs and the instance-wide declarations alone (runtimes, protections,
infrastructure resources): no decision about one application reads another's state. So N
planners can share the log, each planning the applications whose stable hash lands on its
partition (`--partition K/N`), each with its own checkpoint and leader lock:

- an input about one application (its declaration, services, releases, approvals, pauses,
  application resources, observations, fired timers, gate polls) goes to the partition
  that owns the application only;
- an input about no application in particular (runtimes, protections, infrastructure
  resources, anything the engine does not read) goes to every partition: each folds it and
  emits only what it means for its own applications;
- an output is about one application (every output stream names it), and a partition emits
  only its own (`owns_output`: a guard; the engine, fed only its own applications, emits no
  other).

The hash is SHA-256 of the application's name (never Python's `hash()`, which differs per
process), so every process and every restart agrees on the owner. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import Message

from schemas.convoy.v1 import events_pb2, resources_pb2

BASE_NAME: Final = "planner"
"""The checkpoint (and lock) name of an unpartitioned planner."""

_SPEC = re.compile(r"(?P<index>[0-9]+)/(?P<count>[0-9]+)")


def bucket(application: str, count: int) -> int:
    """The partition (0..count-1) that owns `application`."""
    digest = hashlib.sha256(application.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition `index` of `count` (0 of 1: the whole instance, the default)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index}/{self.count}: want K/N with N >= 1 and 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> Partition:
        """`K/N` (as `convoy planner --partition` takes it). Raises ValueError."""
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"partition {text!r}: want K/N, for example 0/2 (K in 0..N-1)")
        return cls(int(match["index"]), int(match["count"]))

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def name(self) -> str:
        """Its checkpoint, lock and version-stream name: `planner`, or `planner-K-of-N`."""
        return BASE_NAME if self.whole else f"{BASE_NAME}-{self.index}-of-{self.count}"

    def owns(self, application: str) -> bool:
        return self.whole or bucket(application, self.count) == self.index

    def takes(self, message: Message, stream_id: str) -> bool:
        """Whether this partition plans the input (`message`, recorded on `stream_id`)."""
        if self.whole:
            return True
        application = application_of(message, stream_id)
        return application is None or self.owns(application)

    def owns_output(self, message: Message) -> bool:
        if self.whole:
            return True
        application = output_application(message)
        return application is None or self.owns(application)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE: Final = Partition()


def partition_names(count: int) -> list[str]:
    """The checkpoint names of the `count` partitions of a layout (`planner` for 1)."""
    return [Partition(k, count).name for k in range(count)]


def application_of(message: Message, stream_id: str) -> str | None:
    """The application a planner input is about; None for an input about none in
    particular (it goes to every partition)."""
    if isinstance(message, events_pb2.ApplicationCreated | events_pb2.ApplicationUpdated):
        return message.application.name
    if isinstance(message, events_pb2.ApplicationDeleted):
        return message.name
    if isinstance(message, events_pb2.ServiceConfigured):
        return message.service.application
    if isinstance(message, events_pb2.ReleaseCreated):
        return message.release.application
    if isinstance(message, events_pb2.ObservationRecorded):
        return message.observation.application
    if isinstance(message, events_pb2.ResourceLinked):
        resource = message.resource
        return resource.application if resource.scope == resources_pb2.RESOURCE_SCOPE_APPLICATION else None
    if isinstance(message, events_pb2.ResourceUnlinked):
        return message.application if message.scope == resources_pb2.RESOURCE_SCOPE_APPLICATION else None
    if isinstance(message, events_pb2.TimerFired):
        # The timer shell records it on timer/<app>/<service>/<channel> (engine.timer_stream).
        parts = stream_id.split("/")
        return parts[1] if len(parts) == 4 and parts[0] == "timer" else None
    if isinstance(message, _PER_APPLICATION):
        return message.application  # type: ignore[attr-defined]
    return None


_PER_APPLICATION = (
    events_pb2.ServiceDeleted,
    events_pb2.ApprovalGranted,
    events_pb2.ApprovalRejected,
    events_pb2.BypassGranted,
    events_pb2.ConvergencePaused,
    events_pb2.ConvergenceResumed,
    events_pb2.RollbackRequested,
    events_pb2.ExternalApprovalPolled,
)


def output_application(message: Message) -> str | None:
    """The application a planner output is about (every output names one)."""
    if isinstance(message, events_pb2.IntentIssued):
        return message.spec.application
    application = getattr(message, "application", None)
    return application if isinstance(application, str) and application else None
