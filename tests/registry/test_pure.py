"""The client's pure parts: image references, `WWW-Authenticate` challenges and token
answers, the token cache, and reading `Retry-After`/rate-limit headers."""

from __future__ import annotations

import email.utils

import pytest

from services.registry import auth, limits
from services.registry.client import next_link
from services.registry.reference import ImageReference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest", "canonical"),
    [
        ("nginx", "registry-1.docker.io", "library/nginx", None, None, "registry-1.docker.io/library/nginx"),
        ("nginx:1.27", "registry-1.docker.io", "library/nginx", "1.27", None, "registry-1.docker.io/library/nginx:1.27"),
        ("docker.io/bitnami/redis:7", "registry-1.docker.io", "bitnami/redis", "7", None, "registry-1.docker.io/bitnami/redis:7"),
        ("index.docker.io/nginx", "registry-1.docker.io", "library/nginx", None, None, "registry-1.docker.io/library/nginx"),
        ("127.0.0.1:5000/demo/app:1.2.3", "127.0.0.1:5000", "demo/app", "1.2.3", None, "127.0.0.1:5000/demo/app:1.2.3"),
        ("localhost/app", "localhost", "app", None, None, "localhost/app"),
        (f"ghcr.io/o/r/img:v1@{DIGEST}", "ghcr.io", "o/r/img", "v1", DIGEST, f"ghcr.io/o/r/img:v1@{DIGEST}"),
        (f"quay.io/org/app@{DIGEST}", "quay.io", "org/app", None, DIGEST, f"quay.io/org/app@{DIGEST}"),
        ("demo/app", "registry-1.docker.io", "demo/app", None, None, "registry-1.docker.io/demo/app"),
    ],
)
def test_references(text: str, host: str, repository: str, tag: str | None, digest: str | None, canonical: str) -> None:
    ref = ImageReference.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repository, tag, digest)
    assert str(ref) == canonical
    assert ImageReference.parse(str(ref)) == ref
    assert ref.pinned(DIGEST) == f"{host}/{repository}@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty or surrounded by whitespace"),
        (" nginx", "empty or surrounded by whitespace"),
        ("nginx@sha256:abc", "digest 'sha256:abc' is not sha256: followed by 64 lowercase hex digits"),
        ("nginx:-bad", "tag '-bad' must be 1-128 characters"),
        ("Demo/app", "component 'Demo' must be lowercase"),
        ("host.io//app", "component '' must be lowercase"),
        ("bad_host.io:x/app", "is not a valid registry host"),
    ],
)
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        ImageReference.parse(text)
    assert message in str(refused.value)


def test_pinned_refuses_a_bad_digest() -> None:
    with pytest.raises(ValueError, match="is not sha256"):
        ImageReference.parse("nginx").pinned("sha256:ABC")


def test_challenges_with_quoted_commas() -> None:
    [bearer] = auth.parse_challenges([
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"'
    ])
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:samalba/my-app:pull,push", "error": "insufficient_scope",
    }
    basic, bearer2 = auth.parse_challenges(['Basic realm="a \\"quoted\\" realm", Bearer Realm=https://x/t , service = s'])
    assert (basic.scheme, basic.params) == ("basic", {"realm": 'a "quoted" realm'})
    assert (bearer2.scheme, bearer2.params) == ("bearer", {"realm": "https://x/t", "service": "s"})
    assert auth.parse_challenges(["Basic", "Bearer realm=\"r\""])[1].params == {"realm": "r"}
    for bad, message in (('Bearer realm="open', "not closed"), ("Bearer realm=", "has no value"), ("(x)", r"unexpected '\('")):
        with pytest.raises(ValueError, match=message):
            auth.parse_challenges([bad])


def test_token_answers() -> None:
    assert auth.parse_token_answer(b'{"token": "t", "expires_in": 300}') == ("t", 300)
    assert auth.parse_token_answer(b'{"access_token": "a"}') == ("a", 60)
    for body, message in (
        (b"<html>", "not JSON"), (b"[]", "not a JSON object"), (b'{"token": ""}', "no `token` or `access_token`"),
        (b'{"token": "t", "expires_in": -1}', "`expires_in` is not a positive number"),
        (b'{"token": "t", "expires_in": true}', "`expires_in` is not a positive number"),
        (b'{"token": "t\\r\\nX-Injected: 1"}', "characters a header cannot carry"),
    ):
        with pytest.raises(ValueError, match=message) as refused:
            auth.parse_token_answer(body)
        assert "t\"" not in str(refused.value)


def test_token_cache_expires_with_a_margin() -> None:
    cache = auth.TokenCache()
    key = ("realm", "service", "repository:a:pull")
    cache.put(key, "t", 60, now=100.0)
    assert cache.get(key, 154.9) == "t"
    assert cache.get(key, 155.0) is None  # 60 s minus the 5 s margin
    cache.put(key, "short", 10, now=0.0)
    assert cache.get(key, 8.9) == "short" and cache.get(key, 9.0) is None


def test_retry_after_and_quota_headers() -> None:
    wall = 1_800_000_000.0
    assert limits.retry_after({"Retry-After": "12"}, wall_now=wall) == 12.0
    assert limits.retry_after({"Retry-After": email.utils.formatdate(wall + 30, usegmt=True)}, wall_now=wall) == 30.0
    assert limits.retry_after({"Retry-After": email.utils.formatdate(wall - 30, usegmt=True)}, wall_now=wall) == 0.0
    assert limits.retry_after({"RateLimit-Reset": "40"}, wall_now=wall) == 40.0
    assert limits.retry_after({"X-RateLimit-Reset": str(int(wall) + 25)}, wall_now=wall) == 25.0
    assert limits.retry_after({"Retry-After": "soon"}, wall_now=wall) is None
    assert limits.retry_after({}, wall_now=wall) is None
    assert limits.quota_exhausted({"RateLimit-Remaining": "0;w=21600"})
    assert not limits.quota_exhausted({"RateLimit-Remaining": "76;w=21600"})
    assert not limits.quota_exhausted({})
    assert [limits.backoff(n, 0.0) for n in (1, 2, 3, 10)] == [0.25, 0.5, 1.0, 15.0]
    assert limits.backoff(1, 0.999999) == pytest.approx(0.5)


def test_next_links() -> None:
    assert next_link(['</v2/a/tags/list?n=2&last=b>; rel="next"']) == "/v2/a/tags/list?n=2&last=b"
    assert next_link(['<https://q.io/x?next_page=abc%3D>; rel=next']) == "https://q.io/x?next_page=abc%3D"
    assert next_link(['</prev>; rel="prev", </next>; rel="next"']) == "/next"
    assert next_link(['</first>; rel="first"']) is None
    assert next_link([]) is None
