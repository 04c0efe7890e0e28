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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import Message

from eventstore.types import MAX_EVENT_BYTES
from schemas.convoy.v1 import api_pb2
from services.api.domain import (
    applications,
    approvals,
    bypass,
    convergence,
    protections,
    releases,
    resources,
    runtimes,
    services,
    tokens,
)
from services.api.domain.commands import Command, Decision
from services.api.domain.errors import BadCommandContext, InvalidArgument
from services.api.domain.state import State

Handler = Callable[[State, Any, Command], Decision]

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
    api_pb2.DeployRequest: releases.deploy,
    api_pb2.RollbackRequest: releases.rollback,
    api_pb2.ApproveRequest: approvals.approve,
    api_pb2.RejectRequest: approvals.reject,
    api_pb2.BypassRequest: bypass.bypass,
    api_pb2.CreateTokenRequest: tokens.create_token,
    api_pb2.RevokeTokenRequest: tokens.revoke_token,
    api_pb2.PauseConvergenceRequest: convergence.pause_convergence,
    api_pb2.ResumeConvergenceRequest: convergence.resume_convergence,
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
