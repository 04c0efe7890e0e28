"""Commands: decide against the projected catalog, append with optimistic concurrency.

Every mutating request runs the same way. First it learns the log's head — with a read
that started after the request arrived, so a write made through another API process is
seen — and whether its idempotency key was answered already; then it waits until the
projection has folded that head. Then, with no await in between (so no lock is needed),
it calls the pure `decide` (a Deploy's registry images resolved to digests just before:
services.api.images) on the projected state *plus this process's own writes that
are committed or in flight but not yet folded*, encodes the events (actor = the token's
name, one correlation id per request) and enqueues one write whose appends expect
stream versions that account for those writes too, and which carries the answer as a
receipt when the request has a key. The store decides queued writes in order, so a
command decided after another sees its effects, and concurrent commands share one group
commit (one fsync) instead of queueing behind each other's.

A concurrent write by another process makes a `WrongExpectedVersion`: the writer decides
once more on the newer state, and a second conflict answers ABORTED/409 with nothing
written. A key answered meanwhile by another process makes `ReceiptTaken`: nothing is
written and the first answer is replayed. The answer waits (bounded) for the projection
to fold the write, so the next command or read in this process sees it — or, for a
remote caller (`answer_before_fold`), is sent at once and the wait moves to whatever
reads the projection next in this process (`visible`): a read, a Watch, a Deploy
(whose images are resolved on the projected catalog) and authentication (when one of
those writes changed a token). A command decides on the speculative state, which holds
the write already, so a client's next command does not wait for the fold of its last one.

Per command the cost must not grow with concurrency: head reads and key lookups of
concurrent commands are coalesced into one round (`_Sync`), and the speculative state
is kept folded incrementally (`_speculative`) rather than re-folded per decision.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import structlog
from google.protobuf.message import Message

from eventstore.codec import EventRegistry
from eventstore.errors import ConvoyError, Unavailable, WrongExpectedVersion
from eventstore.types import (
    AppendRequest,
    AppendResult,
    EventStore,
    NewEvent,
    Receipt,
    ReceiptTaken,
    stream_category,
)
from schemas.convoy.v1 import api_pb2, options_pb2, resources_pb2
from services.api import auth, idempotency
from services.api.images import ImageResolver
from services.api.domain import (
    BadCommandContext,
    Command,
    Decision,
    Minted,
    State,
    StreamEvent,
    decide,
    fold,
)
from services.api.errors import Conflict
from services.api.methods import BY_NAME, Method
from services.api.projection import Projection
from services.api.secrets import SEALING, SecretSealer

log = structlog.get_logger("convoy.api.writes")

TOKEN_CATEGORY: Final = "token"
"""The stream category of API tokens (services.api.domain.streams): what authentication reads."""

MINTING: Final = frozenset({"Deploy", "CreateToken", "IssueAgentCredential"})
"""The commands whose decision reads `Command.minted` (fresh ids and secrets cost random
bytes and hashing, so the others get an empty `Minted`; the domain refuses an empty one)."""


class Writer:
    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        projection: Projection,
        timeout: float = 5.0,
        images: ImageResolver | None = None,
        secrets: SecretSealer | None = None,
        token_key: bytes | None = None,
    ) -> None:
        self._secrets = secrets or SecretSealer(keyring=None)
        self._token_key = token_key
        self._store = store
        self._images = images
        self._registry = registry
        self._projection = projection
        self._timeout = timeout
        self._sync = _Sync(store)
        self._folded = _Folded(projection)
        self._pending: list[_Pending] = []
        self._keys_in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}
        # The speculative state: the projection as of `_spec_base` plus every pending
        # write, and the positions of this process's committed writes beyond that base.
        self._spec: tuple[State, dict[str, int]] | None = None
        self._spec_base = 0
        self._own: set[int] = set()
        # The last positions of writes answered before the projection folded them: any
        # (reads wait for it) and those that changed a token (authentication waits).
        self._answered = 0
        self._answered_tokens = 0

    async def visible(self, *, everything: bool = True) -> None:
        """Return once the projection holds every write this process answered (with
        `everything=False`: every such write that changed a token, which is what
        authentication reads). Bounded by the write timeout (`Unavailable`); a broken
        projection answers as of where it stopped, so it does not wait for one."""
        target = self._answered if everything else self._answered_tokens
        if target <= self._projection.position or self._projection.broken is not None:
            return
        await self._folded.wait(target, timeout=self._timeout)

    async def run(
        self,
        method: Method,
        request: Message,
        *,
        principal: auth.Principal,
        correlation_id: uuid.UUID,
        idempotency_key: str | None = None,
        answer_before_fold: bool = False,
    ) -> Message:
        """Decide and record one command; its answer. With `answer_before_fold` the
        answer does not wait for the projection to fold the write (see `visible`)."""
        if self._projection.broken is not None:
            raise self._projection.broken  # deciding on a state that lacks an event would be wrong
        key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
        if key is None:
            response, _ = await self._execute(
                method, request, actor=principal.name, role=principal.role, correlation_id=correlation_id,
                answer_before_fold=answer_before_fold,
            )
            return response
        digest = idempotency.request_hash(method.path, request)
        # One request per key at a time in this process: a retry waits for the first.
        slot = (principal.token_id, key)
        while (busy := self._keys_in_flight.get(slot)) is not None:
            await asyncio.shield(busy)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._keys_in_flight[slot] = done
        try:
            receipt = Receipt(principal.token_id, key, method.path, digest, b"")
            try:
                response, _ = await self._execute(
                    method, request, actor=principal.name, role=principal.role, correlation_id=correlation_id,
                    receipt=receipt, answer_before_fold=answer_before_fold,
                )
            except ReceiptTaken as taken:  # answered before (found up front, or by a racing process)
                stored = idempotency.matching(taken.stored, method.path, digest, key)
                return idempotency.replay(method.output, method.name, stored, key)
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
        await self._caught_up(None)
        if auth.has_live_admin(self._projection.state):
            return None
        request = api_pb2.CreateTokenRequest(name=name, role=options_pb2.ROLE_ADMIN)
        # One bootstrap per instance, ever: the token commits with a receipt under a fixed
        # key, so of two API processes bootstrapping an empty instance at once only one
        # creates a token (the other gets ReceiptTaken and writes nothing).
        receipt = Receipt(
            scope=auth.BOOTSTRAP_ACTOR, key="bootstrap-admin-token", method="CreateToken",
            request_sha256=idempotency.request_hash(BY_NAME["CreateToken"].path, request), response=b"",
        )
        await before_commit(minted.token_secret)
        try:
            response, _ = await self._execute(
                BY_NAME["CreateToken"],
                request,
                actor=auth.BOOTSTRAP_ACTOR,
                role=options_pb2.ROLE_ADMIN,
                correlation_id=uuid.uuid4(),
                minted=minted,
                receipt=receipt,
            )
        except ReceiptTaken:
            return None
        assert isinstance(response, api_pb2.CreatedToken)
        return response

    async def _caught_up(self, receipt: Receipt | None) -> None:
        """Wait until the speculative state holds every write committed before now;
        raise `ReceiptTaken` if `receipt`'s key was answered already. Positions the
        projection has not folded yet need no wait when they are all this process's
        own committed writes: the speculative state holds those already."""
        head, found = await self._sync.observe(receipt.slot if receipt is not None else None)
        if found is not None:
            raise ReceiptTaken(found)
        self._speculative()
        if not all(p in self._own for p in range(self._spec_base + 1, head + 1)):
            await self._folded.wait(head, timeout=self._timeout)

    async def _execute(
        self,
        method: Method,
        request: Message,
        *,
        actor: str,
        role: int,
        correlation_id: uuid.UUID,
        minted: Minted | None = None,
        receipt: Receipt | None = None,
        answer_before_fold: bool = False,
    ) -> tuple[Message, int]:
        if minted is None:
            minted = (
                auth.mint(agent_credential=method.name == "IssueAgentCredential", token_key=self._token_key)
                if method.name in MINTING
                else Minted()
            )
        digests: dict[str, str] = {}
        if self._images is not None and isinstance(request, api_pb2.DeployRequest):
            await self.visible()  # the images are resolved on the projected catalog
            # The registry is asked before deciding (decide is pure); a service changed
            # in between makes the decision refuse (ImagesChanged), never pin a guess.
            digests = await self._images.resolve(self._projection.state, request)
        command = Command(request, actor, role, minted, method.name, images=digests)
        sealing = method.name in SEALING
        if sealing:
            self._secrets.before(method.name, request)
        for attempt in (1, 2):
            await self._caught_up(receipt)
            # No await from reading the state to enqueuing the write: the store decides
            # queued writes in order, so the next decision may build on this one.
            state, versions = self._speculative()
            if sealing:  # the keyring encrypts here, on this state (a rotation re-encrypts all of it)
                command = replace(command, minted=self._secrets.mint(method.name, request, state, minted))
            try:
                decision = decide(state, command)
            except ConvoyError:
                if receipt is not None:
                    # The state may already hold a racing process's write under this very
                    # key (folded after our key lookup): its answer is the answer, not the
                    # refusal its events now cause (ALREADY_EXISTS for its own release).
                    _, found = await self._sync.observe(receipt.slot)
                    if found is not None:
                        raise ReceiptTaken(found) from None
                raise
            if not decision.changed and receipt is None:
                return _response(method, decision, api_pb2.WriteResult(changed=False)), 0
            appends, ordered = self._appends(decision.events, versions, actor, correlation_id)
            write = api_pb2.WriteResult(event_ids=[str(e.event_id) for e in ordered], changed=decision.changed)
            response = _response(method, decision, write)
            recorded = replace(receipt, response=idempotency.recorded(response)) if receipt is not None else None
            pending = _Pending(decision.events, appends)
            self._add_pending(pending)
            commit = asyncio.ensure_future(self._store.commit(appends, receipt=recorded))
            try:
                try:
                    results = await commit
                except WrongExpectedVersion as conflict:
                    self._failed(pending)
                    log.info("command conflicted with a concurrent write", attempt=attempt, stream=conflict.stream_id)
                    if attempt == 2:
                        raise Conflict(
                            f"{conflict.stream_id} changed concurrently while {method.name} was decided (twice); "
                            "nothing was written — send the request again"
                        ) from conflict
                    continue
                except BaseException:
                    self._failed(pending)
                    raise
                position = self._committed(pending, results)
                if sealing:
                    self._secrets.after_commit(method.name, command.minted)
                if position and answer_before_fold:
                    self._answered = max(self._answered, position)
                    if any(stream_category(a.stream_id) == TOKEN_CATEGORY for a in appends):
                        self._answered_tokens = max(self._answered_tokens, position)
                elif position:
                    try:
                        await self._folded.wait(position, timeout=self._timeout)
                    except Unavailable:
                        log.warning("write committed but not yet visible to this process", position=position)
                return idempotency.with_position(response, position), position
            finally:
                if pending.positions and pending.positions[-1] > self._projection.position:
                    # Committed, not folded yet: a rebuilt speculative state must still
                    # hold it (`_speculative` drops it once the projection has it).
                    pending.answered = True
                else:
                    self._pending.remove(pending)
        raise AssertionError("unreachable")

    # -- the speculative state -------------------------------------------------------

    def _speculative(self) -> tuple[State, dict[str, int]]:
        """The projected state and stream versions plus this process's own writes that
        the projection has not folded yet (committed or still queued). Kept folded:
        rebuilt only when the projection folded something this process did not write."""
        folded = self._projection.position
        if self._pending and self._pending[0].answered:
            self._pending = [p for p in self._pending if not (p.answered and p.positions[-1] <= folded)]
        if self._spec is not None and folded != self._spec_base:
            newly = range(self._spec_base + 1, folded + 1)
            if all(p in self._own for p in newly):  # only our own writes, already in it
                self._own.difference_update(newly)
                self._spec_base = folded
            else:
                self._spec = None
        if self._spec is None:
            state, versions = self._projection.state, dict(self._projection.versions)
            self._own = set()
            for pending in self._pending:
                if pending.positions and pending.positions[-1] <= folded:
                    continue
                state = fold(state, pending.events)
                _count(versions, pending.appends)
                self._own.update(p for p in pending.positions if p > folded)
            self._spec, self._spec_base = (state, versions), folded
        return self._spec

    def _add_pending(self, pending: _Pending) -> None:
        self._pending.append(pending)
        assert self._spec is not None
        state, versions = self._spec
        _count(versions, pending.appends)
        self._spec = (fold(state, pending.events), versions)

    def _committed(self, pending: _Pending, results: Sequence[AppendResult]) -> int:
        """Note where a pending write landed; answer its last position (0: none)."""
        pending.positions = sorted(p for r in results for p in r.positions)
        if any(r.duplicate for r in results):
            self._spec = None  # not new events: the speculation counted them twice
        elif self._spec is not None:
            self._own.update(p for p in pending.positions if p > self._spec_base)
        return max((r.last_position for r in results), default=0)

    def _failed(self, pending: _Pending) -> None:
        """A pending write was not recorded: what was decided on top of it is rebuilt."""
        self._spec = None

    def _appends(
        self,
        events: Sequence[StreamEvent],
        versions: Mapping[str, int],
        actor: str,
        correlation_id: uuid.UUID,
    ) -> tuple[list[AppendRequest], list[NewEvent]]:
        """One AppendRequest per stream (first-appearance order), expecting the version
        the speculative state saw; and the encoded events in the decision's order."""
        by_stream: dict[str, list[NewEvent]] = {}
        ordered: list[NewEvent] = []
        for stream_id, message in events:
            encoded = self._registry.encode(message, actor=actor, correlation_id=correlation_id)
            by_stream.setdefault(stream_id, []).append(encoded)
            ordered.append(encoded)
        appends = [AppendRequest(s, tuple(evs), expected_version=versions.get(s, 0)) for s, evs in by_stream.items()]
        return appends, ordered


