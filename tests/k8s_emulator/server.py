"""The HTTP face of the emulator: URL routing, verbs, query parameters, watch streams.

One catch-all route parses Kubernetes' URL grammar (`/api/v1/namespaces/{ns}/pods/{name}`,
`/apis/apps/v1/deployments` …) so every resource type in `resources` gets the same verbs
with the same semantics: get, list (labelSelector, fieldSelector), watch (`?watch=1`,
newline-delimited JSON events over a chunked response, resumable by resourceVersion),
create, update, patch (apply, merge, strategic, JSON patch) and delete. Errors are
Status objects from `errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.k8s_emulator import errors, resources, selectors
from tests.k8s_emulator.authz import Authorizer
from tests.k8s_emulator.resources import ResourceType
from tests.k8s_emulator.store import Store

JSON = dict[str, Any]
PREFIXES = ("apis/apps/v1", "api/v1")


def _json(body: JSON, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


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
        self.app = web.Application()
        self.app.router.add_route("*", "/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except errors.ApiError as error:
            return _json(error.status(), error.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].strip("/")
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
        self.authorizer.check(
            request.headers.get("Authorization"), verb, target.rt.group, target.rt.plural,
            target.namespace or "", target.name,
        )
        query = request.query
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
            body = await self._body(request)
            if rt.namespaced and (body.get("metadata") or {}).get("namespace", namespace) != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            return _json(self.store.create(rt, namespace, body, manager=manager), 201)
        if verb == "update":
            body = await self._body(request)
            return _json(self.store.replace(rt, namespace, target.name, body, manager=manager, subresource=target.subresource))
        if verb == "patch":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            raw = await request.read()
            if content_type == "application/apply-patch+yaml" and self.store.find(rt, namespace, target.name) is None:
                self.authorizer.check(request.headers.get("Authorization"), "create", rt.group, rt.plural, namespace, target.name)
            obj, created = self.store.patch(
                rt, namespace, target.name, raw, content_type,
                manager=query.get("fieldManager") or (None if content_type == "application/apply-patch+yaml" else manager),
                force=_truthy(query.get("force")), subresource=target.subresource,
            )
            return _json(obj, 201 if created else 200)
        if verb == "delete":
            body = await self._body(request, optional=True)
            gone = self.store.delete(rt, namespace, target.name, body.get("preconditions"))
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
