"""Drift: the difference between what the agent applied and what the runtime runs.

Someone edits a Deployment by hand, a process is killed, a cluster is rebuilt: the live
workload no longer matches the last intent the agent applied. The agent compares the two
periodically (`compare`, pure) and reports each difference as DRIFTED; it repairs it
when the intent says `repair_drift`. A workload that vanished altogether counts as
drift too, and so does one still running after a delete intent.

`settle` is the start-up variant: a fresh agent (or one whose cluster was rebuilt) must
not trust its state file for workloads that are no longer live — it forgets them, so the
desired-state snapshot re-applies them instead of being taken for duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.convoy.v1 import convergence_pb2, events_pb2
from services.agent.runtimes.base import Phase, WorkloadKey, WorkloadStatus


@dataclass(frozen=True, slots=True)
class Drift:
    key: WorkloadKey
    intent: events_pb2.IntentIssued
    why: str
    """Human-readable: what differs."""
    status: WorkloadStatus | None


def compare(applied: Mapping[WorkloadKey, events_pb2.IntentIssued], live: Sequence[WorkloadStatus]) -> list[Drift]:
    """Every workload whose live state differs from the intent last applied to it."""
    by_key = {s.key: s for s in live}
    found: list[Drift] = []
    for key, intent in sorted(applied.items()):
        status = by_key.get(key)
        if intent.action == convergence_pb2.INTENT_ACTION_DELETE:
            if status is not None and status.phase is not Phase.ABSENT:
                found.append(Drift(key, intent, "deleted, but still live", status))
            continue
        if status is None or status.phase is Phase.ABSENT:
            found.append(Drift(key, intent, "applied, but no longer live", status))
        elif status.generation != intent.generation or status.spec_hash != intent.spec_hash:
            found.append(
                Drift(
                    key,
                    intent,
                    f"live generation {status.generation} (spec {status.spec_hash or '-'}) differs from applied "
                    f"generation {intent.generation} (spec {intent.spec_hash})",
                    status,
                )
            )
        elif status.drifted:
            found.append(Drift(key, intent, "the live workload was changed outside Convoy", status))
    return found


def settle(
    applied: Mapping[WorkloadKey, events_pb2.IntentIssued], live: Sequence[WorkloadStatus]
) -> set[WorkloadKey]:
    """The applied workloads a starting agent should forget: those not live any more."""
    present = {s.key for s in live if s.phase is not Phase.ABSENT}
    return {
        key
        for key, intent in applied.items()
        if intent.action == convergence_pb2.INTENT_ACTION_APPLY and key not in present
    }
