"""The one handler layer behind both transports: authenticate, authorize, dispatch.

gRPC and REST differ only in how a request arrives and how an answer leaves; what a
call means is decided here, once. Each call is authenticated against the projected
tokens, checked against its method's `min_role` (and a set of declarations against
each declaration's own method's: one the caller could not apply alone refuses the
set), then routed: commands to the
`Writer` (decide + append), catalog reads to `queries` (after waiting for
`min_position`), the log to `events` (secret-derived values redacted below the admin
role, `redaction.may_see_secrets`). Failures are classified here too (`fail`), so
both transports log them the same way — with the request's correlation id, a traceback
only for the unexpected, and never a token or secret.

A scoped caller is held to its scope here (services.api.scopes) before anything is
dispatched, and the expensive reads (as-of folds, PlanDeploy, Watch) each hold a lease of
the per-principal `limits.Limiter` while they run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import structlog
from google.protobuf.message import Message

from eventstore.codec import EventRegistry
from eventstore.errors import Unavailable
from eventstore.tasks import describe
from eventstore.types import EventStore
from schemas.convoy.v1 import api_pb2
from services.api import auth, events, limits, planning, queries, redaction, scopes, secrets, why
from services.api.convergence import ConvergenceView
from services.api.errors import Failure, classify, invalid
from services.api.history import History, Snapshot
from services.api.images import ImageResolver
from services.api.domain import State, decider
from services.api.domain.validation import q
from services.api.methods import BY_INPUT, BY_NAME, METHODS, Method
from services.api.oidc import SsoVerifier, looks_like_jwt
from services.api.planning import PlannerClient
from services.api.projection import Projection
from services.api.writes import Writer

log = structlog.get_logger("convoy.api")

REMOTE_TRANSPORTS: Final = frozenset({"grpc", "http"})
"""Transports whose callers reach this process's state only through `Api.call` /
`Api.stream` (so through `prepare`): their commands answer before the fold."""

OWN_HANDLERS: Final = frozenset({"ListEvents", "Watch", "GetConvergence", "Why", "PlanDeploy", "ListSecrets"})
"""Read methods with their own handler here (not a pure catalog query)."""

MIN_POSITION_HEADER: Final = "convoy-min-position"
"""Read-your-writes across API processes, for any call: the highest log position the
caller has seen (every write's answer carries its position). Before the call is
dispatched this process waits — up to `READ_WAIT`, then UNAVAILABLE (retryable) — until its
read model folded that position, so a read on process B right after a write answered by
process A sees the write. Reads that carry `min_position` in the request get the same
wait; the header covers the calls that have no such field (lists, events, Watch)."""

READ_WAIT: Final = 5.0
"""How long a read waits for its `min_position` (read-your-writes) before UNAVAILABLE."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a transport knows about a call besides its request message."""

    authorization: str | None = None
    idempotency_key: str | None = None
    min_position: str | None = None
    """The `convoy-min-position` metadata / `Convoy-Min-Position` header: a log position
    the caller has seen (an answer of another API process); the call waits until this
    process's read model folded it (`MIN_POSITION_HEADER`)."""
    correlation_id: uuid.UUID = field(default_factory=uuid.uuid4)
    transport: str = "grpc"


def correlation_from(value: str | None) -> uuid.UUID:
    """A client-supplied correlation id when it is a UUID, else a fresh one."""
    if value:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    return uuid.uuid4()


class Api:
    def __init__(
        self,
        *,
        store: EventStore,
        registry: EventRegistry,
        projection: Projection,
        writer: Writer,
        read_wait: float = READ_WAIT,
        convergence: ConvergenceView | None = None,
        planner: PlannerClient | None = None,
        history: History | None = None,
        agents: queries.AgentLookup | None = None,
        images: ImageResolver | None = None,
        clock: Callable[[], datetime] | None = None,
        token_key: bytes | None = None,
        sso: SsoVerifier | None = None,
        limiter: limits.Limiter | None = None,
    ) -> None:
        self._images = images
        self._clock = clock or (lambda: datetime.now(UTC))
        self._token_key = token_key
        self._sso = sso
        self.limiter = limiter or limits.Limiter()
        self._store = store
        self._registry = registry
        self._projection = projection
        self._writer = writer
        self._read_wait = read_wait
        self._convergence = convergence or ConvergenceView()
        self._planner = planner
        self._history = history or History(store=store, registry=registry)
        self._queries = queries.with_agents(agents) if agents is not None else queries.QUERIES
        self._streams_open = True
        missing = [
            m.name
            for m in METHODS
            if not m.is_command and m.name not in queries.QUERIES and m.name not in OWN_HANDLERS
        ]
        if missing:
            raise RuntimeError(f"api.proto methods without a handler: {', '.join(missing)}")

    @property
    def position(self) -> int:
        """The log position the read model has folded (what "now" means to a read)."""
        return self._projection.position

    @property
    def state(self) -> State:
        """The catalog as the read model folded it (in-process composition: the follower)."""
        return self._projection.state

    async def call_as(
        self, method_name: str, request: Message, *, principal: auth.Principal, idempotency_key: str | None = None
    ) -> Message:
        """A call by an in-process system actor that holds no token (the follower deploys
        as `registry:<name>`): the same role check, dispatch and decision as a transport's
        call. Not reachable from outside the process."""
        method = BY_NAME[method_name]
        if not self._projection.running:
            raise Unavailable("the API is starting or stopping; retry shortly")
        if not method.is_command:
            await self._writer.visible()
        auth.authorize(principal, method.min_role, method.name)
        self._check_scope(principal, method, request)
        ctx = CallContext(idempotency_key=idempotency_key, transport="internal")
        with structlog.contextvars.bound_contextvars(correlation_id=str(ctx.correlation_id), method=method.name):
            response = await self._dispatch(method, request, principal, ctx)
            log.info("api call", transport=ctx.transport, actor=principal.name)
        return response

    async def position_of(self, as_of: api_pb2.AsOf) -> int:
        """The log position a past moment names (validated as every `as_of` read is)."""
        position, _ = await self._history.position(as_of)
        return position

    @property
    def now(self) -> datetime:
        """The API's clock (injectable: token expiry is tested without sleeping)."""
        return self._clock()

    async def prepare(self, ctx: CallContext, *, command: bool = False) -> None:
        """Load what verifying the call's credential needs (an SSO issuer's keys): the
        only I/O of authentication, awaited before the synchronous `authenticate`.
        First it waits until the projection holds what this process answered already
        (services.api.writes: `Writer.visible`) — everything for a read, the token
        changes for a `command` (which decides on the writer's speculative state)."""
        await self._writer.visible(everything=not command)
        if self._sso is None or not ctx.authorization:
            return
        try:
            secret = auth.bearer_secret(ctx.authorization)
        except Exception:  # noqa: BLE001 - authenticate() refuses it with its message
            return
        if looks_like_jwt(secret):
            await self._sso.prepare(secret)

    def authenticate(self, method: Method, ctx: CallContext) -> auth.Principal:
        if not self._projection.running:
            raise Unavailable("the API is starting or stopping; retry shortly")
        principal = auth.authenticate(
            self._projection.state, ctx.authorization, now=self._clock(), token_key=self._token_key, sso=self._sso
        )
        auth.authorize(principal, method.min_role, method.name)
        return principal

    def _check_scope(self, principal: auth.Principal, method: Method, request: Message) -> None:
        scopes.check(principal.scope, method.name, request, is_command=method.is_command, who=principal.describe())
        if isinstance(request, api_pb2.CreateTokenRequest) and request.HasField("expires_at"):
            if request.expires_at.ToDatetime(tzinfo=UTC) <= self._clock():
                raise invalid("expires_at", "must be in the future (by the API's clock)")

    async def call(self, method: Method, ctx: CallContext, parse: Callable[[], Message]) -> Message:
        """Run a unary method. `parse` builds the request (raising InvalidArgument for
        bad input); it runs after authentication, so anonymous callers learn nothing
        about the request format."""
        started = time.monotonic()
        await self.prepare(ctx, command=method.is_command)
        principal = self.authenticate(method, ctx)
        request = parse()
        self._check_scope(principal, method, request)
        await self._see_header(ctx)
        with structlog.contextvars.bound_contextvars(correlation_id=str(ctx.correlation_id), method=method.name):
            response = await self._dispatch(method, request, principal, ctx)
            log.info(
                "api call",
                transport=ctx.transport,
                token_id=principal.token_id,
                ms=round((time.monotonic() - started) * 1000, 1),
            )
        return response

    async def stream(self, method: Method, ctx: CallContext, parse: Callable[[], Message]) -> AsyncIterator[Message]:
        """Run a server-streaming method (Watch)."""
        await self.prepare(ctx)
        principal = self.authenticate(method, ctx)
        request = parse()
        assert isinstance(request, api_pb2.WatchRequest)
        self._check_scope(principal, method, request)
        await self._see_header(ctx)
        with self.limiter.acquire(principal.name, limits.WATCH):
            log.info("watch opened", token_id=principal.token_id, correlation_id=str(ctx.correlation_id))
            async for event in self._watch(method, ctx, principal, request):
                yield event

    async def _watch(
        self, method: Method, ctx: CallContext, principal: auth.Principal, request: api_pb2.WatchRequest
    ) -> AsyncIterator[Message]:

        def still_open() -> bool:
            # A long-lived stream re-checks its token at every wake-up: a token revoked
            # (or demoted) while it watches ends the stream with UNAUTHENTICATED.
            self.authenticate(method, ctx)
            return self._streams_open

        reveal = redaction.may_see_secrets(principal.role)
        async for event in events.watch(
            self._store, self._registry, self._projection, request, open=still_open, reveal_secrets=reveal
        ):
            yield event

    def close_streams(self) -> None:
        """End every Watch at its next wake-up (now: waiters are woken)."""
        self._streams_open = False
        self._projection.wake()

    async def _dispatch(self, method: Method, request: Message, principal: auth.Principal, ctx: CallContext) -> Message:
        if method.is_command:
            if isinstance(request, api_pb2.ApplyDeclarationsRequest):
                authorize_declarations(principal, request)
            return await self._writer.run(
                method,
                request,
                principal=principal,
                correlation_id=ctx.correlation_id,
                idempotency_key=ctx.idempotency_key,
                # A remote caller's next request (a read or a token use) waits instead
                # (`prepare`); in-process callers (the UI, the follower) may read the
                # projection right after the answer, so theirs waits for the fold.
                answer_before_fold=ctx.transport in REMOTE_TRANSPORTS,
            )
        if method.name == "ListEvents":
            assert isinstance(request, api_pb2.ListEventsRequest)
            return await events.list_events(
                self._store, self._registry, request, reveal_secrets=redaction.may_see_secrets(principal.role)
            )
        if method.name == "ListSecrets":
            assert isinstance(request, api_pb2.ListSecretsRequest)
            return await secrets.list_secrets(self._store, self._projection.state, request)
        if method.name == "PlanDeploy":
            assert isinstance(request, api_pb2.PlanDeployRequest)
            with self.limiter.acquire(principal.name, limits.PLAN):
                return await planning.plan_deploy(
                    self._planner, self._projection.state, request, principal, images=self._images
                )
        if "as_of" in _fields(request) and request.HasField("as_of"):  # type: ignore[attr-defined]
            with self.limiter.acquire(principal.name, limits.AS_OF):
                return scopes.filtered(principal.scope, method.name, await self._read(method, request))
        return scopes.filtered(principal.scope, method.name, await self._read(method, request))

    async def _read(self, method: Method, request: Message) -> Message:
        await self._see(queries.min_position(request), "page.min_position" if "page" in _fields(request) else "min_position")
        if method.name in ("GetConvergence", "Why"):
            assert isinstance(request, api_pb2.GetConvergenceRequest | api_pb2.WhyRequest)
            if request.HasField("as_of"):
                read = await self._history.at(request.as_of)
            else:
                read = Snapshot(
                    self._projection.position, None, self._projection.state, self._convergence, self._projection.versions
                )
            if isinstance(request, api_pb2.GetConvergenceRequest):
                queries.get_application(read.state, api_pb2.GetApplicationRequest(name=request.application))
                return api_pb2.GetConvergenceResponse(
                    channels=read.view.of(request.application, request.service), position=read.position
                )
            return await why.explain(
                self._store, self._registry, read.state, read.view, read.versions, request,
                position=read.position, now=read.at,
            )
        state = self._projection.state
        if "as_of" in _fields(request) and request.HasField("as_of"):
            state = (await self._history.at(request.as_of)).state  # type: ignore[attr-defined]
        return self._queries[method.name](state, request)

    async def _see_header(self, ctx: CallContext) -> None:
        """Wait for the position the `convoy-min-position` header names (if any)."""
        if ctx.min_position is None or not ctx.min_position.strip():
            return
        try:
            position = int(ctx.min_position.strip())
        except ValueError:
            raise invalid(MIN_POSITION_HEADER, f"{ctx.min_position!r} is not a log position (an integer)") from None
        await self._see(position, MIN_POSITION_HEADER)

    async def _see(self, position: int, field_name: str) -> None:
        """Read-your-writes: wait (bounded) until the projection folded `position`.
        A position the log has not reached yet is the caller's mistake (400), not an
        outage."""
        if position < 0:
            raise invalid(field_name, "must not be negative")
        if position <= self._projection.position:
            return
        head = await self._store.head()
        if position > head:
            raise invalid(field_name, f"{position} is beyond the last recorded position ({head})")
        await self._projection.wait_for(position, timeout=self._read_wait)

    def fail(self, method: Method | None, ctx: CallContext, error: BaseException) -> Failure:
        """Classify a failure and log it (with a traceback when it was unexpected)."""
        failure = classify(error)
        fields = {
            "correlation_id": str(ctx.correlation_id),
            "method": method.name if method else None,
            "transport": ctx.transport,
            "status": failure.status_name,
        }
        if failure.expected:
            log.info("api call refused", message=failure.message, **fields)
        else:
            log.error("api call failed", error=describe(error), **fields)
        return failure


def authorize_declarations(principal: auth.Principal, request: api_pb2.ApplyDeclarationsRequest) -> None:
    """The caller needs, for each declaration, the role its own method needs (ApplyService,
    LinkResource …): a set cannot do what its parts could not. Checked before anything is
    decided or replayed, so a refused set records nothing."""
    for i, declaration in enumerate(request.declarations):
        kind = declaration.WhichOneof("kind")
        if kind is None:
            continue  # the domain refuses it, naming it
        single = BY_INPUT[decider.DECLARED[kind]]
        _, name = decider.declaration_label(declaration)
        auth.authorize(principal, single.min_role, f"declarations[{i}] ({kind} {q(name)}): {single.name}")


def _fields(request: Message) -> set[str]:
    return set(request.DESCRIPTOR.fields_by_name)
