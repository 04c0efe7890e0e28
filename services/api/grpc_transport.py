"""The gRPC face of the API (grpc.aio), generated from the method table.

No servicer classes: every method in api.proto gets a generic handler that hands the
raw request bytes to the shared `Api`. Parsing the bytes here, rather than in grpc's
deserializer, is what lets a malformed message answer INVALID_ARGUMENT instead of the
INTERNAL that grpc gives a failing deserializer. Metadata carries the bearer token
(`authorization`), the `idempotency-key`, an optional `x-correlation-id` and an optional
`convoy-min-position` (read-your-writes across API processes, handlers.MIN_POSITION_HEADER); errors go
out as a status code and message, with the correlation id and any field violations in
trailing metadata (`x-correlation-id`, `convoy-violations-bin` as JSON).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from services.api.errors import Failure, invalid
from services.api.handlers import MIN_POSITION_HEADER, Api, CallContext, correlation_from
from services.api.methods import METHODS, SERVICES, Method

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found


def _context(context: grpc.aio.ServicerContext) -> CallContext:
    metadata = _metadata(context)
    return CallContext(
        authorization=metadata.get("authorization"),
        idempotency_key=metadata.get("idempotency-key"),
        min_position=metadata.get(MIN_POSITION_HEADER),
        correlation_id=correlation_from(metadata.get("x-correlation-id")),
        transport="grpc",
    )


def _parser(method: Method, data: bytes) -> Callable[[], Message]:
    def parse() -> Message:
        request = method.input()
        try:
            request.ParseFromString(data)
        except (DecodeError, RecursionError, ValueError):
            raise invalid("", f"the request is not a valid {method.input.DESCRIPTOR.full_name} message") from None
        return request

    return parse


async def _abort(context: grpc.aio.ServicerContext, failure: Failure, ctx: CallContext) -> NoReturn:
    trailing: list[tuple[str, str | bytes]] = [("x-correlation-id", str(ctx.correlation_id))]
    if failure.retry_after_header is not None:
        trailing.append(("retry-after", failure.retry_after_header))
    if failure.violations:
        violations = [{"field": v.field, "description": v.description} for v in failure.violations]
        trailing.append(("convoy-violations-bin", json.dumps(violations).encode()))
    context.set_trailing_metadata(tuple(trailing))
    message = failure.message
    if not failure.expected:
        message = f"internal error; correlation id {ctx.correlation_id} (the server logged the details)"
    await context.abort(failure.grpc_code, message)
    raise AssertionError("abort returned")  # pragma: no cover


Observe = Callable[[str, str, float], None]
"""(API method, gRPC status name, seconds) for each unary call: the request metrics."""


def _unary(api: Api, method: Method, observe: Observe | None) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Message:
        ctx = _context(context)
        started = time.perf_counter()
        try:
            response = await api.call(method, ctx, _parser(method, data))
        except Exception as error:  # every failure becomes a status, never a crash
            failure = api.fail(method, ctx, error)
            if observe is not None:
                observe(method.name, failure.grpc_code.name, time.perf_counter() - started)
            await _abort(context, failure, ctx)
        context.set_trailing_metadata((("x-correlation-id", str(ctx.correlation_id)),))
        if observe is not None:
            observe(method.name, "OK", time.perf_counter() - started)
        return response

    return handle


def _streaming(api: Api, method: Method) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Message]]:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        ctx = _context(context)
        try:
            async for item in api.stream(method, ctx, _parser(method, data)):
                yield item
        except Exception as error:
            await _abort(context, api.fail(method, ctx, error), ctx)

    return handle


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def generic_handlers(api: Api, observe: Observe | None = None) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service in api.proto."""
    out: list[grpc.GenericRpcHandler] = []
    for service in SERVICES:
        handlers: dict[str, Any] = {}
        for method in (m for m in METHODS if m.service == service):
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    _streaming(api, method), response_serializer=_serialize
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    _unary(api, method, observe), response_serializer=_serialize
                )
        out.append(grpc.method_handlers_generic_handler(service, handlers))
    return out


def build_server(api: Api, observe: Observe | None = None) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(generic_handlers(api, observe))
    return server
