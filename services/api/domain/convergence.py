"""PauseConvergence and ResumeConvergence: holding a service still, in one channel or all.

A pause with an empty channel holds the service everywhere; a pause with a channel holds
it there. Both are idempotent: pausing what is already paused (including one channel of
a service paused everywhere) records nothing, and so does resuming what runs. Resuming
every channel also lifts per-channel pauses. Resuming a single channel while the service
is paused everywhere is refused, because it would look like it worked and change nothing.
"""

from __future__ import annotations

from schemas.convoy.v1 import api_pb2, events_pb2
from services.api.domain import streams
from services.api.domain.commands import Command, Decision
from services.api.domain.errors import FailedPrecondition, Problems
from services.api.domain.state import State
from services.api.domain.targets import existing_channel, existing_service
from services.api.domain.validation import MAX_REASON, check_text, q


def _validate(state: State, request: api_pb2.PauseConvergenceRequest | api_pb2.ResumeConvergenceRequest) -> None:
    existing_service(state, request.application, request.service)
    problems = Problems()
    check_text(problems, "reason", request.reason, limit=MAX_REASON)
    problems.raise_if_any()
    if request.channel:
        existing_channel(state, request.application, request.channel)


def pause_convergence(state: State, request: api_pb2.PauseConvergenceRequest, command: Command) -> Decision:
    _validate(state, request)
    if state.is_convergence_paused(request.application, request.service, request.channel):
        return Decision.unchanged()
    event = events_pb2.ConvergencePaused(
        application=request.application, service=request.service, channel=request.channel, reason=request.reason
    )
    return Decision.of(streams.service(request.application, request.service), event)


def resume_convergence(state: State, request: api_pb2.ResumeConvergenceRequest, command: Command) -> Decision:
    _validate(state, request)
    app, service = request.application, request.service
    if request.channel:
        if (app, service, "") in state.paused_convergences:
            raise FailedPrecondition(
                f"service {app}/{service} is paused in every channel; resume it with an empty channel "
                f"(every channel), then pause the others again if needed — resuming only {q(request.channel)} "
                "would change nothing"
            )
        if (app, service, request.channel) not in state.paused_convergences:
            return Decision.unchanged()
    elif not any(key[:2] == (app, service) for key in state.paused_convergences):
        return Decision.unchanged()
    event = events_pb2.ConvergenceResumed(
        application=app, service=service, channel=request.channel, reason=request.reason
    )
    return Decision.of(streams.service(app, service), event)
