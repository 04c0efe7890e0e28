"""The REST/JSON face of the API (aiohttp), routed by each method's `(convoy.v1.http)` rule.

Requests and answers are the protobuf messages in their proto3 JSON mapping, so REST
and gRPC clients exchange the same documents. A route's `{field}` segments fill request
fields; a method without a body takes the remaining fields as query parameters
(`page.pageSize=10` or `page.page_size=10`; repeat a parameter for a list); `body: "*"`
takes the JSON body as the request. Everything the client sends is checked before a
handler runs — malformed JSON, wrong types, unknown fields or parameters, undecodable
path segments and bodies over 4 MiB are 4xx answers with a message that names the
problem, never a 5xx. Errors answer `{"error": {code, status, message, violations,
correlationId}}`, each bounded (`errors.classify`): no answer echoes a huge value whole.

A request aiohttp cannot even parse — a request line (the URL) or a header longer than
8190 bytes, malformed HTTP — is answered by aiohttp itself, 400 with a short plain-text
reason, before any route runs; aiohttp offers no public hook to change that answer.
What it would log (an error with a traceback and the start of the offending line, which
may be a bearer token) goes through `ServerLog` instead: one warning line naming the
kind of problem, nothing of the request.

Operations endpoints sit beside the API, unauthenticated and read-only, and are not in
the OpenAPI document: `/healthz` (the process lives), `/readyz` (it can serve: each
readiness check named with its outcome), `/metrics` (Prometheus text; numbers and
method names only, never request contents). Every API request is counted by method
and status and timed.

A `Convoy-Min-Position: N` header makes any call wait until this process's read model
folded position N (read-your-writes across API processes: handlers.MIN_POSITION_HEADER).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import unquote

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from multidict import MultiMapping

from eventstore import metrics
from services.api.domain.errors import quote
from services.api.errors import Failure, invalid
from services.api.handlers import Api, CallContext, correlation_from
from services.api.methods import METHODS, Method

log = structlog.get_logger("convoy.api.rest")

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
SCALAR_MESSAGES: Final = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
"""Well-known types that are plain strings in JSON, so they work as query parameters."""


@dataclass(frozen=True, slots=True)
class Route:
    method: Method
    verb: str
    template: str
    pattern: re.Pattern[str]
    fields: tuple[str, ...]
    body: bool


def _compile(path: str) -> re.Pattern[str]:
    out, rest = "", path
    while "{" in rest:
        start = rest.index("{")
        end = rest.index("}", start)
        out += re.escape(rest[:start]) + f"(?P<{rest[start + 1 : end]}>[^/]+)"
        rest = rest[end + 1 :]
    return re.compile(f"^{out}{re.escape(rest)}$")


def routes() -> list[Route]:
    """Every method with an HTTP rule; routes with more literal text are tried first."""
    found = [
        Route(m, m.http.method, m.http.path, _compile(m.http.path), m.http.path_fields, m.http.body == "*")
        for m in METHODS
        if m.http is not None
    ]
    return sorted(found, key=lambda r: -len(re.sub(r"\{[^}]*\}", "", r.template)))


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(name)
    if found is None:
        found = next((f for f in descriptor.fields if f.json_name == name), None)
    return found


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _query_value(key: str, field: FieldDescriptor, raw: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if raw not in ("true", "false"):
            raise invalid(key, "must be true or false")
        return raw == "true"
    if field.type == FieldDescriptor.TYPE_ENUM and raw.lstrip("-").isdigit():
        return int(raw)
    return raw


def query_fields(descriptor: Descriptor, query: MultiMapping[str], path_fields: tuple[str, ...]) -> dict[str, Any]:
    """Query parameters as a proto3 JSON object (dotted names reach nested fields)."""
    data: dict[str, Any] = {}
    for key in dict.fromkeys(query.keys()):
        target, current = data, descriptor
        parts = key.split(".")
        for depth, part in enumerate(parts):
            field = _field(current, part)
            if field is None:
                raise invalid(key, "unknown query parameter")
            if depth == 0 and field.name in path_fields:
                raise invalid(key, "is given in the path; do not repeat it as a query parameter")
            leaf = depth == len(parts) - 1
            nested = field.message_type is not None and field.message_type.full_name not in SCALAR_MESSAGES
            if is_map(field) or (nested and (leaf or is_repeated(field))):
                raise invalid(key, "cannot be set by a query parameter")
            if not leaf:
                if not nested:
                    raise invalid(key, "unknown query parameter")
                existing = target.setdefault(field.json_name, {})
                if not isinstance(existing, dict):
                    raise invalid(key, "conflicts with another query parameter")
                target, current = existing, field.message_type
                continue
            values = query.getall(key)
            if field.json_name in target:
                raise invalid(key, "is given twice (under its proto and JSON names)")
            if is_repeated(field):
                target[field.json_name] = [_query_value(key, field, v) for v in values]
            elif len(values) > 1:
                raise invalid(key, "is given more than once")
            else:
                target[field.json_name] = _query_value(key, field, values[0])
    return data


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid("", "the body is not valid JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise invalid("", "the body must be a JSON object")
    for key, value in data.items():
        # proto3 JSON reads null as "unset", but the OpenAPI document (and so every client
        # generated from it) says each field has a type: a null is a mistake, not a default
        # (a body of only optional fields, such as RotateSecretKey's, would take it silently).
        if value is None:
            raise invalid(str(key), "is null; give a value or leave the field out")
    return data


def build_request(
    route: Route, params: Mapping[str, str], query: MultiMapping[str], body: bytes
) -> Message:
    """The request message for a call on `route`, or InvalidArgument."""
    descriptor = route.method.input.DESCRIPTOR
    if route.body:
        if query:
            raise invalid(next(iter(query.keys())), "unknown query parameter; send fields in the JSON body")
        data = _json_body(body)
    else:
        data = query_fields(descriptor, query, route.fields)
    for name, value in params.items():
        field = descriptor.fields_by_name[name]
        for spelling in {field.name, field.json_name}:
            if spelling in data and data.pop(spelling) not in (value, "", None):
                raise invalid(name, f"the body says otherwise than the path ({quote(value)})")
        data[field.json_name] = value
    message = route.method.input()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as error:
        raise invalid("", str(error)) from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as error:
        raise invalid("", f"the request does not fit {descriptor.full_name}: {error}") from None
    return message


def _path_params(route: Route, match: re.Match[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, raw in match.groupdict().items():
        try:
            params[name] = unquote(raw, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise invalid(name, "is not valid percent-encoded UTF-8") from None
    return params


def error_response(failure: Failure, correlation_id: str) -> web.Response:
    message = failure.message
    if not failure.expected:
        message = f"internal error; correlation id {correlation_id} (the server logged the details)"
    error: dict[str, Any] = {
        "code": failure.http_status,
        "status": failure.status_name,
        "message": message,
        "correlationId": correlation_id,
    }
    if failure.violations:
        error["violations"] = [{"field": v.field, "description": v.description} for v in failure.violations]
    headers = {"X-Correlation-Id": correlation_id}
    if failure.retry_after_header is not None:
        headers["Retry-After"] = failure.retry_after_header
    return web.json_response({"error": error}, status=failure.http_status, headers=headers)


def _plain_error(status: int, name: str, message: str, correlation_id: str, **headers: str) -> web.Response:
    body = {"error": {"code": status, "status": name, "message": message, "correlationId": correlation_id}}
    return web.json_response(body, status=status, headers={"X-Correlation-Id": correlation_id, **headers})


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server `logger` (`AppRunner(logger=…)`): a request aiohttp refused
    before routing is the client's mistake, logged as one warning line that names the
    kind of problem and nothing of the request (no traceback, no URL, no header value);
    everything else reaches aiohttp's own logger unchanged."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            client = args[0] if args and isinstance(args[0], str) else None
            log.warning("http request refused before routing", status=400, problem=refusal(exc_info), client=client)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


def refusal(error: HttpProcessingError) -> str:
    """What was wrong with a request aiohttp could not parse, without its content."""
    if isinstance(error, LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else "its limit"
        return f"the request line (the URL) or a header is longer than {limit} bytes; send long values in a JSON body"
    return f"malformed HTTP request ({type(error).__name__})"


class RequestMetrics:
    """`convoy_api_http_requests_total{method,code}` and
    `convoy_api_http_request_duration_seconds{method}`; `method` is the API method's name
    (or "unrouted"), so the label set stays bounded whatever clients send."""

    def __init__(self, registry: metrics.Registry) -> None:
        self.requests = registry.counter(
            "convoy_api_http_requests_total", "REST API requests, by API method and HTTP status.", ["method", "code"]
        )
        self.latency = registry.histogram(
            "convoy_api_http_request_duration_seconds", "REST API request latency, by API method.", ["method"]
        )

    def observe(self, method: str, code: int, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.latency.labels(method=method).observe(seconds)


class GrpcMetrics:
    """`convoy_api_grpc_requests_total{method,code}` and
    `convoy_api_grpc_request_duration_seconds{method}` for unary gRPC calls; `method` is
    the API method's name (only routed methods reach a handler) and `code` the status."""

    def __init__(self, registry: metrics.Registry) -> None:
        self.requests = registry.counter(
            "convoy_api_grpc_requests_total", "gRPC API calls, by API method and status code.", ["method", "code"]
        )
        self.latency = registry.histogram(
            "convoy_api_grpc_request_duration_seconds", "gRPC API call latency, by API method.", ["method"]
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.latency.labels(method=method).observe(seconds)


Readiness = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]


