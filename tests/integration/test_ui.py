"""The web UI over HTTP against a real ApiServer: sign-in, the session cookie and CSRF,
roles, time travel, the history's paging and permalinks, and the live stream's resume
and end. (The browser story is tests/ui.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from schemas.convoy.v1 import api_pb2, options_pb2
from services.api.ui import session as ui_session
from tests.integration.test_api_support import (  # noqa: F401
    Running,
    api,
    bearer,
    create_token,
    grpc_stubs,
    seed,
)


async def signed_in(base: str, secret: str) -> aiohttp.ClientSession:
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.get(f"{base}/ui/login") as r:
        nonce = re.search(r'name="nonce" value="([^"]+)"', await r.text())
    assert nonce is not None
    async with s.post(
        f"{base}/ui/login", data={"token": secret, "nonce": nonce.group(1), "next": "/ui/fleet"}, allow_redirects=False
    ) as r:
        assert r.status == 303, await r.text()
        assert r.headers["Location"] == "/ui/fleet"
        cookie = r.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith(ui_session.SESSION_COOKIE + "="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/" in session_cookie
    return s


@pytest.fixture
async def seeded(api: Running) -> AsyncIterator[Running]:  # noqa: F811
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        await stubs.releases.Deploy(
            api_pb2.DeployRequest(application="shop", service="api", version="v1"), metadata=bearer(api.admin)
        )
    yield api


async def test_pages_need_a_session_and_sign_in_sets_a_strict_http_only_cookie(seeded: Running) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{seeded.base_url}/ui/fleet?q=api", allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith("/ui/login?next=")
        async with anonymous.get(f"{seeded.base_url}/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/fleet")
    s = await signed_in(seeded.base_url, seeded.admin)
    async with s:
        async with s.get(f"{seeded.base_url}/ui/fleet") as r:
            html = await r.text()
            assert r.status == 200
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert "shop" in html and 'data-channel="staging"' in html
        assert seeded.admin not in html  # the secret is in the cookie only, never in a page


async def test_a_wrong_token_or_a_forged_sign_in_is_refused(seeded: Running) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{seeded.base_url}/ui/login") as r:
            nonce = re.search(r'name="nonce" value="([^"]+)"', await r.text())
        assert nonce is not None
        async with s.post(f"{seeded.base_url}/ui/login", data={"token": "cvy_nope_x", "nonce": nonce.group(1)}) as r:
            assert r.status == 401
            assert "not valid" in await r.text()
    async with aiohttp.ClientSession() as s:  # no nonce cookie: a sign-in posted from another site
        async with s.post(f"{seeded.base_url}/ui/login", data={"token": seeded.admin, "nonce": "x"}) as r:
            assert r.status == 403
            assert not any(c.key == ui_session.SESSION_COOKIE for c in s.cookie_jar)


async def test_a_form_without_the_sessions_csrf_token_is_refused_and_records_nothing(seeded: Running) -> None:
    head = await seeded.store.head()
    s = await signed_in(seeded.base_url, seeded.admin)
    async with s:
        form = {"application": "shop", "service": "api", "channel": "prod", "decision": "approve"}
        for csrf in (None, "", "0" * 64, ui_session.csrf_token("cvy_someone_else")):
            data = form | ({"csrf": csrf} if csrf is not None else {})
            async with s.post(f"{seeded.base_url}/ui/actions/approve", data=data, allow_redirects=False) as r:
                assert r.status == 403, csrf
                assert "CSRF" in await r.text()
        async with s.post(f"{seeded.base_url}/ui/logout", data={}, allow_redirects=False) as r:
            assert r.status == 403
    assert await seeded.store.head() == head


async def test_a_viewer_sees_no_controls_and_the_api_refuses_its_approval(seeded: Running) -> None:
    async with grpc_stubs(seeded.grpc_target) as stubs:
        viewer = await create_token(stubs, seeded.admin, options_pb2.ROLE_VIEWER, name="vera")
    s = await signed_in(seeded.base_url, viewer.secret)
    async with s:
        for page in ("/ui/approvals", "/ui/apps/shop", "/ui/apps/shop/services/api"):
            async with s.get(seeded.base_url + page) as r:
                html = await r.text()
                assert r.status == 200, page
            assert "/ui/actions/approve" not in html and "Deploy a version" not in html, page
        head = await seeded.store.head()
        # Even with its own valid CSRF token, the handler layer's role check refuses it.
        data = {"csrf": ui_session.csrf_token(viewer.secret), "application": "shop", "service": "api",
                "channel": "prod", "decision": "approve"}
        async with s.post(f"{seeded.base_url}/ui/actions/approve", data=data, allow_redirects=False) as r:
            assert r.status == 403
            assert "needs the approver role" in await r.text()
        assert await seeded.store.head() == head


async def test_an_approval_through_the_ui_is_recorded_with_its_reason_and_actor(seeded: Running) -> None:
    s = await signed_in(seeded.base_url, seeded.admin)
    async with s:
        data = {"csrf": ui_session.csrf_token(seeded.admin), "application": "shop", "service": "api",
                "channel": "prod", "decision": "reject", "reason": "not tonight", "next": "/ui/approvals"}
        async with s.post(f"{seeded.base_url}/ui/actions/approve", data=data, allow_redirects=False) as r:
            assert r.status == 303, await r.text()
            assert r.headers["Location"] == "/ui/approvals?notice=rejected"
    async with grpc_stubs(seeded.grpc_target) as stubs:
        listed = await stubs.events.ListEvents(
            api_pb2.ListEventsRequest(types=["ApprovalRejected"]), metadata=bearer(seeded.admin)
        )
    assert len(listed.events) == 1
    assert '"reason": "not tonight"' in listed.events[0].json
    assert listed.events[0].actor == "bootstrap-admin"


async def test_time_travel_shows_the_past_with_a_banner_and_refuses_a_bad_moment(seeded: Running) -> None:
    s = await signed_in(seeded.base_url, seeded.admin)
    async with s:
        async with s.get(f"{seeded.base_url}/ui/fleet?at=1") as r:
            html = await r.text()
        assert "You are looking at the past" in html and "position 1" in html
        assert "No service matches" in html  # at position 1 nothing was declared yet
        async with s.get(f"{seeded.base_url}/ui/fleet") as r:
            assert "You are looking at the past" not in await r.text()
        async with s.get(f"{seeded.base_url}/ui/fleet?at=yesterday-ish") as r:
            assert r.status == 400
            assert "ISO-8601" in await r.text()
        async with s.get(f"{seeded.base_url}/ui/history?at=99999") as r:
            assert r.status == 400
            assert "beyond the last recorded position" in await r.text()


async def test_the_history_pages_newest_first_to_the_start_and_each_event_has_a_permalink(seeded: Running) -> None:
    head = await seeded.store.head()
    s = await signed_in(seeded.base_url, seeded.admin)
    seen: list[int] = []
    async with s:
        url = f"{seeded.base_url}/ui/history"
        for _ in range(20):
            async with s.get(url) as r:
                html = await r.text()
            seen += [int(p) for p in re.findall(r'<td><a href="/ui/events/(\d+)">', html)]
            older = re.search(r'href="(/ui/history\?[^"]*before=\d+[^"]*)"', html)
            if older is None:
                break
            url = seeded.base_url + older.group(1).replace("&amp;", "&")
        assert seen == list(range(head, 0, -1))
        async with s.get(f"{seeded.base_url}/ui/events/{head}") as r:
            assert r.status == 200
            assert "ReleaseCreated" in await r.text()
        async with s.get(f"{seeded.base_url}/ui/events/{head + 100}") as r:
            assert r.status == 404


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        line = (await response.content.readline()).decode()
        if line.startswith("id: "):
            ids.append(int(line[4:]))
    return ids


async def test_the_live_stream_resumes_from_last_event_id_and_ends_with_the_session(seeded: Running) -> None:
    async with grpc_stubs(seeded.grpc_target) as stubs:
        viewer = await create_token(stubs, seeded.admin, options_pb2.ROLE_VIEWER, name="watcher")
    head = await seeded.store.head()
    cookies = {ui_session.SESSION_COOKIE: viewer.secret}
    async with aiohttp.ClientSession(cookies=cookies) as s:
        async with s.get(f"{seeded.base_url}/ui/stream", headers={"Last-Event-ID": str(head - 3)}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            assert await read_events(r, 3) == [head - 2, head - 1, head]  # nothing missed, nothing repeated
            async with grpc_stubs(seeded.grpc_target) as stubs:
                await stubs.releases.PauseConvergence(
                    api_pb2.PauseConvergenceRequest(application="shop", service="api", reason="freeze"),
                    metadata=bearer(seeded.admin),
                )
                assert await read_events(r, 1) == [head + 1]  # a new commit arrives while the page is open
                await stubs.tokens.RevokeToken(
                    api_pb2.RevokeTokenRequest(token_id=viewer.token_id, reason="left"), metadata=bearer(seeded.admin)
                )
            # The revocation is itself an event: the stream re-checks the session and ends
            # (the read returns at the end of the response instead of waiting forever).
            rest = await asyncio.wait_for(r.content.read(), timeout=60)
            assert f"id: {head + 3}".encode() not in rest
        async with s.get(f"{seeded.base_url}/ui/stream") as r:
            assert r.status == 401


async def test_a_stream_from_a_position_that_is_not_one_is_a_400(seeded: Running) -> None:
    async with aiohttp.ClientSession(cookies={ui_session.SESSION_COOKIE: seeded.admin}) as s:
        for value in ("9" * 30, "-1", "abc"):
            async with s.get(f"{seeded.base_url}/ui/stream", headers={"Last-Event-ID": value}) as r:
                assert r.status == 400, value


async def test_bad_addresses_and_values_get_a_clear_4xx_never_a_5xx(seeded: Running) -> None:
    s = await signed_in(seeded.base_url, seeded.admin)
    async with s:
        for path, status in (
            ("/ui/fleet?page=0", 400), ("/ui/fleet?size=abc", 400), ("/ui/fleet?state=sideways", 400),
            ("/ui/history?before=-3", 400), ("/ui/history?app=shop&service=%00", 200),
            ("/ui/apps/nope", 404), ("/ui/apps/shop/services/nope", 404), ("/ui/apps/Shop!", 400),
            ("/ui/apps/" + "a" * 5000, 400), ("/ui/events/0", 404), ("/ui/events/99999999", 404),
            ("/ui/apps/shop/services/api/deploy?version=v9&params=novalue", 400),
            ("/ui/fleet?at=" + "9" * 30, 400), ("/ui/history?before=" + "9" * 30, 400),
            ("/ui/runtimes?at=" + "9" * 19, 400), ("/ui/fleet?page=" + "9" * 40, 400),
        ):
            async with s.get(seeded.base_url + path, allow_redirects=False) as r:
                assert r.status == status, (path, r.status, (await r.text())[:300])
        csrf = ui_session.csrf_token(seeded.admin)
        for next_value in ("/ui/fleet\r\nSet-Cookie: x=1", "https://evil.example/", "//evil.example/", "/\\evil"):
            data = {"csrf": csrf, "application": "shop", "service": "api", "channel": "prod", "decision": "reject",
                    "reason": "no", "next": next_value}
            async with s.post(f"{seeded.base_url}/ui/actions/approve", data=data, allow_redirects=False) as r:
                assert r.status in (303, 409), (next_value, r.status, (await r.text())[:300])
                if r.status == 303:
                    assert r.headers["Location"].startswith("/ui/fleet?notice="), r.headers["Location"]
                    assert "Set-Cookie" not in r.headers or "x=1" not in r.headers["Set-Cookie"]
