"""The UI's only way to Convoy: the handler layer, called with the signed-in user's token.

A page's reads and writes are API calls by method name (`ListApplications`, `Approve` …),
dispatched by `services.api.handlers.Api` exactly as gRPC and REST calls are: the same
authentication, the same role check, the same validation, the same log lines (transport
"ui"). A page in the past (`?at=`) sets `as_of` on every read that has it, so one page is
one consistent moment of the log.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2
from services.api import auth
from services.api.handlers import Api, CallContext
from services.api.methods import BY_NAME

M = TypeVar("M", bound=Message)


@dataclass(slots=True)
class UiClient:
    api: Api
    secret: str
    as_of: api_pb2.AsOf | None = None
    correlation_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def ctx(self, idempotency_key: str | None = None) -> CallContext:
        return CallContext(
            authorization=f"Bearer {self.secret}",
            idempotency_key=idempotency_key,
            correlation_id=self.correlation_id,
            transport="ui",
        )

    async def principal(self) -> auth.Principal:
        """Who is signed in (Unauthenticated when the token, or SSO token, is no longer valid)."""
        ctx = self.ctx()
        await self.api.prepare(ctx)
        return self.api.authenticate(BY_NAME["ListApplications"], ctx)

    async def read(self, method: str, request: M) -> Message:
        """A read, `as_of` the page's moment when the request can carry it."""
        if self.as_of is not None and "as_of" in request.DESCRIPTOR.fields_by_name:
            getattr(request, "as_of").CopyFrom(self.as_of)
        return await self.api.call(BY_NAME[method], self.ctx(), lambda: request)

    async def write(self, method: str, request: Message, *, idempotency_key: str | None = None) -> Message:
        return await self.api.call(BY_NAME[method], self.ctx(idempotency_key), lambda: request)

    def watch(self, request: api_pb2.WatchRequest) -> AsyncIterator[Message]:
        return self.api.stream(BY_NAME["Watch"], self.ctx(), lambda: request)
