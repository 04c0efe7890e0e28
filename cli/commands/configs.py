"""`convoy apply`, `delete`, `validate` and `diff`: config files against the API.

All four read files through `cli.config.load`, so a broken file is reported the same way
by each (every problem, with file, document and field) and nothing is sent; files that
hold no document at all are refused the same way (exit 2), since applying, validating or
deleting nothing is almost always a wrong path. `apply` sends the whole set in one
ApplyDeclarations request: the API decides the documents in order and records all of
them in one transaction, or none when it refuses one (the refusal names the document,
which is mapped back to its file here). Whether a document was created, updated or left
unchanged is the server's answer, so applying the same files twice reports every
document unchanged and records no event. `delete` stays one request per object.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from google.protobuf.message import Message

from cli import config
from cli.client import INVALID, NOT_FOUND, CliError, Client
from cli.commands.common import CaFileOpt, EndpointOpt, OutputOpt, TokenOpt, YesOpt, confirm, connect, reports_errors
from cli.output import Format, table
from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.domain.decider import MAX_DECLARATIONS, MAX_DECLARATIONS_BYTES

FileOpt = Annotated[
    Path,
    typer.Option("--filename", "-f", help="A config file, or a directory of *.yaml / *.yml files.", show_default=False),
]


def load(path: Path) -> list[config.Document]:
    """The documents under `path`; CliError (exit 2) for any problem, or for none at all."""
    try:
        documents = config.load(path)
    except config.ConfigError as e:
        for problem in e.problems:
            typer.echo(f"error: {problem}", err=True)
        noun = "problem" if len(e.problems) == 1 else "problems"
        raise CliError(f"{len(e.problems)} {noun} in {path}; nothing was sent", INVALID) from None
    if not documents:
        what = "its files are empty or hold" if path.is_dir() else "the file is empty or holds"
        raise CliError(f"no documents in {path}: {what} only comments (check the path); nothing was sent", INVALID)
    return documents


def name_of(document: config.Document) -> str:
    m = document.message
    if isinstance(m, (resources_pb2.Service,)) or (isinstance(m, resources_pb2.Resource) and m.application):
        return f"{m.application}/{m.name}"
    return str(getattr(m, "name"))


def current(client: Client, document: config.Document) -> Message | None:
    """The object as the API holds it now (None: it does not exist)."""
    m = document.message
    try:
        if isinstance(m, resources_pb2.Application):
            return client.call(client.applications.GetApplication, api_pb2.GetApplicationRequest(name=m.name))
        if isinstance(m, resources_pb2.Service):
            return client.call(
                client.services.GetService, api_pb2.GetServiceRequest(application=m.application, name=m.name)
            )
        if isinstance(m, resources_pb2.Runtime):
            state = client.call(client.runtimes.GetRuntime, api_pb2.GetRuntimeRequest(name=m.name))
            return state.runtime
    except CliError as e:
        if e.exit_code == NOT_FOUND:
            return None
        raise
    if isinstance(m, resources_pb2.Protection):
        protections = client.pages(
            client.protections.ListProtections, api_pb2.ListProtectionsRequest(), "protections"
        )
        return next((p for p in protections if p.name == m.name), None)
    if isinstance(m, resources_pb2.Registry):
        registries = client.pages(client.registries.ListRegistries, api_pb2.ListRegistriesRequest(), "registries")
        return next((r for r in registries if r.name == m.name), None)
    if isinstance(m, resources_pb2.Resource):
        application = m.application if m.scope == resources_pb2.RESOURCE_SCOPE_APPLICATION else ""
        try:
            resources = client.pages(
                client.resources.ListResources, api_pb2.ListResourcesRequest(application=application), "resources"
            )
        except CliError as e:
            if e.exit_code == NOT_FOUND:  # the application does not exist yet
                return None
            raise
        return next((r for r in resources if r.name == m.name and r.scope == m.scope), None)
    raise TypeError(f"not a config resource: {type(m).__name__}")


# The API method for each request `apply` and `delete` send.
_METHODS: dict[type[Message], Callable[[Client], Any]] = {
    api_pb2.ApplyRuntimeRequest: lambda c: c.runtimes.ApplyRuntime,
    api_pb2.ApplyProtectionRequest: lambda c: c.protections.ApplyProtection,
    api_pb2.ApplyRegistryRequest: lambda c: c.registries.ApplyRegistry,
    api_pb2.DeleteRegistryRequest: lambda c: c.registries.DeleteRegistry,
    api_pb2.LinkResourceRequest: lambda c: c.resources.LinkResource,
    api_pb2.ApplyApplicationRequest: lambda c: c.applications.ApplyApplication,
    api_pb2.ApplyServiceRequest: lambda c: c.services.ApplyService,
    api_pb2.DeregisterRuntimeRequest: lambda c: c.runtimes.DeregisterRuntime,
    api_pb2.DeleteProtectionRequest: lambda c: c.protections.DeleteProtection,
    api_pb2.UnlinkResourceRequest: lambda c: c.resources.UnlinkResource,
    api_pb2.DeleteApplicationRequest: lambda c: c.applications.DeleteApplication,
    api_pb2.DeleteServiceRequest: lambda c: c.services.DeleteService,
}


def send(client: Client, request: Message) -> api_pb2.WriteResult:
    method = _METHODS.get(type(request))
    if method is None:
        raise TypeError(f"not an apply or delete request: {type(request).__name__}")
    return client.write(method(client), request)


def undo(request: Message) -> tuple[str, Message]:
    """The request that removes what an apply request declares, and its verb."""
    if isinstance(request, api_pb2.ApplyRuntimeRequest):
        return "deregistered", api_pb2.DeregisterRuntimeRequest(name=request.runtime.name)
    if isinstance(request, api_pb2.ApplyProtectionRequest):
        return "deleted", api_pb2.DeleteProtectionRequest(name=request.protection.name)
    if isinstance(request, api_pb2.ApplyRegistryRequest):
        return "deleted", api_pb2.DeleteRegistryRequest(name=request.registry.name)
    if isinstance(request, api_pb2.LinkResourceRequest):
        r = request.resource
        return "unlinked", api_pb2.UnlinkResourceRequest(name=r.name, scope=r.scope, application=r.application)
    if isinstance(request, api_pb2.ApplyApplicationRequest):
        return "deleted", api_pb2.DeleteApplicationRequest(name=request.application.name)
    if isinstance(request, api_pb2.ApplyServiceRequest):
        s = request.service
        return "deleted", api_pb2.DeleteServiceRequest(application=s.application, name=s.name)
    raise TypeError(f"not an apply request: {type(request).__name__}")


_OUTCOMES: dict[int, str] = {
    api_pb2.DECLARATION_OUTCOME_CREATED: "created",
    api_pb2.DECLARATION_OUTCOME_UPDATED: "updated",
    api_pb2.DECLARATION_OUTCOME_UNCHANGED: "unchanged",
}
_REFUSED_AT = re.compile(r"^declarations\[(\d+)\]")


@reports_errors
def apply(
    filename: FileOpt,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create or update everything in the config files: all documents, or none.

    Sends every document in one request, in dependency order (runtimes, protections,
    resources, applications, then services), so a document may name one declared before
    it. The API records them all in one transaction or, when it refuses one, records
    nothing and the error names its file, document and field. Prints each document as
    created, updated or unchanged.

    Exit 0: applied (or nothing to change); 2: a problem in the files, no documents in
    them, or a document the API refuses as invalid; otherwise the API's answer's code
    (see `convoy --help`), with nothing applied."""
    documents = load(filename)
    ordered = config.to_declarations(documents)
    request = api_pb2.ApplyDeclarationsRequest(declarations=[d for _, d in ordered])
    size = request.ByteSize()
    if len(ordered) > MAX_DECLARATIONS or size > MAX_DECLARATIONS_BYTES:
        raise CliError(
            f"{filename} holds {len(ordered)} documents ({size} bytes); one apply takes at most {MAX_DECLARATIONS} "
            f"documents and {MAX_DECLARATIONS_BYTES} bytes: apply it in parts (each part all or nothing); "
            "nothing was sent",
            INVALID,
        )
    with connect(endpoint, token, ca_file) as client:
        try:
            answer: api_pb2.ApplyDeclarationsResponse = client.write(
                client.declarations.ApplyDeclarations, request
            )
        except CliError as e:
            raise _refused(e, [document for document, _ in ordered]) from None
    results: list[dict[str, object]] = []
    for (document, _), result in zip(ordered, answer.results, strict=True):
        outcome = _OUTCOMES.get(result.outcome, "unchanged")
        results.append(
            {
                "kind": document.kind,
                "name": name_of(document),
                "result": outcome,
                "file": str(document.source.file),
                "document": document.source.index,
                "position": answer.write.position if outcome != "unchanged" else 0,
            }
        )
    _report(results, output)


