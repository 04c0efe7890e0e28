"""The notifier's pure core: which status changes are worth a message, and its shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from eventstore.types import RecordedEvent
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from services.notifier.rules import DEFAULT_STATUSES, Rule, decide, parse_statuses, payload

AT = datetime(2026, 11, 26, 14, 7, tzinfo=UTC)


def recorded(position: int = 42) -> RecordedEvent:
    return RecordedEvent(position, "convergence/shop/web/prod", 3, uuid.UUID(int=position), "convoy.v1.InstanceStatusChanged",
                         1, b"", "planner", None, None, AT)


def changed(new: int, old: int = C.INSTANCE_STATUS_DEPLOYING, **fields: object) -> E.InstanceStatusChanged:
    base = {"application": "shop", "service": "web", "channel": "prod", "release_id": "rel-2", "version": "v2",
            "reason": "rolled back to v1: crash loop on runtime eu-1"}
    base |= fields
    return E.InstanceStatusChanged(new_status=new, old_status=old, **base)  # type: ignore[arg-type]


def test_a_rolled_back_release_becomes_a_notification() -> None:
    found = decide(Rule(), recorded(), changed(C.INSTANCE_STATUS_ROLLED_BACK, C.INSTANCE_STATUS_ROLLING_BACK))
    assert found is not None
    assert found.text == "shop/web v2 in prod: ROLLED_BACK — rolled back to v1: crash loop on runtime eu-1"
    body = payload(found, "json")
    assert body["event_id"] == str(uuid.UUID(int=42)) and body["position"] == 42
    assert (body["old_status"], body["status"], body["recorded_at"]) == ("ROLLING_BACK", "ROLLED_BACK", AT.isoformat())
    assert payload(found, "slack") == {"text": found.text}
    with pytest.raises(ValueError, match="unknown format"):
        payload(found, "xml")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule(), changed(C.INSTANCE_STATUS_DEPLOYING, C.INSTANCE_STATUS_PENDING)),  # not a default status
        (Rule(), changed(C.INSTANCE_STATUS_CONVERGED, target=C.Target(runtime="eu-1", namespace="n"))),  # per runtime
        (Rule(), changed(C.INSTANCE_STATUS_CONVERGED, C.INSTANCE_STATUS_CONVERGED)),  # no change
        (Rule(applications=frozenset({"billing"})), changed(C.INSTANCE_STATUS_FAILED)),
        (Rule(channels=frozenset({"staging"})), changed(C.INSTANCE_STATUS_FAILED)),
        (Rule(), E.ApprovalGranted(application="shop", service="web", channel="prod")),  # not a status change
    ],
)
def test_what_is_not_notified(rule: Rule, message: object) -> None:
    assert decide(rule, recorded(), message) is None


def test_statuses_parse_by_name() -> None:
    assert parse_statuses("waiting_approval, FAILED") == {C.INSTANCE_STATUS_WAITING_APPROVAL, C.INSTANCE_STATUS_FAILED}
    assert parse_statuses("INSTANCE_STATUS_PAUSED") == {C.INSTANCE_STATUS_PAUSED}
    with pytest.raises(ValueError, match="unknown status BROKEN; statuses: converged, deploying"):
        parse_statuses("failed,broken")
    with pytest.raises(ValueError, match="none given"):
        parse_statuses(" , ")
    assert C.INSTANCE_STATUS_WAITING_APPROVAL in DEFAULT_STATUSES and C.INSTANCE_STATUS_DEPLOYING not in DEFAULT_STATUSES
