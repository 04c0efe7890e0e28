"""The pure rules of eventstore.natsauth: which request subject names which runtime, and
which reply subjects the control plane may answer a runtime's agent on."""

from __future__ import annotations

import pytest

from eventstore import natsauth


@pytest.mark.parametrize(
    ("subject", "runtime"),
    [
        ("convoy.inst.req.rt-a.desired", "rt-a"),
        ("convoy.inst.req.rt~2Ea.desired", "rt.a"),  # the canonical encoding of a dotted name
        ("convoy.inst.req.rt-a.desired.more", None),  # nothing after `.desired`
        ("convoy.inst.req.rt~2Da.desired", None),  # another spelling of rt-a is not rt-a
        ("convoy.other.req.rt-a.desired", None),
        ("convoy.inst.req.rt-a.plan", None),
        ("convoy.inst.req.~.desired", None),
        ("convoy.inst.req.~Habc.desired", None),
    ],
)
def test_a_desired_subject_names_one_runtime_exactly(subject: str, runtime: str | None) -> None:
    assert natsauth.runtime_of_desired("inst", subject) == runtime
    if runtime is not None:
        assert natsauth.desired_subject("inst", runtime) == subject


@pytest.mark.parametrize(
    ("subject", "runtime"),
    [
        ("convoy.inst.req.rt-a.secret", "rt-a"),
        ("convoy.inst.req.rt~2Ea.secret", "rt.a"),
        ("convoy.inst.req.rt-a.secret.more", None),
        ("convoy.inst.req.rt~2Da.secret", None),
        ("convoy.other.req.rt-a.secret", None),
        ("convoy.inst.req.rt-a.desired", None),  # a desired-state request is not a secret request
    ],
)
def test_a_secret_subject_names_one_runtime_exactly(subject: str, runtime: str | None) -> None:
    assert natsauth.runtime_of_secret("inst", subject) == runtime
    if runtime is not None:
        assert natsauth.secret_subject("inst", runtime) == subject
        # inside what the runtime's agent may publish on (and nobody else's)
        assert f"convoy.inst.req.{subject.split('.')[3]}.>" in natsauth.agent_permissions("inst", runtime).publish


@pytest.mark.parametrize(
    ("reply", "allowed"),
    [
        ("_INBOX_inst_rt-a.Abc123", True),
        ("_INBOX_inst_rt-a.Abc123.7", True),
        ("_INBOX_inst_rt-a", False),
        ("_INBOX_inst_rt-a.", False),
        ("_INBOX_inst_rt-ab.Abc123", False),  # another runtime whose name starts the same
        ("_INBOX_inst_rt-b.Abc123", False),
        ("_INBOX_inst_rt-a.*", False),
        ("_INBOX_inst_rt-a.>", False),
        ("_INBOX.Abc123", False),  # the control plane's own inboxes are not the agent's
        ("convoy.inst.evt.intent.rt-b.x", False),
        ("convoy.inst.evt.intent.rt-a.x", False),  # not even its own intents: only its inbox
        ("$JS.API.STREAM.PURGE.CONVOY_EVENTS_INST", False),
    ],
)
def test_only_the_asking_runtimes_inbox_is_its_reply(reply: str, allowed: bool) -> None:
    assert natsauth.reply_belongs_to("inst", "rt-a", reply) is allowed


def test_each_agent_has_an_account_that_imports_only_its_own_subjects() -> None:
    users = [natsauth.system("inst", "pw"), natsauth.agent("inst", "rt-a", "$2b$08$a"), natsauth.agent("inst", "rt.b", "$2b$08$b")]
    text = natsauth.render("inst", users)
    control, a, b = "CONVOY_INST", natsauth.agent_account("inst", "rt-a"), natsauth.agent_account("inst", "rt.b")
    assert (a, b) == ("CONVOY_INST/agent/rt-a", "CONVOY_INST/agent/rt~2Eb")
    assert natsauth.agent_account("inst-agent", "x") != natsauth.agent_account("inst", "agent-x")
    blocks = text.split("\n  \"")
    control_block = next(b_ for b_ in blocks if b_.startswith(f'{control}"') or f'"{control}": {{' in b_)
    assert "jetstream: enabled" in control_block and '"convoy-inst"' in control_block
    a_block = next(b_ for b_ in blocks if b_.startswith(f'{a}"'))
    assert '"inst-agent-rt-a"' in a_block and "rt~2Eb" not in a_block and "inst-agent-rt.b" not in a_block
    for subject, _ in natsauth.agent_imports("inst", "rt-a"):
        assert f'subject: "{subject}"' in a_block
        # exported to A's account alone (the JetStream info import only shadows a JetStream of its own)
        if subject != natsauth.JS_API_INFO:
            assert f'{{service: "{subject}", accounts: ["{a}"]' in control_block
    assert natsauth.JS_API_INFO not in natsauth.agent_permissions("inst", "rt-a").publish
