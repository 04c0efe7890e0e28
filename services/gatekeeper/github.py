"""The GitHub reporter's shell: follows the log and keeps GitHub's deployments up to date.

It reads the categories `app` (which applications report, where), `convergence` (the
planner's status changes) and `github` (what it did before) — first up to the head, so a
restart knows every deployment it created and every status it posted — then follows,
asking `deployments.DeploymentBook.due` for the next call of each deployment it touched.
Calls go out one at a time in log order (GitHub shows statuses in the order it gets
them). After each successful call it appends what it did (GitHubDeploymentCreated,
GitHubDeploymentStatusPosted, ids derived from the release, channel and state), so
delivery is at least once: a crash between GitHub's answer and the append repeats at
most that one status, and never the deployment — before creating one it lists the
environment's deployments for the ref and adopts the one whose payload names the same
release and channel.

A failed call (network, 5xx, 429) is retried with backoff; a refusal GitHub will repeat
(401, 403, 404, 422) gives up on that deployment, logged with the status, so it never
wedges the others. The token is a SecretRef resolved per call and never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from eventstore.codec import EventRegistry
from eventstore.errors import ConvoyError, DuplicateEventId
from eventstore.tasks import Backoff, describe, stop_task
from eventstore.types import EventStore, RecordedEvent, read_batches
from schemas.convoy.v1 import events_pb2, resources_pb2
from services.gatekeeper import deployments
from services.gatekeeper.deployments import Create, DeploymentBook, Key, Post
from services.gatekeeper.polls import TemplateError
from services.secrets.references import SecretUnavailable, resolve

log = structlog.get_logger("convoy.github")

ACTOR = "gatekeeper:github"
CATEGORIES = ("app", "convergence", "github")


class CallFailed(ConvoyError):
    """GitHub did not take a call. `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class GitHubSettings:
    read_batch: int = 500
    timeout: float = 10.0
    max_attempts: int = 8
    retry_base: float = 0.5
    retry_cap: float = 60.0


@dataclass(slots=True)
class GitHubStats:
    created: int = 0
    adopted: int = 0
    posted: int = 0
    retried: int = 0
    gave_up: int = 0


class GitHubReporter:
    """`await start()` … `await stop()`; `ready` is set once caught up with the log."""

    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        settings: GitHubSettings | None = None,
        environ: Mapping[str, str] | None = None,
        convoy: Callable[[str], str] | None = None,
    ) -> None:
        """`convoy` resolves Convoy-kept secrets (`SecretRef.convoy`): the API's keyring,
        given by the composition; without it such a reference is refused."""
        self._convoy = convoy
        self.store = store
        self.registry = registry
        self.settings = settings or GitHubSettings()
        self.stats = GitHubStats()
        self.book = DeploymentBook()
        self.ready = asyncio.Event()
        self.gave_up: dict[Key, str] = {}
        self._environ = environ
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        self._task = asyncio.create_task(self._supervise(), name="gatekeeper:github")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> GitHubReporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _supervise(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the log is the truth: fold it again
                self.ready.clear()
                delay = backoff.next()
                log.error("github reporter failed; re-reading the log", error=describe(error), retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        self.book = DeploymentBook()
        head = await self.store.head()
        last = 0
        async for batch in read_batches(self.store, upto=head, categories=CATEGORIES, batch=self.settings.read_batch):
            for recorded in batch:
                self._fold(recorded)
                last = recorded.position
        for key in self.book.pending():
            await self._catch_up(key)
        self.ready.set()
        log.info("github reporter following the log", deployments=len(self.book.deployments))
        async for recorded in self.store.tail(after=max(last, head), categories=CATEGORIES):
            key = self._fold(recorded)
            if key is not None:
                await self._catch_up(key)

    def _fold(self, recorded: RecordedEvent) -> Key | None:
        try:
            message = self.registry.decode(recorded).message
        except ConvoyError as error:
            log.error("github reporter skips an event it cannot decode", position=recorded.position, error=str(error))
            return None
        return self.book.fold(message)

    async def _catch_up(self, key: Key) -> None:
        """Make every call `key` is due, in order; give up on it after a refusal."""
        backoff = Backoff(base=self.settings.retry_base, cap=self.settings.retry_cap)
        attempts = 0
        while key not in self.gave_up:
            try:
                action = self.book.due(key)
            except TemplateError as error:
                self._give_up(key, f"bad template: {error}")
                return
            if action is None:
                return
            try:
                if isinstance(action, Create):
                    await self._create(action)
                else:
                    await self._post(action)
                attempts = 0
                backoff.reset()
            except CallFailed as error:
                attempts += 1
                if not error.retryable or attempts >= self.settings.max_attempts:
                    self._give_up(key, str(error))
                    return
                self.stats.retried += 1
                delay = backoff.next()
                log.warning("github call failed; retrying", deployment="/".join(key), error=str(error),
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    def _give_up(self, key: Key, why: str) -> None:
        self.gave_up[key] = why
        self.stats.gave_up += 1
        log.error("github reporter gives up on a deployment", deployment="/".join(key), error=why)

    # -- calls -------------------------------------------------------------------

    async def _create(self, action: Create) -> None:
        config, body = action.config, action.body
        found = await self._call(config, "GET", f"/deployments?environment={_q(body['environment'])}&ref={_q(body['ref'])}")
        adopted = next((d for d in found if deployments.matches(d, action.key)), None) if isinstance(found, list) else None
        if adopted is not None:
            deployment_id = int(adopted["id"])
            self.stats.adopted += 1
        else:
            answer = await self._call(config, "POST", "/deployments", body)
            if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
                raise CallFailed("GitHub created no deployment (its answer has no id)", retryable=True)
            deployment_id = answer["id"]
            self.stats.created += 1
        app, service, channel, release_id = action.key
        event = events_pb2.GitHubDeploymentCreated(
            application=app, service=service, channel=channel, release_id=release_id,
            repository=f"{config.owner}/{config.repo}", deployment_id=deployment_id, environment=body["environment"],
        )
        await self._record(action.key, event, deployments.created_event_id(action.key))
        log.info("github deployment", deployment="/".join(action.key), id=deployment_id, adopted=adopted is not None)

    async def _post(self, action: Post) -> None:
        await self._call(action.config, "POST", f"/deployments/{action.deployment_id}/statuses", action.body)
        app, service, channel, release_id = action.key
        event = events_pb2.GitHubDeploymentStatusPosted(
            application=app, service=service, channel=channel, release_id=release_id,
            deployment_id=action.deployment_id, state=action.state, description=action.body["description"],
        )
        await self._record(action.key, event, deployments.posted_event_id(action.key, action.state))
        self.stats.posted += 1

    async def _record(self, key: Key, event: Any, event_id: Any) -> None:
        stream = deployments.github_stream(*key[:3])
        try:
            await self.store.append(stream, [self.registry.encode(event, actor=ACTOR, event_id=event_id)])
        except DuplicateEventId:
            pass  # recorded before (with other details): once is enough
        self.book.fold(event)

    async def _call(self, config: resources_pb2.GitHubDeployments, method: str, path: str,
                    body: dict[str, Any] | None = None) -> Any:
        try:
            token = resolve(config.token, environ=self._environ, convoy=self._convoy)
        except SecretUnavailable as error:
            raise CallFailed(str(error), retryable=error.retryable) from None
        base = (config.api_url or deployments.DEFAULT_API).rstrip("/")
        url = f"{base}/repos/{config.owner}/{config.repo}{path}"
        headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {token}",
            "X-GitHub-Api-Version": deployments.API_VERSION,
            "User-Agent": "convoy",
        }
        assert self._session is not None, "start() first"
        try:
            async with self._session.request(method, url, json=body, headers=headers, allow_redirects=False) as response:
                status = response.status
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CallFailed(f"{method} {path}: no answer ({type(error).__name__})", retryable=True) from None
        if 200 <= status < 300:
            return answer
        message = answer.get("message", "") if isinstance(answer, dict) else ""
        retryable = status >= 500 or status == 429 or (status == 403 and "rate limit" in str(message).lower())
        raise CallFailed(f"{method} {path}: GitHub answered {status} {str(message)[:200]}", retryable=retryable)


def _q(value: str) -> str:
    return quote(value, safe="")
