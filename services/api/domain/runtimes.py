"""Runtime commands: register/update, label, pause, resume, deregister, agent credentials.

Runtimes are infrastructure: every application may bind channels to them, so a runtime
that a channel still binds cannot be deregistered. Pausing and resuming are idempotent
(a second pause records nothing). Issuing an agent credential rotates it: the
generation goes up by one and older credentials stop working; the secret, minted by the
shell, is returned once and only its SHA-256 is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import streams
from services.api.domain.commands import MIN_SECRET_LENGTH, Command, Decision, clean, sha256_hex
from services.api.domain.errors import BadCommandContext, FailedPrecondition, InvalidArgument, NotFound, Problems
from services.api.domain.state import RuntimeRecord, State
from services.api.domain.validation import (
    MAX_REASON,
    check_argv,
    check_duration,
    check_enum,
    check_labels,
    check_name,
    check_text,
    q,
)

KINDS: Final[Mapping[int, str]] = {
    resources_pb2.RUNTIME_KIND_KUBERNETES: "RUNTIME_KIND_KUBERNETES",
    resources_pb2.RUNTIME_KIND_EXEC: "RUNTIME_KIND_EXEC",
}


def apply_runtime(state: State, request: api_pb2.ApplyRuntimeRequest, command: Command) -> Decision:
    if not request.HasField("runtime"):
        raise InvalidArgument.at("runtime", "required: the complete runtime declaration")
    runtime = clean(request.runtime)
    problems = Problems()
    check_name(problems, "runtime.name", runtime.name, what="runtime name")
    check_enum(problems, "runtime.kind", runtime.kind, KINDS, required=True, what="runtime kind")
    check_labels(problems, "runtime.labels", runtime.labels)
    if runtime.kind == resources_pb2.RUNTIME_KIND_EXEC:
        if not runtime.HasField("exec"):
            problems.add("runtime.exec", "an exec runtime needs its commands: set exec.apply (and fetch, delete)")
        else:
            check_argv(problems, "runtime.exec.apply", runtime.exec.apply, required=True)
            check_argv(problems, "runtime.exec.fetch", runtime.exec.fetch, required=False)
            check_argv(problems, "runtime.exec.delete", runtime.exec.delete, required=False)
            check_duration(problems, "runtime.exec", runtime.exec, "timeout")
            if runtime.exec.retries < 0:
                problems.add("runtime.exec.retries", "must be 0 or more")
    elif runtime.HasField("exec") and runtime.kind in KINDS:
        problems.add("runtime.exec", "only RUNTIME_KIND_EXEC runtimes take exec commands; remove it or change kind")
    problems.raise_if_any()

    existing = state.runtimes.get(runtime.name)
    if existing is not None and existing.runtime == runtime:
        return Decision.unchanged()
    event = (
        events_pb2.RuntimeRegistered(runtime=runtime)
        if existing is None
        else events_pb2.RuntimeUpdated(runtime=runtime)
    )
    return Decision.of(streams.runtime(runtime.name), event)


def _existing(state: State, field: str, name: str) -> RuntimeRecord:
    problems = Problems()
    check_name(problems, field, name, what="runtime name")
    problems.raise_if_any()
    record = state.runtimes.get(name)
    if record is None:
        raise NotFound(f"runtime {q(name)} is not registered")
    return record


def label_runtime(state: State, request: api_pb2.LabelRuntimeRequest, command: Command) -> Decision:
    record = _existing(state, "name", request.name)
    problems = Problems()
    check_labels(problems, "labels", request.labels)
    problems.raise_if_any()
    if dict(record.runtime.labels) == dict(request.labels):
        return Decision.unchanged()
    event = events_pb2.RuntimeLabelled(name=request.name, labels=dict(request.labels))
    return Decision.of(streams.runtime(request.name), event)


def pause_runtime(state: State, request: api_pb2.PauseRuntimeRequest, command: Command) -> Decision:
    record = _existing(state, "name", request.name)
    problems = Problems()
    check_text(problems, "reason", request.reason, limit=MAX_REASON)
    problems.raise_if_any()
    if record.paused:
        return Decision.unchanged()
    event = events_pb2.RuntimePaused(name=request.name, reason=request.reason)
    return Decision.of(streams.runtime(request.name), event)


def resume_runtime(state: State, request: api_pb2.ResumeRuntimeRequest, command: Command) -> Decision:
    record = _existing(state, "name", request.name)
    problems = Problems()
    check_text(problems, "reason", request.reason, limit=MAX_REASON)
    problems.raise_if_any()
    if not record.paused:
        return Decision.unchanged()
    event = events_pb2.RuntimeResumed(name=request.name, reason=request.reason)
    return Decision.of(streams.runtime(request.name), event)


def deregister_runtime(state: State, request: api_pb2.DeregisterRuntimeRequest, command: Command) -> Decision:
    _existing(state, "name", request.name)
    bound = state.runtime_bindings(request.name)
    if bound:
        where = ", ".join(f"{app}/{channel}" for app, channel in bound)
        raise FailedPrecondition(
            f"runtime {q(request.name)} is still bound by release channels ({where}); remove those "
            "bindings (ApplyApplication) first"
        )
    return Decision.of(streams.runtime(request.name), events_pb2.RuntimeDeregistered(name=request.name))


def issue_agent_credential(
    state: State, request: api_pb2.IssueAgentCredentialRequest, command: Command
) -> Decision:
    record = _existing(state, "runtime", request.runtime)
    minted = command.minted
    if not 0 < len(minted.credential_id) <= 200 or len(minted.credential_secret) < MIN_SECRET_LENGTH:
        raise BadCommandContext(
            "IssueAgentCredential needs Minted.credential_id and a Minted.credential_secret of at least "
            f"{MIN_SECRET_LENGTH} characters (use Minted.fresh())"
        )
    generation = record.credential_generation + 1
    event = events_pb2.AgentCredentialIssued(
        runtime=request.runtime,
        credential_id=minted.credential_id,
        secret_sha256=sha256_hex(minted.credential_secret),
        generation=generation,
        nats_password_bcrypt=minted.credential_bcrypt,
    )
    response = api_pb2.AgentCredential(
        runtime=request.runtime,
        credential_id=minted.credential_id,
        secret=minted.credential_secret,
        generation=generation,
    )
    return Decision.of(streams.runtime(request.runtime), event, response)
