"""Commands: decide against the projected catalog, append with optimistic concurrency.

Every mutating request runs the same way: wait until the projection has folded the log's
head (so a write made through another API process is seen), then, under one asyncio lock,
call the pure `decide` on the projected state *plus this process's own writes that are
committed or in flight but not yet folded*, encode the events (actor = the token's name,
one correlation id per request), and enqueue one AppendRequest per stream whose expected
version accounts for those writes too. The lock covers only decide-and-enqueue: the
commit (an fsync), the wait for the projection and the idempotency record happen outside
it, so concurrent commands share the store's group commit instead of queueing behind
each other's fsync. The store decides queued writes in order, so a command decided after
another sees its effects. A concurrent write by another process makes a
`WrongExpectedVersion`: the writer decides once more on the newer state, and a second
conflict answers ABORTED/409 with nothing written. The answer waits (bounded) for the
projection to fold the write, so the next command or read in this process sees it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from google.protobuf.message import Message

from eventstore.codec import EventRegistry
from eventstore.errors import Unavailable, WrongExpectedVersion
from eventstore.types import AppendRequest, EventStore, NewEvent
from schemas.convoy.v1 import api_pb2, options_pb2, resources_pb2
from services.api import auth
from services.api.domain import (
    BadCommandContext,
    Command,
    Decision,
    FailedPrecondition,
    Minted,
    State,
    StreamEvent,
    decide,
    fold,
)
from services.api.errors import Conflict
from services.api.idempotency import IdempotencyStore, Record, check_key, matching, request_hash
from services.api.methods import BY_NAME, Method
from services.api.projection import Projection

log = structlog.get_logger("convoy.api.writes")

SECRET_FIELD: Final = "secret"


class Writer:
    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        projection: Projection,
        idempotency: IdempotencyStore,
        timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._projection = projection
        self._idempotency = idempotency
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._keys_in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def run(
        self,
        method: Method,
        request: Message,
        *,
        principal: auth.Principal,
        correlation_id: uuid.UUID,
        idempotency_key: str | None = None,
    ) -> Message:
        key = check_key(idempotency_key) if idempotency_key is not None else None
        digest = request_hash(method.path, request)
        if key is None:
            response, _ = await self._execute(
                method, request, actor=principal.name, role=principal.role, correlation_id=correlation_id
            )
            return response
        # One request per key at a time in this process: a retry waits for the first.
        slot = (principal.token_id, key)
        while (busy := self._keys_in_flight.get(slot)) is not None:
            await asyncio.shield(busy)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._keys_in_flight[slot] = done
        try:
            found = await self._idempotency.get(principal.token_id, key)
            if found is not None:
                return _replay(method, matching(found, method.path, digest, key), key)
            response, position = await self._execute(
                method, request, actor=principal.name, role=principal.role, correlation_id=correlation_id
            )
            record = Record(method.path, digest, _without_secret(response).SerializeToString(), position)
            stored = await self._idempotency.put(principal.token_id, key, record)
            if stored != record:  # another process answered this key first
                return _replay(method, matching(stored, method.path, digest, key), key)
            return response
        finally:
            del self._keys_in_flight[slot]
            done.set_result(None)

    async def bootstrap_token(
        self, *, name: str, minted: Minted, before_commit: Callable[[str], Awaitable[object]]
    ) -> api_pb2.CreatedToken | None:
        """Create the first admin token (actor "bootstrap") unless a live one exists.
        `before_commit(secret)` runs only when a token is about to be recorded (the
        server writes the secret file there), so an existing file is never clobbered.
        Runs once, at start-up, before the server accepts requests."""
        await self._caught_up()
        if auth.has_live_admin(self._projection.state):
            return None
        await before_commit(minted.token_secret)
        request = api_pb2.CreateTokenRequest(name=name, role=options_pb2.ROLE_ADMIN)
        response, _ = await self._execute(
            BY_NAME["CreateToken"],
            request,
            actor=auth.BOOTSTRAP_ACTOR,
            role=options_pb2.ROLE_ADMIN,
            correlation_id=uuid.uuid4(),
            minted=minted,
        )
        assert isinstance(response, api_pb2.CreatedToken)
        return response

    async def _caught_up(self) -> None:
        await self._projection.wait_for(await self._store.head(), timeout=self._timeout)

    async def _execute(
        self,
        method: Method,
        request: Message,
        *,
        actor: str,
        role: int,
        correlation_id: uuid.UUID,
        minted: Minted | None = None,
    ) -> tuple[Message, int]:
        minted = minted or auth.mint(agent_credential=method.name == "IssueAgentCredential")
        command = Command(request, actor, role, minted, method.name)
        for attempt in (1, 2):
            await self._caught_up()
            async with self._lock:
                # No await between reading the state, deciding and enqueuing: the store
                # decides queued writes in order, so the next decision may build on this one.
                state, versions = self._speculative()
                decision = decide(state, command)
                if not decision.changed:
                    return _response(method, decision, api_pb2.WriteResult(changed=False)), 0
                appends, ordered = self._appends(decision.events, versions, actor, correlation_id)
                pending = _Pending(decision.events, appends)
                self._pending.append(pending)
                commit = asyncio.ensure_future(self._store.commit(appends))
            try:
                try:
                    results = await commit
                except WrongExpectedVersion as conflict:
                    log.info("command conflicted with a concurrent write", attempt=attempt, stream=conflict.stream_id)
                    if attempt == 2:
                        raise Conflict(
                            f"{conflict.stream_id} changed concurrently while {method.name} was decided (twice); "
                            "nothing was written — send the request again"
                        ) from conflict
                    continue
                position = max(r.last_position for r in results)
                pending.position = position
                write = api_pb2.WriteResult(position=position, event_ids=[str(e.event_id) for e in ordered], changed=True)
                try:
                    await self._projection.wait_for(position, timeout=self._timeout)
                except Unavailable:
                    log.warning("write committed but not yet visible to this process", position=position)
                return _response(method, decision, write), position
            finally:
                self._pending.remove(pending)
        raise AssertionError("unreachable")

    def _speculative(self) -> tuple[State, dict[str, int]]:
        """The projected state and stream versions plus this process's own writes that
        the projection has not folded yet (committed or still queued)."""
        state, versions = self._projection.state, dict(self._projection.versions)
        folded = self._projection.position
        for pending in self._pending:
            if pending.position is not None and pending.position <= folded:
                continue
            state = fold(state, pending.events)
            for append in pending.appends:
                versions[append.stream_id] = versions.get(append.stream_id, 0) + len(append.events)
        return state, versions

    def _appends(
        self,
        events: Sequence[StreamEvent],
        versions: Mapping[str, int],
        actor: str,
        correlation_id: uuid.UUID,
    ) -> tuple[list[AppendRequest], list[NewEvent]]:
        """One AppendRequest per stream (first-appearance order), expecting the version
        the projection saw; and the encoded events in the decision's order."""
        by_stream: dict[str, list[NewEvent]] = {}
        ordered: list[NewEvent] = []
        for stream_id, message in events:
            encoded = self._registry.encode(message, actor=actor, correlation_id=correlation_id)
            by_stream.setdefault(stream_id, []).append(encoded)
            ordered.append(encoded)
        appends = [AppendRequest(s, tuple(evs), expected_version=versions.get(s, 0)) for s, evs in by_stream.items()]
        return appends, ordered


