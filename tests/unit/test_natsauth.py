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
