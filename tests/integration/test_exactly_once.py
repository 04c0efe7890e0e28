"""A processor's outputs and its checkpoint commit together: crashes and redeliveries
never lose or duplicate an effect.

A toy processor (the shape the planner and the API projection use) reads the log from its
checkpoint and, per input event, appends one output event with `commit(..., checkpoint=)`.
A fault hook kills its transactions at random just before they commit, the processor
"crashes" and restarts from its stored checkpoint, and every so often an input is
delivered twice. In the end every input has exactly one output.
"""

from __future__ import annotations

import random

import pytest

from eventstore.postgres import PostgresEventStore, PostgresSettings
from eventstore.types import AlreadyProcessed, AppendRequest, Checkpoint, NewEvent
from tests.conftest import fresh_store

pytestmark = pytest.mark.fault  # `make stress` runs these again and again

INPUTS = 400


class Crash(Exception):
    pass


async def test_outputs_and_checkpoint_commit_together_across_crashes(database_url: str) -> None:
    rng = random.Random(7)
    armed = {"on": False}

    async def crash_sometimes(phase: str) -> None:
        if armed["on"] and phase == "committing" and rng.random() < 0.2:
            raise Crash("killed before commit")

    async with fresh_store(database_url) as store:
        for i in range(INPUTS):
            await store.append(f"app/input-{i % 13}", [NewEvent(type="convoy.v1.Input", data=str(i).encode())])
        processor_store = await PostgresEventStore.open(
            PostgresSettings(dsn=database_url, schema=store.schema), fault_hook=crash_sometimes
        )
        crashes = duplicates = 0
        try:
            armed["on"] = True
            while await processor_store.checkpoint("doubler") < INPUTS:
                # (Re)start: resume from the stored checkpoint, like a restarted process.
                position = await processor_store.checkpoint("doubler")
                try:
                    for event in await processor_store.read_all(after=position, categories=["app"], limit=50):
                        deliveries = 2 if rng.random() < 0.1 else 1  # at-least-once delivery
                        for _ in range(deliveries):
                            try:
                                await processor_store.commit(
                                    [AppendRequest("output/doubler", [NewEvent(type="convoy.v1.Output", data=event.data * 2)])],
                                    checkpoint=Checkpoint("doubler", event.position),
                                )
                            except AlreadyProcessed:
                                duplicates += 1
                except Crash:
                    crashes += 1
        finally:
            await processor_store.close()

        outputs = await store.read_stream("output/doubler")
        assert sorted(e.data for e in outputs) == sorted(str(i).encode() * 2 for i in range(INPUTS))
        assert crashes > 0 and duplicates > 0, "the faults never happened; the test proved nothing"
