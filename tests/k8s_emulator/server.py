"""The HTTP face of the emulator: URL routing, verbs, query parameters, watch streams.

One catch-all route parses Kubernetes' URL grammar (`/api/v1/namespaces/{ns}/pods/{name}`,
`/apis/apps/v1/deployments` …) so every resource type in `resources` gets the same verbs
with the same semantics: get, list (labelSelector, fieldSelector), watch (`?watch=1`,
newline-delimited JSON events over a chunked response, resumable by resourceVersion),
create, update, patch (apply, merge, strategic, JSON patch) and delete. Errors are
Status objects from `errors`.

Writes take the apiserver's query options: `dryRun=All` and `fieldValidation`
(Strict | Warn | Ignore), validated as metav1's ValidateCreateOptions / ValidateUpdateOptions
/ ValidatePatchOptions / ValidateDeleteOptions do (k8s.io/apimachinery
`pkg/apis/meta/v1/validation/validation.go`: an unsupported value is a 422 on
`CreateOptions.meta.k8s.io`…), and warnings go out as `Warning: 299 - "…"` headers
(k8s.io/apiserver `pkg/warning`). `requests` records what each request asked (method, path,
query) for tests that check what a client sent. `/openapi/v3` serves what kubectl reads to
decide that the server validates fields itself (`openapi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.k8s_emulator import errors, openapi, resources, selectors
from tests.k8s_emulator.authz import Authorizer
from tests.k8s_emulator.resources import ResourceType
from tests.k8s_emulator.store import Store, WriteOptions

JSON = dict[str, Any]
PREFIXES = ("apis/apps/v1", "api/v1")


def _json(body: JSON, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    response = web.Response(status=status, text=json.dumps(body), content_type="application/json")
    for warning in warnings or ():
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    return response


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the server saw it (tests read `ApiServer.requests`)."""

    method: str
    path: str
    query: dict[str, list[str]]
    verb: str = ""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Fault:
    """Answer the next request that matches with an error, instead of serving it."""

    verb: str
    plural: str
    dry_run: bool
    code: int
    times: int = 1

    def matches(self, verb: str, plural: str, query: Any) -> bool:
        return self.times > 0 and (verb, plural) == (self.verb, self.plural) and ("dryRun" in query) == self.dry_run


OPTIONS_KIND = {"create": "CreateOptions", "update": "UpdateOptions", "patch": "PatchOptions", "delete": "DeleteOptions"}
FIELD_VALIDATIONS = ["", "Ignore", "Strict", "Warn"]


def write_options(verb: str, query: Any, body_options: JSON | None = None) -> WriteOptions:
    """The request's dryRun and fieldValidation, refused as metav1 validation refuses them."""
    dry_run = list(query.getall("dryRun", [])) or list((body_options or {}).get("dryRun") or [])
    validation = query.get("fieldValidation", "")
    causes: list[tuple[str, str, str]] = []
    if any(value != "All" for value in dry_run):
        causes.append(("dryRun", "FieldValueNotSupported", f'Unsupported value: {json.dumps(dry_run, separators=(",", ":"))}: supported values: "All"'))
    if verb != "delete" and validation not in FIELD_VALIDATIONS:
        supported = ", ".join(json.dumps(v) for v in FIELD_VALIDATIONS)
        causes.append(("fieldValidation", "FieldValueNotSupported", f"Unsupported value: {json.dumps(validation)}: supported values: {supported}"))
    if causes:
        raise errors.invalid(OPTIONS_KIND[verb], "meta.k8s.io", "", causes)
    return WriteOptions(dry_run=bool(dry_run), field_validation=validation or "Warn")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


class Target:
    """What a URL names: a resource type, maybe a namespace, maybe one object (and subresource)."""

    def __init__(self, rt: ResourceType, namespace: str | None, name: str, subresource: str) -> None:
        self.rt, self.namespace, self.name, self.subresource = rt, namespace, name, subresource


def parse_path(path: str) -> Target | None:
    path = path.strip("/")
    for prefix in PREFIXES:
        if path.startswith(prefix + "/"):
            segments = path[len(prefix) + 1 :].split("/")
            break
    else:
        return None
    if segments[0] == "namespaces" and len(segments) >= 3 and resources.lookup(prefix, segments[2]) is not None:
        rt = resources.lookup(prefix, segments[2])
        rest = segments[3:]
        namespace: str | None = segments[1]
    else:
        rt = resources.lookup(prefix, segments[0])
        rest = segments[1:]
        namespace = None
    if rt is None or len(rest) > 2 or (rest and not rt.namespaced and namespace is not None):
        return None
    if rest and rt.namespaced and namespace is None:
        return None
    name = rest[0] if rest else ""
    subresource = rest[1] if len(rest) > 1 else ""
    if subresource and subresource != "status":
        return None
    return Target(rt, namespace, name, subresource)


