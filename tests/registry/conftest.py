"""Registry test fixtures: a real registry per module (`real_registry`), a factory for tests
that need their own (`start_registry(notify_url=…, notify_headers=…)`), and a pusher."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest

from tests.registry import images, real


@pytest.fixture(scope="module")
def real_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[real.RealRegistry]:
    with real.running(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., real.RealRegistry]]:
    """`start_registry(notify_url=None, notify_headers=None)` → a running registry of this
    test's own, stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(*, notify_url: str | None = None, notify_headers: Mapping[str, str] | None = None) -> real.RealRegistry:
            nonlocal count
            count += 1
            return stack.enter_context(
                real.running(tmp_path / f"registry-{count}", notify_url=notify_url, notify_headers=notify_headers)
            )

        yield start


@pytest.fixture
async def pusher(real_registry: real.RealRegistry) -> AsyncIterator[images.Pusher]:
    async with images.Pusher(url=real_registry.url, username=real_registry.username, password=real_registry.password) as p:
        yield p
