"""The workload document exec commands read on stdin (and the local state folder keeps)."""

from __future__ import annotations

import json

import pytest
from google.protobuf.duration_pb2 import Duration

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes import documents
from services.agent.runtimes.base import Workload, WorkloadKey

WORKLOAD = Workload(
    key=WorkloadKey(namespace="shop-prod", application="shop", service="web"),
    spec=convergence_pb2.WorkloadSpec(
        application="shop",
        service="web",
        channel="prod",
        version="1.2",
        replicas=2,
        progress_deadline=Duration(seconds=300),
        programs=[resources_pb2.Program(name="web", command=["python3", "-m", "http.server", "{{.Port}}"])],
    ),
    spec_hash="abc",
    generation=7,
    intent_id="intent-7",
    channel="prod",
)


def test_a_document_round_trips_and_uses_proto3_json_for_the_spec() -> None:
    document = json.loads(documents.dumps(WORKLOAD))
    assert {k: v for k, v in document.items() if k != "spec"} == {
        "namespace": "shop-prod",
        "application": "shop",
        "service": "web",
        "channel": "prod",
        "generation": 7,
        "spec_hash": "abc",
        "intent_id": "intent-7",
    }
    assert document["spec"]["progressDeadline"] == "300s"
    assert documents.loads(documents.dumps(WORKLOAD)) == WORKLOAD


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"namespace": "n", "application": "a", "service": "s", "spec_hash": "h"}',
        '{"namespace": "", "application": "a", "service": "s", "spec_hash": "h", "generation": 1}',
        '{"namespace": "n", "application": "a", "service": "s", "spec_hash": "h", "generation": 1, "spec": {"replicas": "x"}}',
    ],
)
def test_what_is_not_a_workload_document_is_refused(text: str) -> None:
    with pytest.raises(documents.DocumentError):
        documents.loads(text)