class UiRoutes(Protocol):
    """Pages served beside the API on its listener (services.api.ui.app.UiApp)."""

    def register(self, router: web.UrlDispatcher) -> None: ...


class RestApp:
    """The aiohttp application: API routes plus /healthz, /readyz, /metrics and /openapi.json."""

    def __init__(
        self,
        api: Api,
        *,
        openapi: Callable[[], dict[str, Any]],
        health: Callable[[], tuple[bool, int]],
        readiness: Readiness,
        registry: metrics.Registry | None = None,
        requests: RequestMetrics | None = None,
        ui: UiRoutes | None = None,
        hooks: Sequence[UiRoutes] = (),
    ):
        self._api = api
        self._routes = routes()
        self._openapi = openapi
        self._health = health
        self._registry = registry
        self._requests = requests
        self._readiness = readiness
        self._ui = ui
        self._hooks = list(hooks)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi_json)
        if self._ui is not None:
            self._ui.register(app.router)
        for hook in self._hooks:
            hook.register(app.router)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        ok, position = self._health()
        return web.json_response({"status": "ok" if ok else "unavailable", "position": position}, status=200 if ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, body = await self._readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        text = await self._registry.exposition() if self._registry is not None else ""
        return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _openapi_json(self, _: web.Request) -> web.Response:
        return web.json_response(self._openapi())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        ctx = CallContext(
            authorization=request.headers.get("Authorization"),
            idempotency_key=request.headers.get("Idempotency-Key"),
            min_position=request.headers.get("Convoy-Min-Position"),
            correlation_id=correlation_from(request.headers.get("X-Correlation-Id")),
            transport="http",
        )
        found = self._resolve(request, str(ctx.correlation_id))
        if isinstance(found, web.Response):
            self._observe("unrouted", found, started)
            return found
        route, match = found
        response = await self._call(route, match, request, ctx)
        self._observe(route.method.name, response, started)
        return response

    def _resolve(self, request: web.Request, cid: str) -> tuple[Route, re.Match[str]] | web.Response:
        """The route of a request, or the 404 / 405 answer."""
        path = request.rel_url.raw_path
        # The most specific template that matches names the resource; only its methods
        # are allowed (so `…/api:deploy` is never read as a GET of "api:deploy").
        template = next((r.template for r in self._routes if r.pattern.match(path)), None)
        if template is None:
            return _plain_error(404, "NOT_FOUND", f"no API route {request.method} {quote(request.rel_url.path)}", cid)
        candidates = [r for r in self._routes if r.template == template]
        for route in candidates:
            if route.verb == request.method:
                match = route.pattern.match(path)
                assert match is not None
                return route, match
        allowed = ", ".join(sorted({r.verb for r in candidates}))
        return _plain_error(405, "METHOD_NOT_ALLOWED", f"{template} supports {allowed}", cid, Allow=allowed)

    def _observe(self, method: str, response: web.Response, started: float) -> None:
        if self._requests is not None:
            self._requests.observe(method, response.status, time.perf_counter() - started)

    async def _call(self, route: Route, match: re.Match[str], request: web.Request, ctx: CallContext) -> web.Response:
        cid = str(ctx.correlation_id)
        try:
            body = await request.read() if route.body else b""
        except web.HTTPRequestEntityTooLarge:
            return _plain_error(413, "INVALID_ARGUMENT", f"the body is larger than {MAX_BODY_BYTES} bytes", cid)
        try:
            response = await self._api.call(
                route.method, ctx, lambda: build_request(route, _path_params(route, match), request.rel_url.query, body)
            )
        except Exception as error:  # every failure becomes a JSON error, never a crash
            return error_response(self._api.fail(route.method, ctx, error), cid)
        data = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        return web.json_response(data, headers={"X-Correlation-Id": cid})
