"""The agent's pure decisions: intents by generation, drift, observation ids, NATS users."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventstore import bus, natsauth
from eventstore.codec import convoy_registry
from eventstore.errors import InvalidInput
from eventstore.types import RecordedEvent
from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.agent import intents, observations, reconcile
from services.agent.intents import Action
from services.agent.runtimes.base import Phase, WorkloadKey, WorkloadStatus

KEY = WorkloadKey("prod", "shop", "web")


def intent(generation: int, *, spec_hash: str = "h1", delete: bool = False, runtime: str = "rt") -> intents.Intent:
    message = events_pb2.IntentIssued(
        intent_id=f"i-{generation}-{spec_hash}",
        target=convergence_pb2.Target(runtime=runtime, namespace="prod"),
        action=convergence_pb2.INTENT_ACTION_DELETE if delete else convergence_pb2.INTENT_ACTION_APPLY,
        spec=convergence_pb2.WorkloadSpec(application="shop", service="web"),
        spec_hash=spec_hash,
        generation=generation,
    )
    return intents.intent_of(message, runtime=runtime)


def test_decide_by_generation() -> None:
    assert intents.decide(None, intent(1)) is Action.APPLY
    assert intents.decide(None, intent(1, delete=True)) is Action.DELETE
    last = intent(2).message
    assert intents.decide(last, intent(2)) is Action.DUPLICATE
    assert intents.decide(last, intent(1)) is Action.STALE
    assert intents.decide(last, intent(1, delete=True)) is Action.STALE
    assert intents.decide(last, intent(2, spec_hash="other")) is Action.CONFLICT
    assert intents.decide(last, intent(3, spec_hash="h3")) is Action.APPLY
    assert intents.decide(last, intent(3, delete=True)) is Action.DELETE
    # A delete is remembered: an older apply redelivered later cannot resurrect the workload.
    assert intents.decide(intent(3, delete=True).message, intent(2)) is Action.STALE


def test_applied_is_immutable_and_tracks_deletes() -> None:
    empty = intents.Applied.empty()
    one = empty.with_intent(intent(1))
    assert empty.last(KEY) is None and one.last(KEY) == intent(1).message
    gone = one.with_intent(intent(2, delete=True))
    assert gone.applied() == {} and gone.last(KEY) is not None
    assert one.without({KEY}).last(KEY) is None


def test_an_intent_for_another_runtime_is_refused() -> None:
    with pytest.raises(InvalidInput):
        intents.intent_of(intent(1).message, runtime="other")


def test_decode_reads_the_relay_envelope() -> None:
    registry = convoy_registry()
    new = registry.encode(intent(1).message, actor="planner")
    recorded = RecordedEvent(
        position=7, stream_id="intent/rt/prod/shop/web", version=1, event_id=new.event_id, type=new.type,
        schema_version=new.schema_version, data=new.data, actor="planner", causation_id=None,
        correlation_id=None, recorded_at=datetime.now(UTC),
    )
    decoded = intents.decode(registry, bus.event_headers(recorded), recorded.data, runtime="rt")
    assert isinstance(decoded, intents.Intent) and decoded.key == KEY and decoded.generation == 1
    with pytest.raises(InvalidInput):
        intents.decode(registry, {}, b"", runtime="rt")


def status(generation: int = 1, spec_hash: str = "h1", *, drifted: bool = False, phase: Phase = Phase.HEALTHY) -> WorkloadStatus:
    return WorkloadStatus(key=KEY, phase=phase, generation=generation, spec_hash=spec_hash, drifted=drifted)


def test_compare_finds_each_kind_of_drift() -> None:
    applied = {KEY: intent(1).message}
    assert reconcile.compare(applied, [status()]) == []
    assert [d.why for d in reconcile.compare(applied, [])] == ["applied, but no longer live"]
    assert "changed outside" in reconcile.compare(applied, [status(drifted=True)])[0].why
    assert "differs" in reconcile.compare(applied, [status(spec_hash="x")])[0].why
    deleted = {KEY: intent(2, delete=True).message}
    assert reconcile.compare(deleted, []) == []
    assert reconcile.compare(deleted, [status()])[0].why == "deleted, but still live"
    assert reconcile.settle(applied, []) == {KEY}
    assert reconcile.settle(applied, [status()]) == set()


def test_observation_ids_are_deterministic() -> None:
    about = observations.Subject(KEY, "i-1", 1, "h1")
    healthy = convergence_pb2.OBSERVATION_KIND_HEALTHY
    a = observations.build("rt", about, healthy, discriminator="1")
    b = observations.build("rt", about, healthy, discriminator="1")
    assert a.observation_id == b.observation_id
    assert observations.build("rt", about, healthy, discriminator="2").observation_id != a.observation_id
    assert observations.build("rt", about, convergence_pb2.OBSERVATION_KIND_APPLIED).observation_id != a.observation_id
    check = observations.build("rt", about, convergence_pb2.OBSERVATION_KIND_CHECK_PASSED, check_id="c1", discriminator="9")
    assert check.check_id == "c1" and check.observation_id != a.observation_id
    assert len(observations.build("rt", about, healthy, message="x" * 10_000).message) == 4096


def test_agent_permissions_name_only_its_own_subjects() -> None:
    perms = natsauth.agent_permissions("inst", "rt-a")
    stream = bus.events_stream("inst")
    assert set(perms.publish) == {
        "convoy.inst.obs.rt-a.>",
        "convoy.inst.hb.rt-a",
        "convoy.inst.req.rt-a.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.agent-rt-a",
        f"$JS.API.CONSUMER.INFO.{stream}.agent-rt-a",
        f"$JS.ACK.{stream}.agent-rt-a.>",
        "convoy.inst.dlq.agent-rt-a",
        "$KV.CONVOY_AGENT_LEASES_INST.rt-a",
        "$JS.API.DIRECT.GET.KV_CONVOY_AGENT_LEASES_INST.$KV.CONVOY_AGENT_LEASES_INST.rt-a",
    }
    assert perms.subscribe == ("_INBOX_inst_rt-a.>",)
    text = natsauth.render("inst", [natsauth.system("inst", "pw"), natsauth.agent("inst", "rt-a", "$2b$08$abc")])
    assert text.startswith("accounts {") and '"inst-agent-rt-a"' in text and '"$2b$08$abc"' in text
    with pytest.raises(InvalidInput):
        natsauth.agent("inst", "rt-a", "plain-password")
