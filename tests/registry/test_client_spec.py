"""The client against a spec-following local registry (tests/registry/spec_server.py), for
what Debian's 2.8 cannot show: pagination with `Link` (opaque tokens, other origins, loops),
the Bearer token flow and its cache, 429/5xx retries with the delays asked for, request
spacing, and every kind of answer the client must refuse. Time is a fake clock whose sleep
records the delay and advances it: nothing here waits."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from services.registry import errors
from services.registry.client import MAX_MANIFEST, RegistryClient, basic_authorization
from tests.registry.spec_server import INDEX, Registry, serving

WALL = 1_800_000_000.0


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def spec() -> AsyncIterator[Registry]:
    async with serving(Registry()) as registry:
        yield registry


def client(registry: Registry, time_: FakeTime, **kwargs: object) -> RegistryClient:
    kwargs.setdefault("username", registry.username)
    kwargs.setdefault("password", registry.password)
    kwargs.setdefault("sleep", time_.sleep)
    return RegistryClient(
        name="spec", url=registry.url, clock=time_.clock, wall_clock=lambda: WALL,
        jitter=lambda: 0.0, **kwargs,  # type: ignore[arg-type]
    )


# --- pagination ----------------------------------------------------------------------


@pytest.mark.parametrize("pagination", ["last", "opaque"])
async def test_pages_are_followed_each_once_and_complete(spec: Registry, time_: FakeTime, pagination: str) -> None:
    spec.pagination = pagination
    pushed = [f"1.{i}.0" for i in range(7)]
    for tag in pushed:
        spec.push("demo/app", tag)
    async with client(spec, time_) as registry:
        tags = await registry.list_tags("demo/app", page_size=2)
    assert tags == sorted(pushed)
    pages = spec.pages("demo/app")
    assert len(pages) == 4 and len(set(pages)) == 4
    assert pages[0] == "/v2/demo/app/tags/list?n=2"
    if pagination == "opaque":
        # The opaque token (with '/', '+' and '=' in it, URL-safe-encoded) went back verbatim:
        # the server takes each token once, so a mangled one would have failed.
        assert all("next_page=" in page for page in pages[1:])


async def test_limit_stops_the_listing(spec: Registry, time_: FakeTime) -> None:
    for i in range(7):
        spec.push("demo/app", f"t{i}")
    async with client(spec, time_) as registry:
        assert await registry.list_tags("demo/app", page_size=2, limit=3) == ["t0", "t1", "t2"]
    assert len(spec.pages("demo/app")) == 2


async def test_a_next_link_to_another_origin_is_refused(spec: Registry, time_: FakeTime) -> None:
    for i in range(3):
        spec.push("demo/app", f"t{i}")
    spec.link = lambda name, link: f"http://evil.invalid{link}"
    async with client(spec, time_) as registry:
        with pytest.raises(errors.BadAnswer) as refused:
            await registry.list_tags("demo/app", page_size=2)
    assert "points to another origin (http://evil.invalid/v2/demo/app/tags/list?n=2&last=t1); refused" in str(refused.value)
    assert not refused.value.retryable
    assert len(spec.pages("demo/app")) == 1


async def test_a_pagination_loop_is_detected(spec: Registry, time_: FakeTime) -> None:
    for i in range(5):
        spec.push("demo/app", f"t{i}")
    spec.link = lambda name, link: f"/v2/{name}/tags/list?n=2"  # always back to the first page
    async with client(spec, time_) as registry:
        with pytest.raises(errors.BadAnswer, match="repeats a page already fetched"):
            await registry.list_tags("demo/app", page_size=2)
    assert len(spec.pages("demo/app")) == 1


async def test_a_bad_tag_list_is_a_bad_answer(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    bodies = iter([b"not json", b'{"tags": "1.0.0"}', b'{"tags": [1]}', b'{"tags": ["bad tag!"]}'])
    spec.override = lambda request: web.Response(body=next(bodies), content_type="application/json")
    async with client(spec, time_) as registry:
        for expected in ("is not JSON", "`tags` is not a list", "holds 1, which is not a tag", "holds 'bad tag!'"):
            with pytest.raises(errors.BadAnswer, match=expected):
                await registry.list_tags("demo/app")


# --- Bearer tokens -------------------------------------------------------------------


async def test_bearer_token_flow_and_cache(spec: Registry, time_: FakeTime) -> None:
    spec.auth = "bearer"
    spec.expires_in = 300
    digest = spec.push("demo/app", "1.0.0")
    async with client(spec, time_) as registry:
        assert (await registry.resolve("demo/app", "1.0.0")).digest == digest
        assert len(spec.token_requests) == 1
        authorization, query = spec.token_requests[0]
        assert authorization == basic_authorization(spec.username, spec.password)
        assert query == {"service": "spec.registry", "scope": "repository:demo/app:pull"}
        # Anonymous first, then the same request with the token.
        assert [s.authorization is None for s in spec.seen] == [True, False]
        assert spec.seen[1].authorization is not None and spec.seen[1].authorization.startswith("Bearer ")

        # Within the token's life: no token request, no challenge.
        time_.now += 200
        assert (await registry.resolve("demo/app", "1.0.0")).digest == digest
        assert len(spec.token_requests) == 1 and len(spec.seen) == 3
        assert spec.seen[2].authorization == spec.seen[1].authorization

        # Past its life (minus the margin) the cached token is dropped: the next request goes
        # anonymous, is challenged, and a new token is fetched.
        time_.now += 100
        assert await registry.list_tags("demo/app") == ["1.0.0"]
        assert len(spec.token_requests) == 2
    # The registry never saw the password: only the realm it named did.
    assert all(s.authorization is None or s.authorization.startswith("Bearer ") for s in spec.seen)


async def test_anonymous_bearer_and_refused_credentials(spec: Registry, time_: FakeTime) -> None:
    spec.auth = "bearer"
    spec.expires_in = None  # the spec's default: 60 s
    spec.push("demo/app", "1.0.0")
    async with client(spec, time_, username=None, password=None) as anonymous:
        await anonymous.resolve("demo/app", "1.0.0")
        time_.now += 50
        await anonymous.resolve("demo/app", "1.0.0")
        assert len(spec.token_requests) == 1
        time_.now += 10
        await anonymous.resolve("demo/app", "1.0.0")
        assert len(spec.token_requests) == 2
    assert spec.token_requests[0][0] is None
    async with client(spec, time_, password="wrong") as wrong:
        with pytest.raises(errors.Unauthorized) as refused:
            await wrong.resolve("demo/app", "1.0.0")
    assert str(refused.value) == (
        'registry "spec": demo/app:1.0.0: the token service refused the credentials of user "robot" '
        "(401 UNAUTHORIZED: bad credentials); not retryable"
    )
    assert "wrong" not in str(refused.value)


async def test_basic_challenge(spec: Registry, time_: FakeTime) -> None:
    spec.auth = "basic"
    spec.push("demo/app", "1.0.0")
    async with client(spec, time_) as registry:
        await registry.resolve("demo/app", "1.0.0")
        await registry.resolve("demo/app", "1.0.0")
    # One challenge, then Basic on every request.
    assert [s.authorization is not None for s in spec.seen] == [False, True, True]


async def test_a_bearer_realm_that_is_not_http_is_refused(spec: Registry, time_: FakeTime) -> None:
    spec.override = lambda request: web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="file:///etc/passwd",service="x"'})
    spec.push("demo/app", "1.0.0")
    async with client(spec, time_) as registry:
        with pytest.raises(errors.BadAnswer, match="realm 'file:///etc/passwd' is not an http"):
            await registry.resolve("demo/app", "1.0.0")
    assert spec.token_requests == []


# --- 429 and failures ----------------------------------------------------------------


def failing(count: int, response: web.Response | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    left = [count]

    def override(request: web.Request) -> web.StreamResponse | None:
        if left[0] == 0:
            return None
        left[0] -= 1
        return web.Response(**kwargs)  # type: ignore[arg-type]

    return override


async def test_429_waits_exactly_what_retry_after_asks(spec: Registry, time_: FakeTime) -> None:
    digest = spec.push("demo/app", "1.0.0")
    spec.override = failing(2, status=429, headers={"Retry-After": "7"})
    async with client(spec, time_) as registry:
        assert (await registry.resolve("demo/app", "1.0.0")).digest == digest
    assert time_.sleeps == [7.0, 7.0]
    date = email.utils.formatdate(WALL - 100, usegmt=True)
    later = email.utils.formatdate(WALL - 97, usegmt=True)
    # An HTTP date is measured against the answer's own Date (3 s), not our wall clock.
    spec.override = failing(1, status=429, headers={"Retry-After": later, "Date": date})
    async with client(spec, time_) as registry:
        await registry.resolve("demo/app", "1.0.0")
    assert time_.sleeps[2:] == [3.0]
    spec.override = failing(1, status=429, headers={"RateLimit-Reset": "11", "RateLimit-Remaining": "0;w=21600"})
    async with client(spec, time_) as registry:
        await registry.resolve("demo/app", "1.0.0")
    assert time_.sleeps[3:] == [11.0]


async def test_429_forever_is_rate_limited(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    spec.override = failing(100, status=429, headers={"Retry-After": "2"}, text='{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
    async with client(spec, time_, max_attempts=3) as registry:
        with pytest.raises(errors.RateLimited) as limited:
            await registry.list_tags("demo/app")
    assert limited.value.retryable and limited.value.retry_after == 2.0 and limited.value.status == 429
    assert str(limited.value) == (
        'registry "spec": demo/app (tag list): rate limited (429 TOOMANYREQUESTS: slow down) after 3 attempts; '
        "it asks to wait 2 s; retryable"
    )
    assert time_.sleeps == [2.0, 2.0] and len(spec.seen) == 3
    # A pause longer than a call should hang is handed to the caller at once.
    spec.override = failing(100, status=429, headers={"Retry-After": "3600"})
    async with client(spec, time_) as registry:
        with pytest.raises(errors.RateLimited) as later:
            await registry.resolve("demo/app", "1.0.0")
    assert later.value.retry_after == 3600.0 and time_.sleeps == [2.0, 2.0]


async def test_5xx_then_success_and_5xx_forever(spec: Registry, time_: FakeTime) -> None:
    digest = spec.push("demo/app", "1.0.0")
    spec.override = failing(2, status=503, text="maintenance")
    async with client(spec, time_) as registry:
        assert (await registry.resolve("demo/app", "1.0.0")).digest == digest
    # Exponential backoff scaled by the (injected, zero) jitter into its lower half.
    assert time_.sleeps == [0.25, 0.5]
    spec.override = failing(100, status=502)
    async with client(spec, time_, max_attempts=4) as registry:
        with pytest.raises(errors.Unavailable) as down:
            await registry.resolve("demo/app", "1.0.0")
    assert down.value.retryable and down.value.status == 502
    assert str(down.value) == 'registry "spec": demo/app:1.0.0: the registry failed (502) after 4 attempts; retryable'
    assert time_.sleeps[2:] == [0.25, 0.5, 1.0]


async def test_connection_refused_is_unavailable(time_: FakeTime) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed at once: nobody listens there
    async with RegistryClient(name="gone", url=f"http://127.0.0.1:{port}", sleep=time_.sleep, clock=time_.clock, jitter=lambda: 0.0, max_attempts=2) as registry:
        with pytest.raises(errors.Unavailable) as down:
            await registry.list_tags("demo/app")
    assert down.value.retryable and down.value.status is None
    assert str(down.value).startswith('registry "gone": demo/app (tag list): the registry could not be reached (ClientConnectorError')
    assert time_.sleeps == [0.25]


# --- digests -------------------------------------------------------------------------


async def test_no_digest_header_means_get_and_sha256(spec: Registry, time_: FakeTime) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'
    digest = spec.push("demo/app", "1.0.0", body, INDEX)
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    spec.digest_header = False
    async with client(spec, time_) as registry:
        found = await registry.resolve("demo/app", "1.0.0")
    assert (found.digest, found.media_type, found.size) == (digest, INDEX, len(body))
    assert [s.method for s in spec.seen] == ["HEAD", "GET"]
    accept = spec.seen[0].accept or ""
    for media_type in (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ):
        assert media_type in accept


@pytest.mark.parametrize(
    ("answer", "method", "message"),
    [
        ({"headers": {"Docker-Content-Digest": "sha256:ABC"}}, "HEAD", "the Docker-Content-Digest header 'sha256:ABC' is not sha256: followed by 64"),
        ({"headers": {"Docker-Content-Digest": "md5:" + "0" * 32}}, "HEAD", "is not sha256"),
        ({"body": b"{not json"}, "GET", "the manifest is not JSON"),
        ({"body": b"[1, 2]"}, "GET", "the manifest is not a JSON object"),
        ({"body": b'{"a": "' + b"x" * MAX_MANIFEST + b'"}'}, "GET", f"the manifest is larger than {MAX_MANIFEST} bytes"),
        ({"body": b"{}", "headers": {"Docker-Content-Digest": "sha256:" + "0" * 64}}, "GET", "but the manifest's bytes hash to sha256:44136fa3"),
    ],
)
async def test_malformed_answers_are_bad_answers(spec: Registry, time_: FakeTime, answer: dict, method: str, message: str) -> None:
    spec.push("demo/app", "1.0.0")

    def override(request: web.Request) -> web.StreamResponse | None:
        if request.method != method:
            return None if method == "GET" else web.Response(status=500)
        return web.Response(status=200, **answer)

    spec.override = override
    spec.digest_header = False  # so HEAD (served normally when GET is broken) sends the client to GET
    async with client(spec, time_) as registry:
        with pytest.raises(errors.BadAnswer) as bad:
            await registry.resolve("demo/app", "1.0.0")
    assert message in str(bad.value) and not bad.value.retryable
    assert str(bad.value).startswith('registry "spec": demo/app:1.0.0: ')


async def test_a_digest_reference_must_match_the_answer(spec: Registry, time_: FakeTime) -> None:
    digest = spec.push("demo/app", "1.0.0")
    other = spec.push("demo/app", "2.0.0")
    spec.manifests[("demo/app", digest)] = spec.manifests[("demo/app", "2.0.0")]  # a lying registry
    async with client(spec, time_) as registry:
        assert (await registry.resolve("demo/app", other)).digest == other
        with pytest.raises(errors.BadAnswer, match=f"answered a manifest with digest {other}, not the one asked for"):
            await registry.resolve("demo/app", digest)


async def test_registry_error_bodies_go_into_the_message(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    body = '{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
    spec.override = lambda request: web.Response(status=403, text=body, content_type="application/json")
    async with client(spec, time_) as registry:
        with pytest.raises(errors.Unauthorized) as denied:
            await registry.list_tags("demo/app")
        assert str(denied.value) == (
            'registry "spec": demo/app (tag list): access denied to the credentials of user "robot" '
            "(403 DENIED: requested access to the resource is denied); not retryable"
        )
        spec.override = lambda request: web.Response(status=400, text='{"errors":[{"code":"NAME_INVALID","message":"invalid repository name"}]}')
        with pytest.raises(errors.RegistryError) as invalid:
            await registry.list_tags("demo/app")
        assert type(invalid.value) is errors.RegistryError
        assert "refused the request (400 NAME_INVALID: invalid repository name); not retryable" in str(invalid.value)
        spec.override = None
        with pytest.raises(errors.ManifestUnknown, match=r"demo/app:9 does not exist \(404 MANIFEST_UNKNOWN\)"):
            await registry.resolve("demo/app", "9")
        with pytest.raises(errors.NameUnknown, match=r"demo/other:1: the repository does not exist \(404 NAME_UNKNOWN"):
            await registry.resolve("demo/other", "1")
        with pytest.raises(errors.RegistryError, match="'bad tag' is neither a tag nor a sha256 digest"):
            await registry.resolve("demo/app", "bad tag")
        with pytest.raises(errors.RegistryError, match="component 'Demo' must be lowercase"):
            await registry.resolve("Demo/app", "1")


# --- request spacing -----------------------------------------------------------------


async def test_requests_per_second_spaces_requests(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    starts: list[float] = []

    def record(request: web.Request) -> None:
        starts.append(time_.now)
        return None

    spec.override = record
    async with client(spec, time_, requests_per_second=4) as registry:
        for _ in range(3):
            await registry.resolve("demo/app", "1.0.0")
        time_.now += 10  # idle: no debt carried over, and no burst beyond one
        await registry.resolve("demo/app", "1.0.0")
        await registry.resolve("demo/app", "1.0.0")
    assert starts == [1000.0, 1000.25, 1000.5, 1010.5, 1010.75]
    assert time_.sleeps == [0.25, 0.25, 0.25]


async def test_concurrent_callers_queue_behind_each_other(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:  # the clock stands still: all three ask at once
        sleeps.append(delay)

    async with client(spec, time_, requests_per_second=2, sleep=sleep) as registry:
        await asyncio.gather(*(registry.resolve("demo/app", "1.0.0") for _ in range(3)))
    # Each reserved its slot before waiting: 0, 0.5 and 1.0 s after the start.
    assert sorted(sleeps) == [0.5, 1.0]


async def test_a_used_up_quota_holds_the_next_request(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    answers = iter([{"RateLimit-Remaining": "0;w=21600", "RateLimit-Reset": "30"}])

    def quota(request: web.Request) -> web.StreamResponse | None:
        headers = next(answers, None)
        if headers is None:
            return None
        return web.json_response({"tags": ["1.0.0"]}, headers=headers)

    spec.override = quota
    async with client(spec, time_) as registry:
        assert await registry.list_tags("demo/app") == ["1.0.0"]
        assert time_.sleeps == []
        await registry.resolve("demo/app", "1.0.0")
    assert time_.sleeps == [30.0]


# --- credentials never travel or leak ------------------------------------------------


async def test_credentials_do_not_follow_a_redirect_to_another_origin(spec: Registry, time_: FakeTime) -> None:
    spec.auth = "basic"
    digest = spec.push("demo/app", "1.0.0")
    async with serving(Registry()) as elsewhere:
        elsewhere.push("demo/app", "1.0.0")

        def redirect(request: web.Request) -> web.StreamResponse | None:
            if request.headers.get("Authorization") is None:
                return None  # the challenge first
            return web.Response(status=307, headers={"Location": f"{elsewhere.url}{request.raw_path}"})

        spec.override = redirect
        async with client(spec, time_) as registry:
            assert (await registry.resolve("demo/app", "1.0.0")).digest == digest
    assert [s.authorization for s in elsewhere.seen] == [None]
    assert spec.seen[-1].authorization == basic_authorization(spec.username, spec.password)


async def test_no_secret_reaches_a_log_or_a_message(spec: Registry, time_: FakeTime, json_logs) -> None:  # type: ignore[no-untyped-def]
    spec.auth = "bearer"
    spec.push("demo/app", "1.0.0")
    spec.override = failing(2, status=503)
    async with client(spec, time_) as registry:
        await registry.resolve("demo/app", "1.0.0")
        token = (spec.seen[-1].authorization or "").removeprefix("Bearer ")
        assert token
        spec.override = failing(100, status=503)
        with pytest.raises(errors.Unavailable) as down:
            await registry.resolve("demo/app", "1.0.0")
        assert repr(registry) == f"RegistryClient(name='spec', url='{spec.url}')"
    logged = json_logs.getvalue()
    assert "registry retry" in logged  # the retries were logged, without their credentials
    for secret in (spec.password, token, basic_authorization(spec.username, spec.password).removeprefix("Basic ")):
        assert secret not in logged and secret not in str(down.value)


async def test_a_given_session_is_used_and_left_open(spec: Registry, time_: FakeTime) -> None:
    spec.push("demo/app", "1.0.0")
    async with aiohttp.ClientSession() as session:
        async with client(spec, time_, session=session) as registry:
            await registry.resolve("demo/app", "1.0.0")
        assert not session.closed


async def test_a_registry_without_head_is_asked_with_get(spec: Registry, time_: FakeTime) -> None:
    digest = spec.push("demo/app", "1.0.0")
    spec.override = lambda request: web.Response(status=405) if request.method == "HEAD" else None
    async with client(spec, time_) as registry:
        assert (await registry.resolve("demo/app", "1.0.0")).digest == digest
    assert [s.method for s in spec.seen] == ["HEAD", "GET"]


async def test_a_next_link_that_is_not_a_url_is_a_bad_answer(spec: Registry, time_: FakeTime) -> None:
    for i in range(3):
        spec.push("demo/app", f"t{i}")
    spec.link = lambda name, link: "http://[not-an-ip/x"
    async with client(spec, time_) as registry:
        with pytest.raises(errors.BadAnswer, match=r"the next-page link 'http://\[not-an-ip/x' is not a URL"):
            await registry.list_tags("demo/app", page_size=2)
