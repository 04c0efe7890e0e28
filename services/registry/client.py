"""A client for the OCI distribution API: what Convoy asks a container registry.

Two questions only — "which digest does this tag (or digest) name?" and "which tags does this
repository have?" — asked the way the spec and the big registries expect: anonymous first,
then the challenge the registry names (Bearer token from its realm, cached per scope until it
expires; or Basic), `HEAD` with all four manifest media types in `Accept` (without the index
and list types a registry answers a single platform's digest, or 404 for OCI), `Link`
pagination followed verbatim (Quay's opaque tokens), 429 and 5xx retried with the delays the
registry asks for (injected sleep), and a client-side request spacing per registry.

Every failure is a `services.registry.errors` class naming the registry, repository,
reference and status, and saying whether a retry can help. Credentials go only to the
registry's own origin and to the token realm the registry named, and never into a log or a
message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp
import structlog
from multidict import CIMultiDictProxy
from yarl import URL

from services.registry import auth, errors, limits
from services.registry.reference import TAG, check_repository, is_digest

log = structlog.get_logger("convoy.registry")

MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(MEDIA_TYPES)
MAX_MANIFEST = 4 * 1024 * 1024
MAX_TAGS_PAGE = 4 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_RETRY_AFTER = 60.0
"""A registry asking for a longer pause gets RateLimited at once (with its `retry_after`):
the caller schedules that, a call does not hang for it."""
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    size: int | None


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    oversized: bool
    url: str


class _Unreachable(Exception):
    """No answer: connection refused or reset, DNS, timeout."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def basic_authorization(username: str, password: str) -> str:
    """The `Authorization` value for Basic auth (RFC 7617, UTF-8)."""
    if ":" in username:
        raise ValueError("a registry username cannot contain ':'")
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def next_link(values: Iterable[str]) -> str | None:
    """The target of the `rel="next"` link in `Link` headers, verbatim (None when absent)."""
    for value in values:
        for m in _LINK.finditer(value):
            for param in m.group(2).split(";"):
                key, _, rel = param.strip().partition("=")
                if key.strip().lower() == "rel" and "next" in rel.strip().strip('"').lower().split():
                    return m.group(1).strip()
    return None


def _tags_page(body: bytes) -> list[str]:
    try:
        page = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the tag list is not JSON") from None
    if not isinstance(page, dict):
        raise ValueError("the tag list is not a JSON object")
    tags = page.get("tags")
    if tags is None:
        return []
    if not isinstance(tags, list):
        raise ValueError("the tag list's `tags` is not a list")
    for tag in tags:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise ValueError(f"the tag list holds {_clip(repr(tag))}, which is not a tag")
    return tags


def _clip(text: str, limit: int = 200) -> str:
    text = _UNPRINTABLE.sub(" ", text)
    return text if len(text) <= limit else text[:limit] + "…"


def _status_text(answer: _Answer) -> str:
    """`404 MANIFEST_UNKNOWN`, `400 NAME_INVALID: invalid repository name`: the status and the
    registry's own error codes (and messages, when they add something)."""
    parts: list[str] = []
    try:
        body = json.loads(answer.body) if answer.body else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        for item in body["errors"][:3]:
            if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                continue
            code = _clip(item["code"], 60)
            message = item.get("message")
            if isinstance(message, str) and message and message.lower() != code.lower().replace("_", " "):
                parts.append(f"{code}: {_clip(message)}")
            else:
                parts.append(code)
    return f"{answer.status} {'; '.join(parts)}" if parts else str(answer.status)


