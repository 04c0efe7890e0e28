"""Helpers for Convoy's long-lived tasks: backoff between retries and a clean stop.

The relay and the subscriptions run for the life of a process, ride out outages by
retrying with capped, jittered exponential backoff, and must stop without leaving a
pending task behind ("Task was destroyed but it is pending" is a bug, and a test failure).
"""

from __future__ import annotations

import asyncio
import random
import traceback
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("convoy.tasks")


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter: base, 2·base, 4·base … up to cap."""

    base: float = 0.05
    cap: float = 5.0
    attempt: int = 0

    def next(self) -> float:
        delay: float = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.attempt = 0


async def stop_task(task: asyncio.Task[Any] | None, *, grace: float = 0.0) -> None:
    """Let `task` finish for up to `grace` seconds, then cancel it and wait until it
    has really ended. Re-raises nothing from the task: it is being stopped."""
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # mark retrieved; the task logged it already
        return
    if grace > 0:
        await asyncio.wait({task}, timeout=grace)
    attempts = 0
    interrupted = False
    while not task.done():
        # Cancel again if a library swallowed the first one (Python 3.11's wait_for can,
        # when the awaited result arrives together with the cancellation).
        if attempts:
            log.warning("task ignored a cancellation; cancelling again", task=task.get_name(), attempts=attempts)
        task.cancel()
        attempts += 1
        try:
            await asyncio.wait({task}, timeout=1.0)
        except asyncio.CancelledError:
            # Our own caller is being stopped: still see this task end first, or it would
            # outlive everything it uses (a tail on a closed store, retrying forever).
            interrupted = True
    if not task.cancelled():
        task.exception()  # mark retrieved
    if interrupted:
        raise asyncio.CancelledError


def describe(error: BaseException) -> str:
    """An error and where it was raised, for logs: the traceback without local
    variables (a rich traceback with locals could print a DSN's password)."""
    return "".join(traceback.format_exception(error)).strip()
