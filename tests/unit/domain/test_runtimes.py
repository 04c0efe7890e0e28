"""Runtime commands: register/update, label, pause/resume, deregister, credentials."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf import duration_pb2

from eventstore.errors import ConvoyError
from schemas.convoy.v1 import api_pb2, events_pb2, resources_pb2
from services.api.domain import BadCommandContext, FailedPrecondition, InvalidArgument, Minted, NotFound, decide
from tests.unit.domain.builders import MINTED, command, k8s, run, shop

R = resources_pb2


def exec_runtime(name: str = "local", **exec_fields: object) -> api_pb2.ApplyRuntimeRequest:
    return api_pb2.ApplyRuntimeRequest(
        runtime=R.Runtime(name=name, kind=R.RUNTIME_KIND_EXEC, exec=R.ExecRuntimeConfig(**exec_fields))  # type: ignore[arg-type]
    )


def test_register_update_and_reapply() -> None:
    request = exec_runtime(apply=["./apply.sh"], fetch=["./fetch.sh"])
    decision, state = run(shop(), request)
    assert decision.events == (("runtime/local", events_pb2.RuntimeRegistered(runtime=request.runtime)),)
    assert decide(state, command(request)).events == ()
    request.runtime.exec.retries = 3
    decision, state = run(state, request)
    assert decision.events == (("runtime/local", events_pb2.RuntimeUpdated(runtime=request.runtime)),)


def test_label_pause_resume_deregister() -> None:
    state = shop()
    decision, state = run(state, api_pb2.LabelRuntimeRequest(name="eu-1", labels={"region": "eu", "tier": "gold"}))
    assert decision.events == (
        ("runtime/eu-1", events_pb2.RuntimeLabelled(name="eu-1", labels={"region": "eu", "tier": "gold"})),
    )
    assert dict(state.runtimes["eu-1"].runtime.labels) == {"region": "eu", "tier": "gold"}
    assert not decide(state, command(api_pb2.LabelRuntimeRequest(name="eu-1", labels={"tier": "gold", "region": "eu"}))).changed

    pause = api_pb2.PauseRuntimeRequest(name="eu-1", reason="kernel upgrade")
    decision, state = run(state, pause)
    assert decision.events == (("runtime/eu-1", events_pb2.RuntimePaused(name="eu-1", reason="kernel upgrade")),)
    assert state.runtimes["eu-1"].paused and state.runtimes["eu-1"].pause_reason == "kernel upgrade"
    assert decide(state, command(pause)).events == ()  # pausing a paused runtime is a no-op

    resume = api_pb2.ResumeRuntimeRequest(name="eu-1", reason="done")
    decision, state = run(state, resume)
    assert decision.events == (("runtime/eu-1", events_pb2.RuntimeResumed(name="eu-1", reason="done")),)
    assert decide(state, command(resume)).events == ()

    _, state = run(state, k8s("spare"))
    decision, state = run(state, api_pb2.DeregisterRuntimeRequest(name="spare"))
    assert decision.events == (("runtime/spare", events_pb2.RuntimeDeregistered(name="spare")),)
    assert "spare" not in state.runtimes


def test_agent_credentials_rotate_and_never_record_the_secret() -> None:
    state = shop()
    request = api_pb2.IssueAgentCredentialRequest(runtime="eu-1")
    decision, state = run(state, request)
    digest = hashlib.sha256(MINTED.credential_secret.encode()).hexdigest()
    assert decision.events == (
        ("runtime/eu-1", events_pb2.AgentCredentialIssued(runtime="eu-1", credential_id="cred-1", secret_sha256=digest, generation=1)),
    )
    assert decision.response == api_pb2.AgentCredential(
        runtime="eu-1", credential_id="cred-1", secret=MINTED.credential_secret, generation=1
    )
    rotated = Minted(credential_id="cred-2", credential_secret="another-secret-value-2")
    decision, state = run(state, request, minted=rotated)
    assert decision.events[0].event.generation == 2  # type: ignore[attr-defined]
    assert state.runtimes["eu-1"].credential_generation == 2
    assert state.runtimes["eu-1"].credential_id == "cred-2"
    assert rotated.credential_secret.encode() not in decision.events[0].event.SerializeToString()


INVALID: list[tuple[str, object, str]] = [
    ("missing", api_pb2.ApplyRuntimeRequest(), "runtime: required: the complete runtime declaration"),
    ("no kind", api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(name="x")),
     "runtime.kind: a runtime kind is required: one of RUNTIME_KIND_KUBERNETES, RUNTIME_KIND_EXEC"),
    ("unknown kind", api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(name="x", kind=5)),  # type: ignore[arg-type]
     "runtime.kind: 5 is not a known runtime kind: use one of RUNTIME_KIND_KUBERNETES, RUNTIME_KIND_EXEC"),
    ("exec without config", api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(name="x", kind=R.RUNTIME_KIND_EXEC)),
     "runtime.exec: an exec runtime needs its commands: set exec.apply (and fetch, delete)"),
    ("exec without apply", exec_runtime(fetch=["./fetch.sh"]),
     'runtime.exec.apply: a command is required (an argv list, e.g. ["./deploy.sh", "--apply"])'),
    ("exec negative values", exec_runtime(apply=["a"], retries=-1, timeout=duration_pb2.Duration(seconds=-1)),
     "runtime.exec.timeout: must not be negative; runtime.exec.retries: must be 0 or more"),
    ("kubernetes with exec", api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(
        name="x", kind=R.RUNTIME_KIND_KUBERNETES, exec=R.ExecRuntimeConfig(apply=["a"]))),
     "runtime.exec: only RUNTIME_KIND_EXEC runtimes take exec commands; remove it or change kind"),
    ("bad name", api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(name="eu_1", kind=R.RUNTIME_KIND_KUBERNETES)),
     "runtime.name: \"eu_1\" is not a valid runtime name: use lower-case letters, digits and '-', start and end with a letter or digit, at most 63 characters"),
    ("bad labels", api_pb2.LabelRuntimeRequest(name="eu-1", labels={"a b": "c"}),
     'labels["a b"]: label key "a b" is invalid: the name part must be at most 63 characters of letters, digits, \'-\', \'_\' or \'.\', starting and ending with a letter or digit'),
    ("pause reason too long", api_pb2.PauseRuntimeRequest(name="eu-1", reason="r" * 1025),
     "reason: is 1025 characters; the limit is 1024"),
]


@pytest.mark.parametrize(("request_", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(request_: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decide(shop(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message


REFUSED: list[tuple[str, object, type[ConvoyError], str]] = [
    ("label unknown", api_pb2.LabelRuntimeRequest(name="mars"), NotFound, 'runtime "mars" is not registered'),
    ("pause unknown", api_pb2.PauseRuntimeRequest(name="mars"), NotFound, 'runtime "mars" is not registered'),
    ("resume unknown", api_pb2.ResumeRuntimeRequest(name="mars"), NotFound, 'runtime "mars" is not registered'),
    ("deregister unknown", api_pb2.DeregisterRuntimeRequest(name="mars"), NotFound, 'runtime "mars" is not registered'),
    ("credential unknown", api_pb2.IssueAgentCredentialRequest(runtime="mars"), NotFound, 'runtime "mars" is not registered'),
    ("deregister bound", api_pb2.DeregisterRuntimeRequest(name="us-1"), FailedPrecondition,
     'runtime "us-1" is still bound by release channels (billing/prod, shop/prod); remove those bindings (ApplyApplication) first'),
]


@pytest.mark.parametrize(("request_", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(request_: object, error: type[ConvoyError], message: str) -> None:
    with pytest.raises(error) as caught:
        decide(shop(), command(request_))  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_credentials_need_minted_values() -> None:
    with pytest.raises(BadCommandContext, match="Minted.credential_id"):
        decide(shop(), command(api_pb2.IssueAgentCredentialRequest(runtime="eu-1"), minted=Minted()))
    with pytest.raises(BadCommandContext, match="at least 16"):
        decide(shop(), command(api_pb2.IssueAgentCredentialRequest(runtime="eu-1"),
                               minted=Minted(credential_id="c", credential_secret="short")))
