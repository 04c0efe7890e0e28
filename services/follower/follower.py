"""The follower's shell: looks at followed repositories, deploys what `core` decides.

One supervised task. Each subscription is looked at when it is due — its interval, never
more often than its registry's `min_poll_interval` — or at once when the registry
notified a push to its repository (`notify`, from the API's webhook endpoint). A look
lists the repository's tags, selects one (`core.choose`), resolves only that tag's
digest (one HEAD; Flux's lesson: resolving every tag burns the registry's rate limit),
and hands `core.decide`'s deploy to the `Port` — the same command path as `convoy
deploy`, with actor `registry:<name>` and an idempotency key from the digest.

Checkpoint: what was deployed is in the log (each release pins the digest it runs), and
`Port.subscriptions()` reads it from there, so a restarted follower — or a second one in
another API process — continues exactly where the log stands; the idempotency key makes
two looks racing at one image one release. A registry that fails (down, refusing,
rate-limiting, answering nonsense) fails that look only: it is logged, counted, retried
at the next due time with backoff, and never stops the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from eventstore.errors import ConvoyError
from eventstore.tasks import describe, stop_task
from services.follower import core
from services.registry.errors import RegistryError
from services.registry.notifications import Pushed
from services.registry.pool import RegistryPool
from services.secrets.references import SecretUnavailable

log = structlog.get_logger("convoy.follower")

DEFAULT_INTERVAL = 300.0
MAX_FAILURE_DELAY = 3600.0
SETTLE_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""Re-looks after a notification whose push a look did not see yet; then the poll takes over."""


class Port(Protocol):
    """What the follower needs from the control plane."""

    def subscriptions(self) -> list[core.Subscription]: ...

    async def deploy(self, deploy: core.Deploy, *, registry: str) -> str:
        """Deploy as `registry:<registry>`; answers the release's id."""
        ...

    async def changed(self, timeout: float) -> None:
        """Return when the catalog may have changed, or after `timeout` seconds."""
        ...


@dataclass(slots=True)
class _Due:
    next_at: float = 0.0
    failures: int = 0
    notified: bool = False
    declared: bytes = b""
    """The subscription and registry as last looked at: a change is looked at at once."""
    expected: set[tuple[str, str]] = field(default_factory=set)
    """(tag, digest) pushes notified but not yet seen by a look (the registry notifies
    before it moves the tag): looked at again after SETTLE_DELAYS."""
    settling: int = 0


@dataclass(slots=True)
class FollowerStats:
    looks: int = 0
    deploys: int = 0
    failures: int = 0
    last_error: str = ""
    deployed: list[str] = field(default_factory=list)
    seen: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """Per subscription, the (tag, digest) its last look selected."""


class Follower:
    def __init__(
        self,
        *,
        port: Port,
        pool: RegistryPool,
        default_interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._port = port
        self._pool = pool
        self._default_interval = default_interval
        self._clock = clock
        self._due: dict[tuple[str, str], _Due] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = FollowerStats()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="follower")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def notify(self, registry: str, pushed: Iterable[Pushed]) -> int:
        """A registry says these were pushed: look at once at every subscription on
        that registry following one of their repositories. Answers how many."""
        pushes = list(pushed)
        repositories = {p.repository for p in pushes}
        marked = 0
        for subscription in self._port.subscriptions():
            repository = subscription.repository.repository
            if subscription.registry.name == registry and repository in repositories:
                due = self._due.setdefault(subscription.key, _Due())
                due.notified = True
                due.expected.update((p.tag, p.digest) for p in pushes if p.repository == repository and p.tag)
                due.settling = 0
                marked += 1
        if marked:
            self._wake.set()
        return marked

    async def look_all(self) -> None:
        """One round: every due subscription, in order (also what tests call)."""
        now = self._clock()
        subscriptions = self._port.subscriptions()
        live = {s.key for s in subscriptions}
        for key in [k for k in self._due if k not in live]:
            del self._due[key]
        for subscription in subscriptions:
            due = self._due.setdefault(subscription.key, _Due())
            declared = subscription.follow.SerializeToString(deterministic=True) + subscription.registry.SerializeToString(
                deterministic=True
            )
            if declared != due.declared:
                due.declared, due.next_at, due.failures = declared, 0.0, 0
            if not due.notified and due.next_at > now:
                continue
            due.notified = False
            try:
                await self.look(subscription, due)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # this subscription's look failed; the others go on
                if not isinstance(e, RegistryError | SecretUnavailable | ConvoyError):
                    log.error("follow look failed unexpectedly", error=describe(e))
                due.failures += 1
                self.stats.failures += 1
                self.stats.last_error = str(e)
                delay = min(MAX_FAILURE_DELAY, subscription.interval_seconds(self._default_interval) * 2 ** min(due.failures - 1, 6))
                due.next_at = self._clock() + delay
                log.warning(
                    "follow look failed", application=subscription.application, service=subscription.service,
                    registry=subscription.registry.name, error=str(e), retry_in_s=round(delay),
                )
                continue
            due.failures = 0
            due.next_at = self._clock() + subscription.interval_seconds(self._default_interval)
            if due.expected:
                if due.settling < len(SETTLE_DELAYS):
                    due.next_at = self._clock() + SETTLE_DELAYS[due.settling]
                    due.settling += 1
                else:  # the registry never showed it: the regular poll will
                    due.expected.clear()

    async def look(self, subscription: core.Subscription, due: _Due | None = None) -> core.Deploy | None:
        self.stats.looks += 1
        client = self._pool.client(subscription.registry)
        repository = subscription.repository.repository
        tags = await client.list_tags(repository)
        tag = core.choose(subscription, tags)
        digest = (await client.resolve(repository, tag)).digest if tag is not None else None
        if due is not None:
            due.expected = {e for e in due.expected if not core.reflected(*e, tags, tag, digest)}
        if tag is None or digest is None:
            log.debug("follow: no eligible tag", application=subscription.application, service=subscription.service)
            return None
        self.stats.seen[subscription.key] = (tag, digest)
        deploy = core.decide(subscription, tag, digest)
        if deploy is None:
            return None
        release_id = await self._port.deploy(deploy, registry=subscription.registry.name)
        self.stats.deploys += 1
        self.stats.deployed.append(deploy.version)
        log.info(
            "follow: deployed a new image", application=deploy.application, service=deploy.service,
            version=deploy.version, image=deploy.image, digest=deploy.digest, release_id=release_id,
        )
        return deploy

    async def _run(self) -> None:
        while True:
            # Cleared before the round: a notification arriving during it sets the event
            # again, so it is looked at in the next round instead of waiting for a poll.
            self._wake.clear()
            try:
                await self.look_all()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or the API refusing: logged, never the end of discovery
                self.stats.failures += 1
                self.stats.last_error = str(e)
                log.error("follow round failed", error=describe(e))
            wait = self._next_wait()
            changed = asyncio.ensure_future(self._port.changed(wait))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({changed, woken}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (changed, woken):
                    await stop_task(task)

    def _next_wait(self) -> float:
        now = self._clock()
        upcoming = [0.0 if d.notified else d.next_at - now for d in self._due.values()]
        return max(0.05, min(upcoming, default=self._default_interval))
