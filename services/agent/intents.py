"""What an agent does with an intent, decided without I/O.

Intents reach an agent at least once and in no guaranteed order across sources (its
durable consumer, a redelivery after a crash, the desired-state snapshot a fresh agent
asks for). So the decision is a pure function of the intent and of what the agent last
applied to that workload: an older generation never overwrites a newer one, the same
intent twice changes nothing, and a delete is remembered with its generation so a late
apply of an older generation cannot bring the workload back.

`decode` turns a relayed bus message (headers + protobuf payload) into an `Intent` or a
`Checks` request; anything else is `InvalidInput`, which the agent acknowledges and logs
(a malformed intent will not get better by being redelivered).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from eventstore import bus
from eventstore.codec import EventRegistry
from eventstore.errors import InvalidInput
from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.agent.runtimes.base import Workload, WorkloadKey

INTENT_TYPE = "convoy.v1.IntentIssued"
CHECKS_TYPE = "convoy.v1.ChecksRequested"


@dataclass(frozen=True, slots=True)
class Intent:
    """One IntentIssued, as the agent uses it."""

    key: WorkloadKey
    message: events_pb2.IntentIssued

    @property
    def intent_id(self) -> str:
        return self.message.intent_id

    @property
    def generation(self) -> int:
        return self.message.generation

    @property
    def spec_hash(self) -> str:
        return self.message.spec_hash

    @property
    def deletes(self) -> bool:
        return self.message.action == convergence_pb2.INTENT_ACTION_DELETE

    @property
    def repair_drift(self) -> bool:
        return self.message.repair_drift

    @property
    def channel(self) -> str:
        return self.message.spec.channel

    def workload(self) -> Workload:
        return Workload(
            key=self.key,
            spec=self.message.spec,
            spec_hash=self.spec_hash,
            generation=self.generation,
            intent_id=self.intent_id,
            channel=self.channel,
        )


@dataclass(frozen=True, slots=True)
class Checks:
    """One ChecksRequested: the checks to run for a target from now on."""

    key: WorkloadKey
    message: events_pb2.ChecksRequested


def key_of(intent: events_pb2.IntentIssued) -> WorkloadKey:
    return WorkloadKey(
        namespace=intent.target.namespace, application=intent.spec.application, service=intent.spec.service
    )


def decode(registry: EventRegistry, headers: Mapping[str, str] | None, data: bytes, *, runtime: str) -> Intent | Checks:
    """The intent or checks request a relayed message carries, for `runtime`'s agent."""
    recorded = bus.event_from_message(headers, data)
    if recorded.type not in (INTENT_TYPE, CHECKS_TYPE):
        raise InvalidInput(f"{recorded.type} (position {recorded.position}) is not an intent or checks request")
    message = registry.decode(recorded).message
    if isinstance(message, events_pb2.IntentIssued):
        return intent_of(message, runtime=runtime)
    assert isinstance(message, events_pb2.ChecksRequested)
    if message.target.runtime != runtime:
        raise InvalidInput(f"checks for runtime {message.target.runtime!r} reached the agent of {runtime!r}")
    key = WorkloadKey(namespace=message.target.namespace, application=message.application, service=message.service)
    _check_key(key, "checks request")
    return Checks(key=key, message=message)


def intent_of(message: events_pb2.IntentIssued, *, runtime: str) -> Intent:
    """Validate an IntentIssued for `runtime`'s agent."""
    if message.target.runtime != runtime:
        raise InvalidInput(
            f"intent {message.intent_id} is for runtime {message.target.runtime!r}, not {runtime!r}"
        )
    if message.action not in (convergence_pb2.INTENT_ACTION_APPLY, convergence_pb2.INTENT_ACTION_DELETE):
        raise InvalidInput(f"intent {message.intent_id} has no action")
    if not message.intent_id or message.generation < 1:
        raise InvalidInput(f"intent {message.intent_id!r} needs an id and a generation >= 1")
    key = key_of(message)
    _check_key(key, f"intent {message.intent_id}")
    return Intent(key=key, message=message)


def _check_key(key: WorkloadKey, what: str) -> None:
    if not (key.namespace and key.application and key.service):
        raise InvalidInput(f"{what} does not name a namespace, application and service ({key})")


class Action(enum.Enum):
    APPLY = "apply"
    """A newer generation (or a first one): apply it."""
    DELETE = "delete"
    """A newer generation that removes the workload."""
    DUPLICATE = "duplicate"
    """Exactly what was last applied: nothing to do."""
    STALE = "stale"
    """Older than what was last applied: drop it."""
    CONFLICT = "conflict"
    """The same generation with another spec: the planner broke its promise; report it."""


def decide(last: events_pb2.IntentIssued | None, intent: Intent) -> Action:
    """What to do with `intent`, given the intent the agent last applied to its workload."""
    if last is not None:
        if intent.generation < last.generation:
            return Action.STALE
        if intent.generation == last.generation:
            same = last.spec_hash == intent.spec_hash and last.action == intent.message.action
            return Action.DUPLICATE if same else Action.CONFLICT
    return Action.DELETE if intent.deletes else Action.APPLY


@dataclass(frozen=True, slots=True)
class Applied:
    """What the agent last did per workload: the intents it applied (or deleted with),
    and the checks it was asked to run. Immutable; `with_intent`/`with_checks` return a
    new one."""

    intents: Mapping[WorkloadKey, events_pb2.IntentIssued]
    checks: Mapping[WorkloadKey, events_pb2.ChecksRequested]

    @classmethod
    def empty(cls) -> Applied:
        return cls({}, {})

    def last(self, key: WorkloadKey) -> events_pb2.IntentIssued | None:
        return self.intents.get(key)

    def with_intent(self, intent: Intent) -> Applied:
        return Applied({**self.intents, intent.key: intent.message}, self.checks)

    def without(self, keys: set[WorkloadKey]) -> Applied:
        return Applied({k: v for k, v in self.intents.items() if k not in keys}, self.checks)

    def with_checks(self, checks: Checks) -> Applied:
        if not checks.message.checks:
            return Applied(self.intents, {k: v for k, v in self.checks.items() if k != checks.key})
        return Applied(self.intents, {**self.checks, checks.key: checks.message})

    def applied(self) -> dict[WorkloadKey, events_pb2.IntentIssued]:
        """The workloads that should be live (their last intent applies them)."""
        return {k: v for k, v in self.intents.items() if v.action == convergence_pb2.INTENT_ACTION_APPLY}
