"""`decide(state, command) -> Decision`: the one entry point for every API command.

The API shell loads the catalog, calls `decide`, appends the returned events with their
streams, and answers with the positions (plus `Decision.response` where the method
returns more than a `WriteResult`). `decide` does no I/O, reads no clock and draws no
random numbers, so the same state and command always give the same decision; it raises
only the typed errors of `services.api.domain.errors`, and a refused command yields no
events at all.

Role checks are not made here: the API enforces each method's `min_role` option before
calling. The command's actor must be set, because approvals and rejections are recorded
under it. `HANDLERS` lists the request types that are commands: one request type per
RPC, so the request alone says what to do.

ApplyDeclarations (a whole config set, what `convoy apply -f DIR` sends) is no rule of
its own but a fold of `decide` over its declarations: each becomes the single-document
request it stands for (`DECLARED`) and is decided against the catalog as the
declarations before it left it, so a service may name an application or a resource
declared earlier in the same set. The first refusal refuses the set, naming the
declaration (index, kind, name) and the field; otherwise every declaration's events
form one decision, which the shell records in one commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import Message

from eventstore.types import MAX_EVENT_BYTES
from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.domain import (
    applications,
    approvals,
    bypass,
    convergence,
    protections,
    registries,
    releases,
    resources,
    runtimes,
    secrets,
    services,
    tokens,
)
from services.api.domain.commands import Command, Decision, StreamEvent
from services.api.domain.errors import (
    AlreadyExists,
    BadCommandContext,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Problems,
    Violation,
)
from services.api.domain.folding import fold
from services.api.domain.state import State
from services.api.domain.validation import check_characters, q

Handler = Callable[[State, Any, Command], Decision]


# -- a set of declarations: a fold of decide ------------------------------------------

MAX_DECLARATIONS: Final = 1000
MAX_DECLARATIONS_BYTES: Final = 2 * 1024 * 1024
"""The most declarations, and encoded bytes, one ApplyDeclarations takes: a set is
decided with no pause for other commands and recorded in one transaction."""

DECLARED: Final[dict[str, type[Message]]] = {
    "application": api_pb2.ApplyApplicationRequest,
    "service": api_pb2.ApplyServiceRequest,
    "runtime": api_pb2.ApplyRuntimeRequest,
    "protection": api_pb2.ApplyProtectionRequest,
    "resource": api_pb2.LinkResourceRequest,
    "registry": api_pb2.ApplyRegistryRequest,
}
"""Each `Declaration` kind and the single-document command it stands for; the request
holds the declaration in its field of the kind's name."""

_REFUSALS: Final = (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, PermissionDenied)
_APP_SCOPE: Final = resources_pb2.RESOURCE_SCOPE_APPLICATION


def declared_request(declaration: api_pb2.Declaration) -> Message | None:
    """The single-document request a declaration stands for (None: it declares nothing)."""
    kind = declaration.WhichOneof("kind")
    if kind is None:
        return None
    request = DECLARED[kind]()
    getattr(request, kind).CopyFrom(getattr(declaration, kind))
    return request


def declaration_label(declaration: api_pb2.Declaration) -> tuple[str, str]:
    """(kind, name); the name is "<application>/<name>" for a service or an application's
    resource. ("", "") when it declares nothing."""
    kind = declaration.WhichOneof("kind")
    if kind is None:
        return "", ""
    m = getattr(declaration, kind)
    if kind == "service" or (kind == "resource" and m.scope == _APP_SCOPE):
        return kind, f"{m.application}/{m.name}"
    return kind, str(m.name)


def _identity(kind: str, m: Any) -> tuple[object, ...]:
    """What makes two declarations the same object (the key the catalog holds it by)."""
    if kind == "service":
        return (kind, m.application, m.name)
    if kind == "resource":
        return (kind, m.scope, m.application, m.name)
    return (kind, m.name)


def _recorded(state: State, kind: str, m: Any) -> bool:
    """Whether the catalog holds the declared object already (created vs updated)."""
    if kind == "application":
        return m.name in state.applications
    if kind == "service":
        return (m.application, m.name) in state.services
    if kind == "runtime":
        return m.name in state.runtimes
    if kind == "protection":
        return m.name in state.protections
    if kind == "registry":
        return m.name in state.registries
    return (m.scope, m.application, m.name) in state.resources


def _at(index: int, declaration: api_pb2.Declaration, refused: Exception) -> Exception:
    """The refusal of one declaration as the refusal of the set: the same kind of error,
    naming the declaration; field paths become paths in the set's request."""
    kind, name = declaration_label(declaration)
    where, what = f"declarations[{index}]", f"{kind} {q(name)}"
    if isinstance(refused, InvalidArgument):
        return InvalidArgument(
            Violation(f"{where}.{v.field}" if v.field else where, f"{what}: {v.description}")
            for v in refused.violations
        )
    return type(refused)(f"{where} ({what}): {refused}")