@dataclass(eq=False, slots=True)
class _Pending:
    """One of this process's writes between decide and the projection folding it."""

    events: Sequence[StreamEvent]
    appends: Sequence[AppendRequest]
    position: int | None = None


def _response(method: Method, decision: Decision, write: api_pb2.WriteResult) -> Message:
    """The method's answer: a WriteResult, or the decision's payload (with the write)."""
    if method.output is api_pb2.WriteResult:
        return write
    if method.output is api_pb2.DeployResponse:
        release = decision.response
        if isinstance(release, resources_pb2.Release):
            return api_pb2.DeployResponse(write=write, release=release)
        return api_pb2.DeployResponse(write=write)
    if isinstance(decision.response, method.output):
        return decision.response
    raise BadCommandContext(f"{method.name} decided no {method.output.DESCRIPTOR.name} to answer with")


def _without_secret(response: Message) -> Message:
    if SECRET_FIELD not in response.DESCRIPTOR.fields_by_name:
        return response
    copy = type(response)()
    copy.CopyFrom(response)
    copy.ClearField(SECRET_FIELD)
    return copy


def _replay(method: Method, record: Record, key: str) -> Message:
    response = method.output()
    response.ParseFromString(record.response)
    if SECRET_FIELD in response.DESCRIPTOR.fields_by_name:
        made = getattr(response, "token_id", "") or getattr(response, "credential_id", "")
        raise FailedPrecondition(
            f"idempotency key {key!r} already answered this {method.name} (it created {made!r}); the secret "
            "is shown only once, in that first answer, and Convoy does not keep it. If it was lost, "
            "revoke or rotate what was created and send a new request with a new key"
        )
    return response
