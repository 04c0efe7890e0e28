"""docs/config.md: every example validates, and every field of the config kinds is documented.

The examples are the fenced ```yaml blocks; each is written to its own file and checked
with the loader `convoy validate` uses, then all together through `convoy validate` itself
(the names do not collide, so they also pass the duplicate check as one config). The
field tables are checked against the protobuf descriptors, so a field added to
resources.proto without a line in the reference fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from typer.testing import CliRunner

from cli.config import loader
from cli.config.documents import KINDS
from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "config.md"
BLOCK = re.compile(r"^```yaml\n(.*?)^```$", re.M | re.S)


def examples() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def test_there_is_an_example_of_every_kind() -> None:
    kinds = {document.kind for text in examples() for document in loader.loads(text)}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("index", range(len(examples())))
def test_each_example_loads_without_problems(index: int) -> None:
    text = examples()[index]
    documents = loader.loads(text, file=f"docs/config.md example {index}")
    assert documents


def test_the_examples_pass_convoy_validate(tmp_path: Path) -> None:
    for index, text in enumerate(examples()):
        (tmp_path / f"example-{index:02d}.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", "-f", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "documents OK" in result.output


def test_a_broken_example_would_fail(tmp_path: Path) -> None:
    """The check has teeth: a misspelt field in an example is a validation error."""
    broken = examples()[0].replace("releaseChannels:", "releaseChanels:", 1)
    (tmp_path / "broken.yaml").write_text(broken)
    result = CliRunner().invoke(app, ["validate", "-f", str(tmp_path)])
    assert result.exit_code == 2
    assert "releaseChanels" in result.output


def _messages(desc: Descriptor, seen: dict[str, Descriptor]) -> None:
    if desc.full_name in seen or desc.full_name.startswith("google.protobuf."):
        return
    seen[desc.full_name] = desc
    for field in desc.fields:
        entry = field.message_type
        if entry is not None and not entry.GetOptions().map_entry:
            _messages(entry, seen)


def test_every_field_of_every_config_message_is_documented() -> None:
    text = DOC.read_text()
    seen: dict[str, Descriptor] = {}
    for cls in KINDS.values():
        _messages(cls.DESCRIPTOR, seen)
    missing = [
        f"{desc.name}.{field.json_name}"
        for desc in seen.values()
        for field in desc.fields
        if f"`{field.json_name}`" not in text
    ]
    assert not missing, f"docs/config.md does not document: {', '.join(missing)}"
