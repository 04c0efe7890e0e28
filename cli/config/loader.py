"""Reading config files: every file, every document, every problem collected at once."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, resources_pb2
from cli.config.checks import check_duplicates, check_semantics
from cli.config.convert import Converter
from cli.config.documents import ConfigError, Document, KINDS, Problem, Report, SUFFIXES, Source
from cli.config.formats import key_text, type_name, unknown_choice
from cli.config.yamlio import YamlLoader

# ---------------------------------------------------------------------------------------
# Loading


def load(path: Path | str) -> list[Document]:
    """Read one config file, or every *.yaml / *.yml file under a directory (recursively,
    in sorted order, skipping hidden files and directories). Raises `ConfigError` listing
    every problem; returns the documents in file order otherwise."""
    root = Path(path)
    problems: list[Problem] = []
    documents: list[Document] = []
    files = _files(root, problems)
    for file in files:
        documents.extend(_load_file(file, problems))
    check_duplicates(documents, problems)
    if problems:
        raise ConfigError(problems)
    return documents


def loads(text: str, *, file: Path | str = Path("<string>")) -> list[Document]:
    """`load` for text already in memory (stdin, tests, `render` output)."""
    problems: list[Problem] = []
    documents = list(_parse(text, Path(file), problems))
    check_duplicates(documents, problems)
    if problems:
        raise ConfigError(problems)
    return documents


def _files(root: Path, problems: list[Problem]) -> list[Path]:
    try:
        if root.is_file():
            return [root]
        if not root.is_dir():
            problems.append(Problem(root, None, "", "no such file or directory"))
            return []
    except OSError as e:
        problems.append(Problem(root, None, "", f"cannot read: {e.strerror or e}"))
        return []

    def unreadable(e: OSError) -> None:
        problems.append(Problem(Path(e.filename or root), None, "", f"cannot read: {e.strerror or e}"))

    found: list[Path] = []
    for directory, subdirs, names in os.walk(root, onerror=unreadable):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(
            Path(directory, n) for n in names if n.endswith(SUFFIXES) and not n.startswith(".")
        )
    if not found:
        problems.append(Problem(root, None, "", "no *.yaml or *.yml files in this directory"))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _load_file(file: Path, problems: list[Problem]) -> Iterator[Document]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        problems.append(Problem(file, None, "", f"not UTF-8 text ({e.reason} at byte {e.start})"))
        return
    except OSError as e:
        problems.append(Problem(file, None, "", f"cannot read: {e.strerror or e}"))
        return
    yield from _parse(text, file, problems)


def _parse(text: str, file: Path, problems: list[Problem]) -> Iterator[Document]:
    index = 0
    loader: YamlLoader | None = None
    try:
        loader = YamlLoader(text)  # already reads (and may reject) the first characters
        while loader.check_data():
            data = loader.get_data()
            for line, column, key in loader.duplicate_keys:
                problems.append(
                    Problem(file, index, "", f"duplicate key {key!r} at line {line}, column {column}")
                )
            clean = not loader.duplicate_keys
            loader.duplicate_keys = []
            if data is not None:
                document = _document(data, Source(file, index), problems)
                if document is not None and clean:
                    yield document
            index += 1
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = e.problem or e.context or "invalid YAML"
        problems.append(Problem(file, index, "", f"invalid YAML{where}: {what}"))
    except yaml.YAMLError as e:
        problems.append(Problem(file, index, "", f"invalid YAML: {e}"))
    except RecursionError:
        problems.append(Problem(file, index, "", "invalid YAML: nested too deeply"))
    finally:
        if loader is not None:
            loader.dispose()


def _document(data: Any, source: Source, problems: list[Problem]) -> Document | None:
    found: list[Problem] = []

    def report(field_path: str, message: str) -> None:
        found.append(Problem(source.file, source.index, field_path, message))

    kinds = ", ".join(KINDS)
    message: Message | None = None
    if not isinstance(data, dict):
        report("", f"must be a mapping with one kind key ({kinds}), not {type_name(data)}")
    elif not data:
        report("", f"has no kind key; expected one of: {kinds}")
    elif unknown := [k for k in data if k not in KINDS]:
        for key in unknown:
            report(key_text(key), unknown_choice("kind", key, list(KINDS), listing="kinds are"))
    elif len(data) > 1:
        given = ", ".join(data)
        report("", f"has several kind keys ({given}); put each in its own document, separated by ---")
    else:
        ((kind, value),) = data.items()
        message = _build(kind, value, report)
        if message is not None and not found:
            check_semantics(message, report)
    problems.extend(found)
    if message is None or found:
        return None
    return Document(kind, message, source)


def _build(kind: str, value: Any, report: Report) -> Message | None:
    cls = KINDS[kind]
    if value is None:
        report(kind, f"is empty; expected the {kind}'s fields")
        return None
    try:
        converted = Converter(report).message(cls.DESCRIPTOR, value, kind)
    except RecursionError:
        report(kind, "is nested too deeply (or refers to itself through a YAML alias)")
        return None
    if converted is None:
        return None
    try:
        return json_format.ParseDict(converted, cls())
    except (json_format.ParseError, ValueError, TypeError) as e:  # belt and braces
        report(kind, f"invalid: {e}")
        return None


# ---------------------------------------------------------------------------------------
# Requests


def _rank(document: Document) -> int:
    m = document.message
    if isinstance(m, resources_pb2.Resource):
        return 4 if m.scope == resources_pb2.RESOURCE_SCOPE_APPLICATION else 2
    return {"runtime": 0, "registry": 0, "protection": 1, "application": 3, "service": 5}[document.kind]


def to_declarations(documents: Iterable[Document]) -> list[tuple[Document, api_pb2.Declaration]]:
    """The documents as one ApplyDeclarations set, in `to_requests`' order (dependencies
    first, so each declaration can name what the ones before it declare)."""
    out: list[tuple[Document, api_pb2.Declaration]] = []
    for document in sorted(documents, key=_rank):
        declaration = api_pb2.Declaration()
        getattr(declaration, document.kind).CopyFrom(document.message)
        out.append((document, declaration))
    return out


def to_requests(documents: Iterable[Document]) -> list[tuple[Document, Message]]:
    """The API requests that apply `documents`, dependencies first: runtimes and registries, protections,
    infrastructure resources, applications, application resources, services. Within a
    group the order of the files is kept."""
    out: list[tuple[Document, Message]] = []
    for document in sorted(documents, key=_rank):
        m = document.message
        request: Message
        if isinstance(m, resources_pb2.Runtime):
            request = api_pb2.ApplyRuntimeRequest(runtime=m)
        elif isinstance(m, resources_pb2.Protection):
            request = api_pb2.ApplyProtectionRequest(protection=m)
        elif isinstance(m, resources_pb2.Registry):
            request = api_pb2.ApplyRegistryRequest(registry=m)
        elif isinstance(m, resources_pb2.Resource):
            request = api_pb2.LinkResourceRequest(resource=m)
        elif isinstance(m, resources_pb2.Application):
            request = api_pb2.ApplyApplicationRequest(application=m)
        elif isinstance(m, resources_pb2.Service):
            request = api_pb2.ApplyServiceRequest(service=m)
        else:
            raise TypeError(f"not a config resource: {type(m).__name__}")
        out.append((document, request))
    return out
