"""A Workload as one JSON document: what the exec runtime hands its commands on stdin and
what the local runtime keeps in its state folder.

The spec is proto3 JSON (camelCase field names, durations as "30s"), so any language can
read it; the identity of the intent rides next to it in snake_case:

    {"namespace": "shop-prod", "application": "shop", "service": "web", "channel": "prod",
     "generation": 3, "spec_hash": "…", "intent_id": "…", "spec": {…WorkloadSpec…}}
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from schemas.convoy.v1 import convergence_pb2
from services.agent.runtimes.base import Workload, WorkloadKey


class DocumentError(ValueError):
    """A document is not a workload (malformed JSON, missing fields): it cannot be used."""


def to_document(workload: Workload) -> dict[str, Any]:
    return {
        "namespace": workload.key.namespace,
        "application": workload.key.application,
        "service": workload.key.service,
        "channel": workload.channel,
        "generation": workload.generation,
        "spec_hash": workload.spec_hash,
        "intent_id": workload.intent_id,
        "spec": json_format.MessageToDict(workload.spec),
    }


def dumps(workload: Workload) -> str:
    return json.dumps(to_document(workload), sort_keys=True, indent=2) + "\n"


def from_document(document: object) -> Workload:
    if not isinstance(document, dict):
        raise DocumentError(f"a workload document is a JSON object, not {type(document).__name__}")
    try:
        spec = json_format.ParseDict(document.get("spec", {}), convergence_pb2.WorkloadSpec())
        return Workload(
            key=WorkloadKey(
                namespace=_text(document, "namespace"),
                application=_text(document, "application"),
                service=_text(document, "service"),
            ),
            spec=spec,
            spec_hash=_text(document, "spec_hash"),
            generation=int(document["generation"]),
            intent_id=str(document.get("intent_id", "")),
            channel=str(document.get("channel", "")),
        )
    except (KeyError, TypeError, ValueError, json_format.ParseError) as error:
        raise DocumentError(f"not a workload document: {error}") from error


def loads(text: str | bytes) -> Workload:
    try:
        return from_document(json.loads(text))
    except json.JSONDecodeError as error:
        raise DocumentError(f"not JSON: {error}") from error


def _text(document: dict[str, Any], name: str) -> str:
    value = document[name]
    if not isinstance(value, str) or not value:
        raise DocumentError(f"{name!r} must be a non-empty string")
    return value
