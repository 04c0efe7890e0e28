"""The API's convergence read model answers what it folded, whenever it is read.

Reads answer copies of messages built once per change (services/api/convergence.py), so
these tests read between folds and compare every answer with a view that folded the same
events and was never read before: a stale message after a status change or a deletion,
or a caller's edit leaking into the next read, would show as a difference.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from eventstore.types import RecordedEvent
from schemas.convoy.v1 import convergence_pb2 as S
from schemas.convoy.v1 import events_pb2 as E
from services.api.convergence import ConvergenceView

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def recorded(position: int) -> RecordedEvent:
    return RecordedEvent(position, "convergence/x", position, uuid.uuid4(), "t", 1, b"", "planner", None, None,
                         T0 + timedelta(seconds=position))


def status(app: str, service: str, channel: str, new: int, *, runtime: str = "", version: str = "v1") -> E.InstanceStatusChanged:
    message = E.InstanceStatusChanged(application=app, service=service, channel=channel, release_id=f"rel-{version}",
                                      version=version, new_status=new, reason=f"{version} {new}")  # type: ignore[arg-type]
    if runtime:
        message.target.runtime, message.target.namespace = runtime, "default"
    return message


EVENTS: list[Message] = [
    status("shop", "web", "staging", S.INSTANCE_STATUS_DEPLOYING, runtime="s1"),
    status("shop", "web", "staging", S.INSTANCE_STATUS_DEPLOYING),
    status("shop", "api", "staging", S.INSTANCE_STATUS_CONVERGED),
    status("blog", "web", "prod", S.INSTANCE_STATUS_CONVERGED),
    status("shop", "web", "staging", S.INSTANCE_STATUS_CONVERGED, runtime="s1"),
    status("shop", "web", "staging", S.INSTANCE_STATUS_CONVERGED, runtime="s2"),
    status("shop", "web", "staging", S.INSTANCE_STATUS_CONVERGED),
    status("shop", "web", "prod", S.INSTANCE_STATUS_WAITING_APPROVAL, version="v2"),
    E.ServiceDeleted(application="shop", name="api"),
    status("shop", "api", "staging", S.INSTANCE_STATUS_PENDING, version="v3"),
    E.ApplicationDeleted(name="blog"),
]


def answers(view: ConvergenceView) -> list[list[bytes]]:
    """Every read's answer, serialised (a snapshot: no message shared with the view)."""
    lists = [view.of("shop"), view.of("blog"), view.of("shop", "web"), view.of("shop", "api")]
    singles = [view.channel("shop", "web", "staging"), view.channel("shop", "api", "staging"), view.channel("blog", "web", "prod")]
    return [[m.SerializeToString(deterministic=True) for m in found] for found in lists] + [
        [m.SerializeToString(deterministic=True)] if m is not None else [] for m in singles
    ]


def test_answers_after_every_fold_are_those_of_a_view_never_read_before() -> None:
    read = ConvergenceView()
    for n, message in enumerate(EVENTS, start=1):
        read.fold(recorded(n), message)
        fresh = ConvergenceView()
        for m, earlier in enumerate(EVENTS[:n], start=1):
            fresh.fold(recorded(m), earlier)
        assert answers(read) == answers(fresh), f"after event {n}: {message}"


def test_a_caller_changing_its_answer_changes_no_later_answer() -> None:
    view = ConvergenceView()
    for n, message in enumerate(EVENTS[:8], start=1):
        view.fold(recorded(n), message)
    before = answers(view)
    mine = view.channel("shop", "web", "staging")
    assert mine is not None
    mine.version = "edited"
    mine.targets[0].status = S.INSTANCE_STATUS_FAILED
    view.of("shop")[0].reason = "edited"
    assert answers(view) == before
