"""The group committer's order: a batch retried write by write keeps its place in the
lock queue, so the batch formed after it commits after its retries (eventstore.committer).
`run_batch` here is a stand-in for the storage step with one lock, which the committer
takes as a parameter by design; the PostgreSQL store's own run_batch is covered by the
event store contract suite."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventstore import grouping
from eventstore.committer import GroupCommitter, Turn
from eventstore.types import AppendRequest, AppendResult


def write(name: str) -> grouping.Write:
    return grouping.Write((AppendRequest(f"test/{name}", ()),))


class Storage:
    """One lock; commits are recorded in the order they happen. The first batch holding
    `poison` fails as a whole before taking the lock; `poison` alone always fails."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.lock = asyncio.Lock()
        self.committed: list[str] = []
        self.first_failed = asyncio.Event()
        self.release = asyncio.Event()

    async def run_batch(self, writes: Sequence[grouping.Write], turn: Turn) -> grouping.BatchPlan:
        names = [w.appends[0].stream_id.split("/")[1] for w in writes]
        await turn.wait_previous()
        if self.poison in names and len(names) > 1:
            self.first_failed.set()
            await self.release.wait()  # the next batch is formed and waiting meanwhile
            raise RuntimeError("a poison write in the batch")
        async with self.lock:
            turn.locked()
            await asyncio.sleep(0)
            plan = grouping.BatchPlan()
            for name in names:
                if name == self.poison:
                    plan.outcomes.append(grouping.Outcome(error=ValueError("poison")))
                else:
                    self.committed.append(name)
                    plan.outcomes.append(grouping.Outcome(results=[AppendResult(f"test/{name}", 0, 0, 0)]))
            return plan


async def test_a_batch_retried_write_by_write_commits_before_the_next_batch() -> None:
    storage = Storage(poison="b")
    committer = GroupCommitter(name="order", run_batch=storage.run_batch, depth=2)
    first = [asyncio.create_task(committer.submit(write(n))) for n in ("a", "b", "c")]
    await storage.first_failed.wait()
    second = [asyncio.create_task(committer.submit(write(n))) for n in ("d", "e")]
    while len(committer._inflight) < 2:  # the second batch formed, queued behind the first
        await asyncio.sleep(0)
    storage.release.set()
    outcomes = await asyncio.gather(*first, *second, return_exceptions=True)
    await committer.close()
    assert isinstance(outcomes[1], ValueError)
    assert not any(isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 1)
    assert storage.committed == ["a", "c", "d", "e"]