def _check_set(request: api_pb2.ApplyDeclarationsRequest) -> None:
    declarations = request.declarations
    if not declarations:
        raise InvalidArgument.at(
            "declarations", f"is empty: send at least one declaration ({', '.join(DECLARED)})"
        )
    if len(declarations) > MAX_DECLARATIONS:
        raise InvalidArgument.at(
            "declarations",
            f"holds {len(declarations)} declarations; the limit is {MAX_DECLARATIONS}: split the set "
            "(each part applies on its own, all or nothing)",
        )
    size = request.ByteSize()
    if size > MAX_DECLARATIONS_BYTES:
        raise InvalidArgument.at(
            "declarations",
            f"is {size} bytes; the limit is {MAX_DECLARATIONS_BYTES}: split the set (each part applies on "
            "its own, all or nothing)",
        )
    # One object declared twice is a mistake in the set (which one is meant?), and it would
    # put one stream twice into the set's commit; each declaration's events go to its own.
    first: dict[tuple[object, ...], int] = {}
    for i, declaration in enumerate(declarations):
        kind = declaration.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument.at(f"declarations[{i}]", f"declares nothing: set one of {', '.join(DECLARED)}")
        key = _identity(kind, getattr(declaration, kind))
        if key in first:
            kind, name = declaration_label(declaration)
            raise InvalidArgument.at(
                f"declarations[{i}]",
                f"{kind} {q(name)} is declared twice (also declarations[{first[key]}]); keep one",
            )
        first[key] = i


def apply_declarations(state: State, request: api_pb2.ApplyDeclarationsRequest, command: Command) -> Decision:
    """Every declaration decided in order, each on the state the ones before it left."""
    _check_set(request)
    events: list[StreamEvent] = []
    results: list[api_pb2.DeclarationResult] = []
    current = state
    for i, declaration in enumerate(request.declarations):
        kind = declaration.WhichOneof("kind")
        single = declared_request(declaration)
        assert kind is not None and single is not None  # _check_set refused empty declarations
        existed = _recorded(current, kind, getattr(declaration, kind))
        try:
            decision = decide(current, dataclasses.replace(command, request=single))
        except _REFUSALS as refused:
            raise _at(i, declaration, refused) from None
        current = fold(current, decision.events)
        events.extend(decision.events)
        _, name = declaration_label(declaration)
        if not decision.changed:
            outcome = api_pb2.DECLARATION_OUTCOME_UNCHANGED
        else:
            outcome = api_pb2.DECLARATION_OUTCOME_UPDATED if existed else api_pb2.DECLARATION_OUTCOME_CREATED
        results.append(api_pb2.DeclarationResult(index=i, kind=kind, name=name, outcome=outcome))
    return Decision(tuple(events), api_pb2.ApplyDeclarationsResponse(results=results))


# -- every command ---------------------------------------------------------------------


HANDLERS: Final[dict[type[Message], Handler]] = {
    api_pb2.ApplyApplicationRequest: applications.apply_application,
    api_pb2.DeleteApplicationRequest: applications.delete_application,
    api_pb2.ApplyServiceRequest: services.apply_service,
    api_pb2.DeleteServiceRequest: services.delete_service,
    api_pb2.ApplyRuntimeRequest: runtimes.apply_runtime,
    api_pb2.LabelRuntimeRequest: runtimes.label_runtime,
    api_pb2.PauseRuntimeRequest: runtimes.pause_runtime,
    api_pb2.ResumeRuntimeRequest: runtimes.resume_runtime,
    api_pb2.DeregisterRuntimeRequest: runtimes.deregister_runtime,
    api_pb2.IssueAgentCredentialRequest: runtimes.issue_agent_credential,
    api_pb2.ApplyProtectionRequest: protections.apply_protection,
    api_pb2.DeleteProtectionRequest: protections.delete_protection,
    api_pb2.LinkResourceRequest: resources.link_resource,
    api_pb2.UnlinkResourceRequest: resources.unlink_resource,
    api_pb2.ApplyRegistryRequest: registries.apply_registry,
    api_pb2.DeleteRegistryRequest: registries.delete_registry,
    api_pb2.DeployRequest: releases.deploy,
    api_pb2.RollbackRequest: releases.rollback,
    api_pb2.ApproveRequest: approvals.approve,
    api_pb2.RejectRequest: approvals.reject,
    api_pb2.BypassRequest: bypass.bypass,
    api_pb2.CreateTokenRequest: tokens.create_token,
    api_pb2.RevokeTokenRequest: tokens.revoke_token,
    api_pb2.PauseConvergenceRequest: convergence.pause_convergence,
    api_pb2.ResumeConvergenceRequest: convergence.resume_convergence,
    api_pb2.ApplyDeclarationsRequest: apply_declarations,
    api_pb2.SetSecretRequest: secrets.set_secret,
    api_pb2.DeleteSecretRequest: secrets.delete_secret,
    api_pb2.RotateSecretKeyRequest: secrets.rotate_secret_key,
}


def decide(state: State, command: Command) -> Decision:
    """What `command` changes in `state`: the events to append and the answer."""
    if not isinstance(command.actor, str) or not 0 < len(command.actor) <= 200:
        raise BadCommandContext("Command.actor must be the caller's identity (1-200 characters)")
    request = command.request
    handler = HANDLERS.get(type(request))
    if handler is None:
        name = request.DESCRIPTOR.full_name if isinstance(request, Message) else type(request).__name__
        raise BadCommandContext(f"{name} is not a command `decide` handles (reads go to projections)")
    problems = Problems()
    if not check_characters(problems, request):
        problems.raise_if_any()
    decision = handler(state, request, command)
    for _, event in decision.events:
        size = event.ByteSize()
        if size > MAX_EVENT_BYTES:
            raise InvalidArgument.at(
                "",
                f"the request is too large to record ({size} bytes as {event.DESCRIPTOR.name}; the limit is "
                f"{MAX_EVENT_BYTES}); split it or move bulky content out of the declaration",
            )
    return decision