def _count(versions: dict[str, int], appends: Sequence[AppendRequest]) -> None:
    for append in appends:
        versions[append.stream_id] = versions.get(append.stream_id, 0) + len(append.events)


@dataclass(eq=False, slots=True)
class _Pending:
    """One of this process's writes between decide and the projection folding it."""

    events: Sequence[StreamEvent]
    appends: Sequence[AppendRequest]
    positions: list[int] = field(default_factory=list)
    """Where its events landed, once committed (ascending)."""
    answered: bool = False
    """Its command answered before the projection folded it (kept until it does)."""


class _Sync:
    """"What is the log's head now, and which of these keys are answered?" for many
    concurrent commands at once. A command must decide on a state that includes every
    write committed before it arrived, so it needs a head read that *started* after it
    arrived; concurrent arrivals share one (`EventStore.receipts`: the head and the
    keys in one statement). While a round's read runs, new arrivals join the next
    round, so there is at most one read in flight and one round gathering, however many
    commands wait: the reads cost per round, not per command."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._gathering: _Round | None = None
        self._task: asyncio.Task[None] | None = None

    async def observe(self, slot: tuple[str, str] | None) -> tuple[int, Receipt | None]:
        round_ = self._gathering
        if round_ is None:
            round_ = self._gathering = _Round()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._drive(), name="convoy.api.writes.sync")
        # One future per waiter: a cancelled waiter cancels only its own.
        answer: asyncio.Future[tuple[int, Receipt | None]] = asyncio.get_running_loop().create_future()
        round_.waiters.append((slot, answer))
        return await answer

    async def _drive(self) -> None:
        while (round_ := self._gathering) is not None:
            self._gathering = None
            try:
                head, receipts = await self._store.receipts([s for s, _ in round_.waiters if s is not None])
            except Exception as error:  # noqa: BLE001 - every waiter of the round gets it
                for _, answer in round_.waiters:
                    if not answer.done():
                        answer.set_exception(error)
            else:
                for slot, answer in round_.waiters:
                    if not answer.done():
                        answer.set_result((head, receipts.get(slot) if slot is not None else None))


class _Folded:
    """`Projection.wait_for` for many commands at once: one task follows the projection
    and wakes each command when its position is folded. (Each command waiting on the
    projection itself would be woken by every event folded, whatever its position.)"""

    def __init__(self, projection: Projection) -> None:
        self._projection = projection
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap by position
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None

    async def wait(self, position: int, *, timeout: float) -> None:
        """Return once `position` is folded; raise `Unavailable` after `timeout`."""
        if self._projection.position >= position:
            return
        folded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (position, next(self._order), folded))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(), name="convoy.api.writes.folded")
        try:
            async with asyncio.timeout(timeout):
                await folded
        except TimeoutError:
            raise Unavailable(
                f"the read model is at position {self._projection.position} and did not reach {position} within "
                f"{timeout:g}s; retry shortly"
            ) from None

    async def _follow(self) -> None:
        waiting = self._waiting
        while waiting:
            folded = self._projection.position
            while waiting and waiting[0][0] <= folded:
                _, _, future = heapq.heappop(waiting)
                if not future.done():
                    future.set_result(None)
            while waiting and waiting[0][2].done():  # timed out or cancelled
                heapq.heappop(waiting)
            if not waiting:
                return
            if not self._projection.running:
                for _, _, future in waiting:
                    if not future.done():
                        future.set_exception(Unavailable("the API is shutting down"))
                waiting.clear()
                return
            await self._projection.wait_beyond(folded, timeout=1.0)


@dataclass(slots=True)
class _Round:
    waiters: list[tuple[tuple[str, str] | None, asyncio.Future[tuple[int, Receipt | None]]]] = field(
        default_factory=list
    )


def _response(method: Method, decision: Decision, write: api_pb2.WriteResult) -> Message:
    """The method's answer: a WriteResult, or the decision's payload (with the write:
    Deploy's release, ApplyDeclarations' per-declaration outcomes)."""
    if method.output is api_pb2.WriteResult:
        return write
    if method.output is api_pb2.DeployResponse:
        release = decision.response
        if isinstance(release, resources_pb2.Release):
            return api_pb2.DeployResponse(write=write, release=release)
        return api_pb2.DeployResponse(write=write)
    if method.output is api_pb2.ApplyDeclarationsResponse and isinstance(
        decision.response, api_pb2.ApplyDeclarationsResponse
    ):
        answer = api_pb2.ApplyDeclarationsResponse()
        answer.CopyFrom(decision.response)
        answer.write.CopyFrom(write)
        return answer
    if isinstance(decision.response, method.output):
        return decision.response
    raise BadCommandContext(f"{method.name} decided no {method.output.DESCRIPTOR.name} to answer with")
