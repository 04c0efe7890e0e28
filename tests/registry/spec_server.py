"""A small registry that follows the distribution spec where Debian's 2.8 cannot show it:
`n`/`last` pagination with `Link` (plain or Quay-style opaque tokens), the Bearer token flow
(a `/token` realm that checks Basic credentials and records what it was asked), and answers
a test replaces (`Registry.override`: 429s, 5xx, malformed headers, bad bodies).

A real aiohttp server on a free loopback port; everything it received is recorded, so tests
assert on what the client actually sent, not on what it meant to send.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from services.registry.client import basic_authorization

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Seen:
    method: str
    path_qs: str
    authorization: str | None
    accept: str | None


@dataclass
class Registry:
    auth: str = "none"
    """`none`, `bearer` (token realm at /token) or `basic`."""
    username: str = "robot"
    password: str = "s3cret-pw"
    expires_in: int | None = 300
    service: str = "spec.registry"
    pagination: str = "last"
    """`last` (next link `?n=…&last=…`) or `opaque` (Quay-style `next_page` token)."""
    default_page: int | None = None
    """Page size when the client sends no `n` (None: everything)."""
    link: Callable[[str, str], str] | None = None
    """Replace the next link: (repository, spec link) → the link sent."""
    tags: dict[str, list[str]] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    digest_header: bool = True
    override: Callable[[web.Request], web.StreamResponse | None] | None = None
    """Called first for every /v2 request; an answer it returns is sent instead."""
    seen: list[Seen] = field(default_factory=list)
    token_requests: list[tuple[str | None, dict[str, str]]] = field(default_factory=list)
    url: str = ""
    _issued: set[str] = field(default_factory=set)
    _cursors: dict[str, int] = field(default_factory=dict)

    def push(self, repository: str, tag: str, body: bytes | None = None, media_type: str = MANIFEST) -> str:
        body = body if body is not None else json.dumps({"schemaVersion": 2, "mediaType": media_type, "tag": tag}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[(repository, tag)] = (body, media_type)
        self.manifests[(repository, digest)] = (body, media_type)
        if tag not in self.tags.setdefault(repository, []):
            self.tags[repository].append(tag)
        return digest

    def pages(self, repository: str) -> list[str]:
        return [s.path_qs for s in self.seen if s.path_qs.startswith(f"/v2/{repository}/tags/list")]

    # --- handlers ----------------------------------------------------------------------

    def _challenge(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if self.auth == "bearer":
            if header is not None and header.startswith("Bearer ") and header[7:] in self._issued:
                return None
            name = request.match_info.get("name", "")
            scope = f',scope="repository:{name}:pull"' if name else ""
            challenge = f'Bearer realm="{self.url}/token",service="{self.service}"{scope}'
        elif self.auth == "basic":
            if header == basic_authorization(self.username, self.password):
                return None
            challenge = 'Basic realm="spec registry"'
        else:
            return None
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": challenge})

    async def _v2(self, request: web.Request, answer: Callable[[web.Request], web.StreamResponse]) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.raw_path, request.headers.get("Authorization"), request.headers.get("Accept")))
        if self.override is not None:
            replaced = self.override(request)
            if replaced is not None:
                return replaced
        refused = self._challenge(request)
        if refused is not None:
            return refused
        return answer(request)

    def _base(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    def _manifest(self, request: web.Request) -> web.StreamResponse:
        name, ref = request.match_info["name"], request.match_info["ref"]
        if name not in self.tags:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]}, status=404)
        if (name, ref) not in self.manifests:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, status=404)
        body, media_type = self.manifests[(name, ref)]
        headers = {"Content-Type": media_type}
        if self.digest_header:
            headers["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=body, headers=headers)

    def _tags(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.tags:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]}, status=404)
        tags = sorted(self.tags[name])
        n = int(request.query["n"]) if "n" in request.query else self.default_page
        if "next_page" in request.query:
            start = self._cursors.pop(request.query["next_page"])  # each token works once
        elif "last" in request.query:
            start = next((i for i, t in enumerate(tags) if t > request.query["last"]), len(tags))
        else:
            start = 0
        end = len(tags) if n is None else start + n
        page = tags[start:end]
        headers = {}
        if end < len(tags):
            if self.pagination == "opaque":
                token = base64.urlsafe_b64encode(secrets.token_bytes(9) + b"/+=").decode()
                self._cursors[token] = end
                link = f"/v2/{name}/tags/list?n={n}&next_page={token}"
            else:
                link = f"/v2/{name}/tags/list?n={n}&last={page[-1]}"
            if self.link is not None:
                link = self.link(name, link)
            headers["Link"] = f'<{link}>; rel="next"'
        return web.json_response({"name": name, "tags": page}, headers=headers)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests.append((request.headers.get("Authorization"), dict(request.query)))
        header = request.headers.get("Authorization")
        if header is not None and header != basic_authorization(self.username, self.password):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, status=401)
        token = secrets.token_urlsafe(16)
        self._issued.add(token)
        answer: dict[str, object] = {"access_token": token} if len(self.token_requests) % 2 == 0 else {"token": token}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer)

    def app(self) -> web.Application:
        app = web.Application()

        def route(answer: Callable[[web.Request], web.StreamResponse]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def handle(request: web.Request) -> web.StreamResponse:
                return await self._v2(request, answer)

            return handle

        app.router.add_get("/v2/", route(self._base))
        app.router.add_route("GET", "/v2/{name:.+}/manifests/{ref}", route(self._manifest))
        app.router.add_route("HEAD", "/v2/{name:.+}/manifests/{ref}", route(self._manifest))
        app.router.add_get("/v2/{name:.+}/tags/list", route(self._tags), allow_head=False)
        app.router.add_get("/token", self._token)
        return app


@contextlib.asynccontextmanager
async def serving(registry: Registry) -> AsyncIterator[Registry]:
    runner = web.AppRunner(registry.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        registry.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield registry
    finally:
        await runner.cleanup()
