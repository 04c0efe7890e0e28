"""Isolation through the API: one instance's tokens and events mean nothing to another.

Instances `a` and `b` each run their own `ApiServer` on their own schema of one shared
PostgreSQL. Each row is a probe of tests/isolation/table.py: a token of one instance tried
on an instance's gRPC, REST and UI, and each instance's `ListEvents` and `Watch` looked at
for the other's events. A probe reports "denied" only on the refusal the API gives for a
bad credential (gRPC UNAUTHENTICATED, HTTP 401, the UI's sign-in page); a deny on the
event probes is "the instance's own marker is visible, the other's is not", so an API
that shows nothing at all fails the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from eventstore.postgres import PostgresEventStore, PostgresSettings
from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.ui import session as ui_session
from tests.integration.test_api_support import Running, Stubs, bearer, grpc_stubs, running_api
from tests.isolation.store_env import StoreInstances, store_instances  # noqa: F401
from tests.isolation.table import Row, check

MARKERS = {"a": "alpha", "b": "beta"}
"""The application each instance declares: the marker its event probes look for."""


@dataclass
class Instance:
    name: str
    api: Running
    stubs: Stubs


@dataclass
class Pair:
    a: Instance
    b: Instance

    def __getitem__(self, name: str) -> Instance:
        return self.a if name == "a" else self.b


async def _apply_app(instance: Instance, name: str) -> None:
    await instance.stubs.applications.ApplyApplication(
        api_pb2.ApplyApplicationRequest(application=resources_pb2.Application(name=name, description="isolation")),
        metadata=bearer(instance.api.admin),
    )


@pytest.fixture(scope="module")
async def instance_stores(store_instances: StoreInstances) -> AsyncIterator[dict[str, PostgresEventStore]]:
    """Each API on its own provisioned instance, connected as that instance's service role."""
    async with contextlib.AsyncExitStack() as stack:
        stores = {}
        for name, provisioned in (("a", store_instances.a), ("b", store_instances.b)):
            store = await PostgresEventStore.open(PostgresSettings(dsn=provisioned.dsn, schema=provisioned.name))
            stack.push_async_callback(store.close)
            stores[name] = store
        yield stores