class ApiServer:
    def __init__(self, store: Store, authorizer: Authorizer, address: Callable[[], str]) -> None:
        self.store = store
        self.authorizer = authorizer
        self.address = address
        self.stopping = asyncio.Event()
        self.requests: deque[Request] = deque(maxlen=10_000)
        self.faults: list[Fault] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except errors.ApiError as error:
            return _json(error.status(), error.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].strip("/")
        recorded = Request(request.method, "/" + path, {key: list(request.query.getall(key)) for key in set(request.query)})
        self.requests.append(recorded)
        discovery = self._discovery(path)
        if discovery is not None:
            if request.method != "GET":
                raise errors.ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return _json(discovery)
        if path in ("healthz", "livez", "readyz"):
            return web.Response(text="ok")
        target = parse_path(path)
        if target is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource", {})
        verb = self._verb(request, target)
        self.requests[-1] = Request(recorded.method, recorded.path, recorded.query, verb)
        self.authorizer.check(
            request.headers.get("Authorization"), verb, target.rt.group, target.rt.plural,
            target.namespace or "", target.name,
        )
        query = request.query
        for fault in self.faults:
            if fault.matches(verb, target.rt.plural, query):
                fault.times -= 1
                raise errors.ApiError(fault.code, "ServiceUnavailable" if fault.code == 503 else "InternalError", "injected fault")
        manager = query.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0]
        namespace = target.namespace or ""
        rt = target.rt
        if verb == "watch":
            return await self._watch(request, target)
        if verb == "list":
            matches = self._matcher(query)
            items, rv = self.store.list(rt, target.namespace, matches)
            return _json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(rv)}, "items": items})
        if verb == "get":
            return _json(self.store.get(rt, namespace, target.name))
        if verb == "create":
            options = write_options(verb, query)
            body = await self._body(request)
            if rt.namespaced and (body.get("metadata") or {}).get("namespace", namespace) != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            created_obj = self.store.create(rt, namespace, body, manager=manager, options=options)
            return _json(created_obj, 201, options.warnings)
        if verb == "update":
            options = write_options(verb, query)
            body = await self._body(request)
            replaced = self.store.replace(rt, namespace, target.name, body, manager=manager, subresource=target.subresource, options=options)
            return _json(replaced, 200, options.warnings)
        if verb == "patch":
            options = write_options(verb, query)
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            raw = await request.read()
            if content_type == "application/apply-patch+yaml" and self.store.find(rt, namespace, target.name) is None:
                self.authorizer.check(request.headers.get("Authorization"), "create", rt.group, rt.plural, namespace, target.name)
            obj, created = self.store.patch(
                rt, namespace, target.name, raw, content_type,
                manager=query.get("fieldManager") or (None if content_type == "application/apply-patch+yaml" else manager),
                force=_truthy(query.get("force")), subresource=target.subresource, options=options,
            )
            return _json(obj, 201 if created else 200, options.warnings)
        if verb == "delete":
            body = await self._body(request, optional=True)
            options = write_options(verb, query, body)
            gone = self.store.delete(rt, namespace, target.name, body.get("preconditions"), dry_run=options.dry_run)
            if rt.plural in ("namespaces", "pods"):
                return _json(gone)
            details = {"name": target.name, **({"group": rt.group} if rt.group else {}), "kind": rt.plural, "uid": gone["metadata"]["uid"]}
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
        if verb == "deletecollection":
            items, _ = self.store.list(rt, target.namespace, self._matcher(query))
            for item in items:
                self.store.delete(rt, item["metadata"].get("namespace", ""), item["metadata"]["name"])
            return _json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        raise errors.ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _discovery(self, path: str) -> JSON | None:
        if path == "openapi/v3":
            return openapi.root(self.address())
        if path.startswith("openapi/v3/"):
            return openapi.document(path[len("openapi/v3/") :]) or None
        if path == "version":
            return resources.SERVER_VERSION
        if path == "api":
            return resources.api_versions(self.address())
        if path == "apis":
            return resources.api_group_list()
        if path.startswith("apis/") and path.count("/") == 1:
            return resources.api_group(path.split("/")[1]) or None
        if path in ("api/v1", "apis/apps/v1"):
            return resources.api_resource_list(path)
        return None

    @staticmethod
    def _verb(request: web.Request, target: Target) -> str:
        method = request.method
        if method == "GET":
            if target.name:
                return "get"
            return "watch" if _truthy(request.query.get("watch")) else "list"
        if method == "POST" and not target.name:
            return "create"
        if method == "PUT" and target.name:
            return "update"
        if method == "PATCH" and target.name:
            return "patch"
        if method == "DELETE":
            return "delete" if target.name else "deletecollection"
        raise errors.ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @staticmethod
    def _matcher(query: Any) -> selectors.Matcher:
        labels = selectors.label_matcher(query.get("labelSelector"))
        field_sel = selectors.field_matcher(query.get("fieldSelector"))
        return lambda obj: labels(obj) and field_sel(obj)

    @staticmethod
    async def _body(request: web.Request, *, optional: bool = False) -> JSON:
        raw = await request.read()
        if not raw and optional:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise errors.bad_request(f"error decoding request body: {exc}") from None
        if not isinstance(body, dict):
            raise errors.bad_request("request body must be a JSON object")
        return body

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        since_text = request.query.get("resourceVersion") or ""
        since = int(since_text) if since_text not in ("", "0") else None
        timeout = float(request.query["timeoutSeconds"]) if request.query.get("timeoutSeconds") else None
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher, initial = self.store.watch(target.rt, target.namespace, self._matcher(request.query), since)
        except errors.ApiError as error:
            if error.code != 410:
                raise
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        try:
            for line in initial:
                await response.write(json.dumps(line).encode() + b"\n")
            while not self.stopping.is_set():
                if request.transport is None or request.transport.is_closing():
                    break
                wait = 0.5 if deadline is None else min(0.5, deadline - loop.time())
                if wait <= 0:
                    break
                try:
                    line = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    continue
                if line is None:
                    break
                await response.write(json.dumps(line).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass
        finally:
            self.store.watchers.discard(watcher)
        return response

    def stop_watches(self) -> None:
        self.stopping.set()
        for watcher in list(self.store.watchers):
            watcher.queue.put_nowait(None)
