"""pytest fixtures for the emulator; test modules import the ones they use.

`k8s_emulator` ticks only when the test says so (deterministic); `k8s_emulator_auto`
ticks every 20 ms of real time (one emulator second per tick), for tests that only watch
from the client side, like the runtime contract suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.k8s_emulator.emulator import Emulator


@pytest.fixture
async def k8s_emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as emulator:
        yield emulator


@pytest.fixture
async def k8s_emulator_auto() -> AsyncIterator[Emulator]:
    async with Emulator(auto_tick=0.02) as emulator:
        yield emulator
