"""The config loader's vocabulary: documents, their sources, and problems found in them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from eventstore.errors import InvalidInput
from schemas.convoy.v1 import resources_pb2

KINDS: dict[str, type[Message]] = {
    "application": resources_pb2.Application,
    "protection": resources_pb2.Protection,
    "registry": resources_pb2.Registry,
    "resource": resources_pb2.Resource,
    "runtime": resources_pb2.Runtime,
    "service": resources_pb2.Service,
}
SUFFIXES = (".yaml", ".yml")

Report = Callable[[str, str], None]  # (field path, message): records one problem


# ---------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class Source:
    file: Path
    index: int  # the document's position in its file, 0-based (empty documents count)

    def __str__(self) -> str:
        return f"{self.file}: document {self.index}"


@dataclass(frozen=True)
class Document:
    kind: str  # one of KINDS
    message: Message
    source: Source


@dataclass(frozen=True)
class Problem:
    file: Path
    document_index: int | None  # None: the problem concerns the whole file
    field_path: str  # e.g. "application.releaseChannels[1].name"; "" for the document
    message: str

    def __str__(self) -> str:
        parts = [str(self.file)]
        if self.document_index is not None:
            parts.append(f"document {self.document_index}")
        if self.field_path:
            parts.append(self.field_path)
        return ": ".join([*parts, self.message])


class ConfigError(InvalidInput):
    """The config files are wrong; `problems` lists every problem found, in file order.
    Fix them and run again — nothing was sent."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