def _refused(error: CliError, documents: list[config.Document]) -> CliError:
    """The API's refusal of the set, located in the files when it names a document."""
    message = str(error)
    found = _REFUSED_AT.match(message)
    if found is not None and int(found[1]) < len(documents):
        index, document = int(found[1]), documents[int(found[1])]
        # The file, document and name say where; the API's "declarations[N] …" says it again.
        label = f"{document.kind} {json.dumps(name_of(document), ensure_ascii=False)}"
        message = message.replace(f"declarations[{index}] ({label}): ", "")
        message = re.sub(rf"declarations\[{index}\]\.(\S+): {re.escape(label)}: ", r"\1: ", message)
        message = f"{document.source}: {document.kind} {name_of(document)}: {message}"
    return CliError(f"{message}; nothing was applied", error.exit_code)


def _report(results: list[dict[str, object]], output: Format) -> None:
    if output is Format.json:
        typer.echo(json.dumps(results, indent=2))
    elif output is Format.yaml:
        typer.echo(yaml.safe_dump(results, sort_keys=False).rstrip())
    else:
        table(
            ["kind", "name", "result", "source"],
            [[str(r["kind"]), str(r["name"]), str(r["result"]), f"{r['file']}: document {r['document']}"] for r in results],
        )


@reports_errors
def delete(
    filename: FileOpt,
    yes: YesOpt = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Delete everything the config files declare: the inverse of `apply -f`.

    Reads and checks the files as `apply` does, then deletes in the reverse of apply's
    order — services, application resources, applications, infrastructure resources,
    protections, runtimes (deregistered) — and prints one line per object. An object that
    does not exist is reported as not found, which is not an error.

    Not atomic, unlike `apply`: each object is deleted by its own request, so a refusal
    (e.g. an application whose services are not all in the files) stops there and leaves
    the objects deleted before it deleted; fix the cause and run it again. Exit 2 when
    the files have a problem or no documents."""
    documents = load(filename)
    # apply's order, reversed; feeding the documents in reversed keeps file order within a kind.
    removals = [(document, *undo(request)) for document, request in reversed(config.to_requests(reversed(documents)))]
    confirm(f"delete the {len(documents)} object{'' if len(documents) == 1 else 's'} {filename} declares", yes)
    results: list[dict[str, object]] = []
    with connect(endpoint, token, ca_file) as client:
        for document, verb, request in removals:
            try:
                answer = send(client, request)
            except CliError as e:
                if e.exit_code != NOT_FOUND:
                    _report_deleted(results, output)
                    raise CliError(f"{document.source}: {document.kind} {name_of(document)}: {e}", e.exit_code) from None
                verb, position = "not found", 0
            else:
                position = answer.position
            results.append(
                {
                    "kind": document.kind,
                    "name": name_of(document),
                    "result": verb,
                    "file": str(document.source.file),
                    "document": document.source.index,
                    "position": position,
                }
            )
    _report_deleted(results, output)


def _report_deleted(results: list[dict[str, object]], output: Format) -> None:
    if output is Format.table:
        for r in results:
            what = f"{r['kind']} {r['name']}"
            typer.echo(f"not found: {what}" if r["result"] == "not found" else f"{r['result']} {what}")
    else:
        _report(results, output)


@reports_errors
def validate(filename: FileOpt, output: OutputOpt = Format.table) -> None:
    """Check config files without a server (exit 2 on problems).

    Lists every problem with its file, document and field. Files that hold no document
    (empty, or only comments) are a problem too: exit 2, as `apply` would refuse them."""
    documents = load(filename)
    rows = [
        {"kind": d.kind, "name": name_of(d), "file": str(d.source.file), "document": d.source.index} for d in documents
    ]
    if output is Format.json:
        typer.echo(json.dumps(rows, indent=2))
    elif output is Format.yaml:
        typer.echo(yaml.safe_dump(rows, sort_keys=False).rstrip())
    else:
        typer.echo(f"{filename}: {len(documents)} documents OK")


@reports_errors
def diff(
    filename: FileOpt,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show what `apply` would change (exit 0: nothing, 1: something).

    Prints a unified diff of each object as the API holds it and as the files say.
    Compares only; checks that need the server (does a named resource exist?) are made
    by `apply`. Exit 2 when the files have a problem or no documents."""
    documents = load(filename)
    changes: list[dict[str, object]] = []
    with connect(endpoint, token, ca_file) as client:
        for document in documents:
            live = current(client, document)
            before = config.render(live) if live is not None else ""
            after = config.render(document.message)
            if before == after:
                continue
            label = f"{document.kind}/{name_of(document)}"
            lines = difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=f"live: {label}" if live is not None else "live: (does not exist)",
                tofile=f"{document.source}: {label}",
            )
            changes.append(
                {"kind": document.kind, "name": name_of(document), "source": str(document.source),
                 "exists": live is not None, "diff": "".join(lines)}
            )
    if output is Format.json:
        typer.echo(json.dumps(changes, indent=2))
    elif output is Format.yaml:
        typer.echo(yaml.safe_dump(changes, sort_keys=False).rstrip())
    else:
        for change in changes:
            typer.echo(str(change["diff"]), nl=False)
        if not changes:
            typer.echo("no differences")
    if changes:
        raise typer.Exit(1)