@pytest.fixture(scope="module")
async def instances(instance_stores: dict[str, PostgresEventStore], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    async with contextlib.AsyncExitStack() as stack:
        made = []
        for name in ("a", "b"):
            store = instance_stores[name]
            api = await stack.enter_async_context(running_api(store, tmp_path_factory.mktemp(f"api-{name}")))
            stubs = await stack.enter_async_context(grpc_stubs(api.grpc_target))
            instance = Instance(name, api, stubs)
            await _apply_app(instance, MARKERS[name])
            made.append(instance)
        yield Pair(*made)


# ---- probes: each returns whether the action was allowed ----------------------------


async def grpc_list(pair: Pair, token_of: str, server: str) -> bool:
    try:
        await pair[server].stubs.applications.ListApplications(
            api_pb2.ListApplicationsRequest(), metadata=bearer(pair[token_of].api.admin)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return False
        raise
    return True


async def rest_list(pair: Pair, token_of: str, server: str) -> bool:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{pair[server].api.base_url}/v1/applications",
            headers={"authorization": f"Bearer {pair[token_of].api.admin}"},
        ) as response:
            if response.status == 401:
                return False
            assert response.status == 200, await response.text()
            body = await response.json()
    assert MARKERS[server] in [app["name"] for app in body["applications"]]
    return True


async def ui_sign_in(pair: Pair, token_of: str, server: str) -> bool:
    base = pair[server].api.base_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/ui/login") as response:
            nonce = re.search(r'name="nonce" value="([^"]+)"', await response.text())
        assert nonce is not None, "the sign-in page has no nonce"
        async with http.post(
            f"{base}/ui/login",
            data={"token": pair[token_of].api.admin, "nonce": nonce.group(1), "next": "/ui/fleet"},
            allow_redirects=False,
        ) as response:
            if response.status == 401:
                assert "not valid" in await response.text()
                return False
            assert response.status == 303, await response.text()
            return ui_session.SESSION_COOKIE in response.cookies


async def ui_session_page(pair: Pair, token_of: str, server: str) -> bool:
    """A session cookie carrying the token, presented to a page (not the sign-in form)."""
    base = pair[server].api.base_url
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        jar.update_cookies({ui_session.SESSION_COOKIE: pair[token_of].api.admin})
        async with http.get(f"{base}/ui/fleet", allow_redirects=False) as response:
            if response.status == 303 and response.headers["Location"].startswith("/ui/login"):
                return False
            assert response.status == 200, await response.text()
            return True


async def events_list(pair: Pair, resource_of: str, server: str) -> bool:
    """Whether `server`'s ListEvents (as its own admin) shows `resource_of`'s application."""
    instance = pair[server]
    response = await instance.stubs.events.ListEvents(
        api_pb2.ListEventsRequest(limit=1000), metadata=bearer(instance.api.admin)
    )
    texts = [event.json for event in response.events]
    assert any(f'"{MARKERS[server]}"' in text for text in texts), "the instance's own events are not listed"
    return any(f'"{MARKERS[resource_of]}"' in text for text in texts)


async def watch(pair: Pair, resource_of: str, server: str) -> bool:
    """Whether `server`'s Watch (every event, as its own admin) delivers an application that
    `resource_of` declares while it watches, before a sentinel declared on `server` after it."""
    instance = pair[server]
    head = await instance.api.store.head()
    stream = instance.stubs.events.Watch(api_pb2.WatchRequest(after_position=head), metadata=bearer(instance.api.admin))
    suffix = f"{resource_of}{server}{len(_seen)}"
    _seen.append(suffix)
    watched, sentinel = f"watched-{suffix}", f"sentinel-{suffix}"
    await _apply_app(pair[resource_of], watched)
    await _apply_app(instance, sentinel)
    seen_watched = False
    try:
        async with asyncio.timeout(60):  # a bound on a hang, not a measurement
            async for event in stream:
                if f'"{watched}"' in event.json:
                    seen_watched = True
                if f'"{sentinel}"' in event.json:
                    return seen_watched
    finally:
        stream.cancel()
    raise AssertionError("the Watch stream ended before the sentinel")


_seen: list[str] = []

Probe = Callable[[Pair, str, str], Awaitable[bool]]
PROBES: dict[str, Probe] = {
    "grpc-list-applications": grpc_list,
    "rest-get-applications": rest_list,
    "ui-sign-in": ui_sign_in,
    "ui-session-page": ui_session_page,
    "list-events": events_list,
    "watch-events": watch,
}


@dataclass(frozen=True)
class Case:
    row: Row
    subject: str
    """The instance whose token (token probes) or whose events (event probes) are used."""
    server: str


def _token_rows(probe: str, what: str) -> list[Case]:
    allow = Row(f"api.a-token-{probe}-on-a", "instance a's admin token", f"instance a's {what}", probe, True, probe=probe)
    deny = Row(
        f"api.a-token-{probe}-on-b", "instance a's admin token", f"instance b's {what}", probe, False,
        pair=allow.id, probe=probe,
    )
    return [Case(allow, "a", "a"), Case(deny, "a", "b")]


def _event_rows(probe: str, what: str) -> list[Case]:
    allow = Row(f"api.a-events-{probe}-on-a", "instance a's admin token", f"a's events, through a's {what}", probe, True, probe=probe)
    deny = Row(
        f"api.a-events-{probe}-on-b", "instance b's admin token", f"a's events, through b's {what}", probe, False,
        pair=allow.id, probe=probe,
    )
    return [Case(allow, "a", "a"), Case(deny, "a", "b")]


CASES = [
    *_token_rows("grpc-list-applications", "gRPC ListApplications"),
    *_token_rows("rest-get-applications", "REST GET /v1/applications"),
    *_token_rows("ui-sign-in", "UI sign-in"),
    *_token_rows("ui-session-page", "UI page with a session cookie"),
    *_event_rows("list-events", "ListEvents"),
    *_event_rows("watch-events", "Watch stream"),
]
ROWS = [case.row for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=[case.row.id for case in CASES])
async def test_api_isolation(instances: Pair, case: Case) -> None:
    check(case.row, await PROBES[case.row.probe](instances, case.subject, case.server))