def _codes(answer: _Answer) -> set[str]:
    try:
        body = json.loads(answer.body) if answer.body else None
    except (ValueError, UnicodeDecodeError):
        return set()
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return set()
    return {item["code"] for item in body["errors"] if isinstance(item, dict) and isinstance(item.get("code"), str)}


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """At most cap + 1 bytes of the body (one more than allowed tells it was too big)."""
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await response.content.read(cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _media_type(headers: CIMultiDictProxy[str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip()


def _length(headers: CIMultiDictProxy[str]) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


class RegistryClient:
    """One registry (one base URL, one set of credentials, one request spacing). Owns its
    aiohttp session unless it is given one; `close()` (or `async with`) releases it."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        username: str | None = None,
        password: str | None = None,
        requests_per_second: float | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f'registry "{name}": url {url!r} must be http:// or https:// with a host (and no query)')
        if (username is None) != (password is None):
            raise ValueError(f'registry "{name}": give both a username and a password, or neither')
        if max_attempts < 1:
            raise ValueError(f'registry "{name}": max_attempts must be at least 1')
        if timeout <= 0:
            raise ValueError(f'registry "{name}": timeout must be positive')
        self.name = name
        self.url = url.rstrip("/")
        self._origin = _origin(self.url)
        self._basic = None if username is None else basic_authorization(username, password or "")
        self._username = username
        self._use_basic = False
        self._tokens = auth.TokenCache()
        self._bearer_keys: dict[str, tuple[str, str, str]] = {}
        self._spacing = limits.RequestSpacing(rate=requests_per_second, clock=clock, sleep=sleep)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._jitter = jitter
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:
        return f"RegistryClient(name={self.name!r}, url={self.url!r})"

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- the two questions -------------------------------------------------------------

    async def resolve(self, repository: str, reference: str) -> Manifest:
        """The manifest a tag or digest names: its digest (what a release pins), media type
        and size. For a multi-platform image that is the index's digest."""
        self._check_repository(repository)
        pinned = is_digest(reference)
        if not pinned and not TAG.fullmatch(reference):
            raise errors.RegistryError(
                f"{repository}: {_clip(repr(reference))} is neither a tag nor a sha256 digest",
                registry=self.name, repository=repository,
            )
        what = f"{repository}@{reference}" if pinned else f"{repository}:{reference}"
        url = f"{self.url}/v2/{repository}/manifests/{reference}"
        head = await self._call("HEAD", url, repository=repository, what=what, accept=ACCEPT, cap=0)
        if head.status in (404, 405):
            # HEAD answers carry no body, so no error code: ask again to tell a missing
            # repository from a missing tag (and see it if it was pushed in between);
            # a registry without HEAD (405) is asked with GET.
            head = await self._call("GET", url, repository=repository, what=what, accept=ACCEPT, cap=MAX_MANIFEST)
        if head.status != 200:
            raise self._refusal(head, repository=repository, what=what, missing=errors.ManifestUnknown)
        if head.body or head.headers.get("Docker-Content-Digest") is None:
            answer = head if head.body else await self._call(
                "GET", url, repository=repository, what=what, accept=ACCEPT, cap=MAX_MANIFEST
            )
            if answer.status != 200:
                raise self._refusal(answer, repository=repository, what=what, missing=errors.ManifestUnknown)
            manifest = self._from_body(answer, repository=repository, what=what)
        else:
            manifest = Manifest(
                digest=self._digest_header(head, repository=repository, what=what),
                media_type=_media_type(head.headers),
                size=_length(head.headers),
            )
        if pinned and manifest.digest != reference:
            raise errors.BadAnswer(
                f"{what}: the registry answered a manifest with digest {manifest.digest}, not the one asked for",
                registry=self.name, repository=repository, status=200,
            )
        return manifest

    async def list_tags(self, repository: str, *, page_size: int | None = None, limit: int = 10_000) -> list[str]:
        """The repository's tags in the registry's order, at most `limit`, following `Link`
        pagination; `page_size` asks for pages of that many (`n`)."""
        self._check_repository(repository)
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be at least 1")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        what = f"{repository} (tag list)"
        url = f"{self.url}/v2/{repository}/tags/list"
        if page_size is not None:
            url += f"?n={page_size}"
        tags: list[str] = []
        fetched: set[str] = set()
        while True:
            fetched.add(url)
            answer = await self._call("GET", url, repository=repository, what=what, accept="application/json", cap=MAX_TAGS_PAGE)
            if answer.status != 200:
                raise self._refusal(answer, repository=repository, what=what, missing=errors.NameUnknown)
            if answer.oversized:
                raise self._bad(f"{what}: a page is larger than {MAX_TAGS_PAGE} bytes", repository)
            try:
                page = _tags_page(answer.body)
            except ValueError as e:
                raise self._bad(f"{what}: {e}", repository) from None
            tags.extend(page[: limit - len(tags)])
            link = next_link(answer.headers.getall("Link", []))
            if len(tags) >= limit or link is None:
                return tags
            try:
                target = urljoin(url, link)
                elsewhere = _origin(target) != self._origin
            except ValueError:
                raise self._bad(f"{what}: the next-page link {_clip(link)!r} is not a URL", repository) from None
            if elsewhere:
                raise self._bad(f"{what}: the next-page link points to another origin ({_clip(target)}); refused", repository)
            if target in fetched:
                raise self._bad(f"{what}: the next-page link repeats a page already fetched (a pagination loop)", repository)
            if not page:
                raise self._bad(f"{what}: an empty page with a next-page link", repository)
            url = target

    # --- one logical request: auth, then retries ---------------------------------------

    async def _call(self, method: str, url: str, *, repository: str, what: str, accept: str, cap: int) -> _Answer:
        scope = f"repository:{repository}:pull"
        sent = self._authorization(scope)
        answer = await self._retrying(method, url, headers=self._headers(accept, sent), cap=cap, repository=repository, what=what)
        if answer.status != 401:
            return answer
        await self._answer_challenge(answer, scope=scope, sent=sent, repository=repository, what=what)
        again = self._authorization(scope)
        answer = await self._retrying(method, url, headers=self._headers(accept, again), cap=cap, repository=repository, what=what)
        if answer.status == 401:
            key = self._bearer_keys.pop(scope, None)
            if key is not None:
                self._tokens.drop(key)
            raise errors.Unauthorized(
                f"{what}: the registry refused the {self._whose()} ({_status_text(answer)})",
                registry=self.name, repository=repository, status=401,
            )
        return answer

    @staticmethod
    def _headers(accept: str, authorization: str | None) -> dict[str, str]:
        headers = {"Accept": accept}
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers

    def _whose(self) -> str:
        return "anonymous access" if self._username is None else f'credentials of user "{self._username}"'

    def _authorization(self, scope: str) -> str | None:
        key = self._bearer_keys.get(scope)
        if key is not None:
            token = self._tokens.get(key, self._clock())
            if token is not None:
                return f"Bearer {token}"
        if self._use_basic and self._basic is not None:
            return self._basic
        return None

    async def _answer_challenge(self, answer: _Answer, *, scope: str, sent: str | None, repository: str, what: str) -> None:
        try:
            challenges = auth.parse_challenges(answer.headers.getall("WWW-Authenticate", []))
        except ValueError as e:
            raise self._bad(f"{what}: 401 with an unreadable challenge: {_clip(str(e))}", repository, status=401) from None
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            realm = bearer.params.get("realm", "")
            service = bearer.params.get("service", "")
            key = (realm, service, scope)
            self._tokens.drop(key)
            token, expires_in = await self._fetch_token(realm, service, scope, repository=repository, what=what)
            self._tokens.put(key, token, expires_in, self._clock())
            self._bearer_keys[scope] = key
            return
        if any(c.scheme == "basic" for c in challenges):
            if self._basic is None:
                raise errors.Unauthorized(
                    f"{what}: the registry requires credentials (401 Basic) and none are configured",
                    registry=self.name, repository=repository, status=401,
                )
            if sent is not None and sent.startswith("Basic "):
                raise errors.Unauthorized(
                    f"{what}: the registry refused the {self._whose()} ({_status_text(answer)})",
                    registry=self.name, repository=repository, status=401,
                )
            self._use_basic = True
            return
        schemes = ", ".join(sorted({c.scheme for c in challenges})) or "none"
        raise errors.Unauthorized(
            f"{what}: 401 without a challenge this client can answer (schemes: {schemes})",
            registry=self.name, repository=repository, status=401,
        )

    async def _fetch_token(self, realm: str, service: str, scope: str, *, repository: str, what: str) -> tuple[str, int]:
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._bad(f"{what}: the Bearer challenge's realm {_clip(realm)!r} is not an http(s) URL", repository, status=401)
        if self._origin[0] == "https" and parts.scheme != "https":
            raise self._bad(f"{what}: the registry named a plain-http token realm ({_clip(realm)}); no credentials sent there", repository, status=401)
        query = urlencode({"service": service, "scope": scope} if service else {"scope": scope}, quote_via=quote)
        url = f"{realm}{'&' if parts.query else '?'}{query}"
        headers = {"Accept": "application/json"}
        if self._basic is not None:
            headers["Authorization"] = self._basic
        answer = await self._retrying("GET", url, headers=headers, cap=auth.MAX_TOKEN_ANSWER, repository=repository, what=what)
        if answer.status in (401, 403):
            raise errors.Unauthorized(
                f"{what}: the token service refused the {self._whose()} ({_status_text(answer)})",
                registry=self.name, repository=repository, status=answer.status,
            )
        if answer.status != 200:
            raise errors.RegistryError(
                f"{what}: the token service answered {_status_text(answer)}",
                registry=self.name, repository=repository, status=answer.status,
            )
        if answer.oversized:
            raise self._bad(f"{what}: the token answer is larger than {auth.MAX_TOKEN_ANSWER} bytes", repository)
        try:
            return auth.parse_token_answer(answer.body)
        except ValueError as e:
            raise self._bad(f"{what}: {e}", repository) from None

    async def _retrying(self, method: str, url: str, *, headers: dict[str, str], cap: int, repository: str, what: str) -> _Answer:
        """Send until an answer that is not 429/5xx (or the attempts run out)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._send(method, url, headers=headers, cap=cap, repository=repository, what=what)
            except _Unreachable as e:
                if attempt >= self._max_attempts:
                    raise errors.Unavailable(
                        f"{what}: the registry could not be reached ({e}) after {attempt} attempts",
                        registry=self.name, repository=repository,
                    ) from None
                await self._pause(self._backoff(attempt), what=what, reason=str(e))
                continue
            if answer.status == 429:
                delay = limits.retry_after(answer.headers, wall_now=self._wall_clock())
                if attempt >= self._max_attempts or (delay is not None and delay > MAX_RETRY_AFTER):
                    later = "" if delay is None else f"; it asks to wait {delay:g} s"
                    raise errors.RateLimited(
                        f"{what}: rate limited ({_status_text(answer)}) after {attempt} attempts{later}",
                        registry=self.name, repository=repository, status=429, retry_after=delay,
                    )
                await self._pause(self._backoff(attempt) if delay is None else delay, what=what, reason="429")
                continue
            if answer.status >= 500:
                if attempt >= self._max_attempts:
                    raise errors.Unavailable(
                        f"{what}: the registry failed ({_status_text(answer)}) after {attempt} attempts",
                        registry=self.name, repository=repository, status=answer.status,
                    )
                await self._pause(self._backoff(attempt), what=what, reason=str(answer.status))
                continue
            if limits.quota_exhausted(answer.headers):
                delay = limits.retry_after(answer.headers, wall_now=self._wall_clock())
                if delay is not None:
                    self._spacing.hold(self._clock() + delay)
            return answer

    def _backoff(self, attempt: int) -> float:
        return limits.backoff(attempt, self._jitter())

    async def _pause(self, delay: float, *, what: str, reason: str) -> None:
        log.info("registry retry", registry=self.name, request=what, reason=reason, delay=round(delay, 3))
        await self._sleep(delay)

    async def _send(self, method: str, url: str, *, headers: dict[str, str], cap: int, repository: str, what: str) -> _Answer:
        """One HTTP exchange (redirects followed by hand, so credentials never follow one to
        another origin)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = URL(url, encoded=True)
            except ValueError:
                raise self._bad(f"{what}: {_clip(url)!r} is not a URL", repository) from None
            await self._spacing.acquire()
            try:
                async with self._session.request(
                    method, target, headers=headers, allow_redirects=False, timeout=self._timeout
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECTS and location:
                        url = urljoin(url, location)
                        if _origin(url) != origin:
                            headers = {k: v for k, v in headers.items() if k != "Authorization"}
                        if response.status == 303:
                            method = "GET"
                        continue
                    body, oversized = b"", False
                    if method != "HEAD":
                        body = await _read_capped(response, cap)
                        oversized = len(body) > cap
                        body = body[:cap]
                    return _Answer(response.status, response.headers, body, oversized, url)
            except aiohttp.InvalidURL:
                raise self._bad(f"{what}: {_clip(url)!r} is not a URL this client can request", repository) from None
            except (aiohttp.ClientError, TimeoutError) as e:
                raise _Unreachable(_clip(type(e).__name__ + (f": {e}" if str(e) else ""))) from None
        raise self._bad(f"{what}: more than {MAX_REDIRECTS} redirects", repository)

    # --- reading answers ---------------------------------------------------------------

    def _digest_header(self, answer: _Answer, *, repository: str, what: str) -> str:
        value = answer.headers.get("Docker-Content-Digest", "").strip()
        if not is_digest(value):
            raise self._bad(
                f"{what}: the Docker-Content-Digest header {_clip(value, 100)!r} is not sha256: followed by 64 lowercase hex digits",
                repository, status=answer.status,
            )
        return value

    def _from_body(self, answer: _Answer, *, repository: str, what: str) -> Manifest:
        if answer.oversized:
            raise self._bad(f"{what}: the manifest is larger than {MAX_MANIFEST} bytes", repository, status=answer.status)
        try:
            document = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError):
            raise self._bad(f"{what}: the manifest is not JSON", repository, status=answer.status) from None
        if not isinstance(document, dict):
            raise self._bad(f"{what}: the manifest is not a JSON object", repository, status=answer.status)
        digest = "sha256:" + hashlib.sha256(answer.body).hexdigest()
        if answer.headers.get("Docker-Content-Digest") is not None:
            claimed = self._digest_header(answer, repository=repository, what=what)
            if claimed != digest:
                raise self._bad(
                    f"{what}: the Docker-Content-Digest header says {claimed} but the manifest's bytes hash to {digest}",
                    repository, status=answer.status,
                )
        media_type = _media_type(answer.headers)
        if not media_type and isinstance(document.get("mediaType"), str):
            media_type = document["mediaType"]
        return Manifest(digest=digest, media_type=media_type, size=len(answer.body))

    def _refusal(self, answer: _Answer, *, repository: str, what: str, missing: type[errors.RegistryError]) -> errors.RegistryError:
        status = _status_text(answer)
        codes = _codes(answer)
        common = {"registry": self.name, "repository": repository, "status": answer.status}
        if answer.status == 404 or codes & {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"}:
            if "NAME_UNKNOWN" in codes or ("MANIFEST_UNKNOWN" not in codes and missing is errors.NameUnknown):
                return errors.NameUnknown(f"{what}: the repository does not exist ({status})", **common)
            return errors.ManifestUnknown(f"{what} does not exist ({status})", **common)
        if answer.status == 403 or codes & {"DENIED", "UNAUTHORIZED"}:
            return errors.Unauthorized(f"{what}: access denied to the {self._whose()} ({status})", **common)
        return errors.RegistryError(f"{what}: the registry refused the request ({status})", **common)

    def _bad(self, message: str, repository: str, *, status: int | None = None) -> errors.BadAnswer:
        return errors.BadAnswer(message, registry=self.name, repository=repository, status=status)

    def _check_repository(self, repository: str) -> None:
        try:
            check_repository(repository)
        except ValueError as e:
            raise errors.RegistryError(str(e), registry=self.name, repository=repository) from None
