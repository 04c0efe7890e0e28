"""Every historical version of every event still decodes to today's message.

tests/fixtures/event_corpus/ holds one stored example per (type, schema version): the
bytes as that version wrote them and the current message they must upcast to (proto3
JSON). A new schema version without a corpus entry fails here, so an upcaster can never
ship untested, and removing a legacy layout the corpus still needs fails too.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from eventstore.codec import EventRegistry, convoy_registry
from eventstore.types import RecordedEvent

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "event_corpus"
ENTRIES = sorted(CORPUS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(path.read_text())
    return entry


@pytest.fixture(scope="module")
def registry() -> EventRegistry:
    return convoy_registry()


def test_corpus_is_not_empty() -> None:
    assert ENTRIES, f"no corpus files in {CORPUS}"


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.stem)
def test_stored_example_decodes_to_the_expected_current_message(registry: EventRegistry, path: Path) -> None:
    entry = load(path)
    assert path.name == f"{entry['type']}.v{entry['schema_version']}.json", "name files <type>.v<version>.json"
    stored = RecordedEvent(
        position=1,
        stream_id="corpus/example",
        version=1,
        event_id=uuid.uuid4(),
        type=entry["type"],
        schema_version=entry["schema_version"],
        data=base64.b64decode(entry["data_b64"], validate=True),
        actor="corpus",
        causation_id=None,
        correlation_id=None,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    decoded = registry.decode(stored)

    expected = json_format.ParseDict(entry["expected"], registry.message_class(entry["type"])())
    assert decoded.message == expected
    assert decoded.schema_version == entry["schema_version"]


def test_corpus_covers_every_version_of_every_event_type(registry: EventRegistry) -> None:
    known = {(name, v) for name, current in registry.versions().items() for v in range(1, current + 1)}
    covered = {(e["type"], e["schema_version"]) for e in map(load, ENTRIES)}

    assert sorted(known - covered) == [], "add a corpus entry for each new (type, schema version)"
    assert sorted(covered - known) == [], "corpus entries for versions this build does not know"
