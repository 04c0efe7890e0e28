"""The API over REST/JSON against a real PostgreSQL: the same flow as gRPC in proto3
JSON, auth, idempotency (also across transports), read-your-writes, error statuses,
a bounded fuzz loop that must never see a 5xx, the OpenAPI document, /healthz, and
ApplyDeclarations (all or nothing, roles, limits, idempotency) in JSON."""

from __future__ import annotations

import asyncio
import io
import json
import random
import string
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eventstore.codec import convoy_registry
from eventstore.types import AppendRequest, NewEvent
from schemas.convoy.v1 import api_pb2, options_pb2
from services.api.methods import METHODS
from services.planner.clock import FakeClock
from services.planner.runner import Planner
from tests.conftest import eventually
from tests.integration.test_api_support import (
    ROLES,
    Running,
    api,  # noqa: F401  (fixture)
    create_token,
    grpc_stubs,
    http_session,
    running_api,
    seed,
)
from tests.unit.planner.world import faulty_engine

RUNTIME = {"runtime": {"name": "eu-1", "kind": "RUNTIME_KIND_KUBERNETES", "labels": {"region": "eu"}}}
APPLICATION = {
    "application": {
        "name": "shop",
        "releaseChannels": [
            {"name": "staging", "runtimes": [{"runtime": "eu-1"}]},
            {
                "name": "prod",
                "runtimes": [{"runtime": "eu-1"}],
                "preconditions": [
                    {"channelStable": {"channel": "staging"}},
                    {"manualApproval": {"name": "release-manager", "minApprovers": 1}},
                ],
            },
        ],
    }
}
SERVICE = {"service": {"application": "shop", "name": "api", "replicas": 2, "programs": [{"image": "r.example/api:1"}]}}


def auth(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


async def call(
    session: aiohttp.ClientSession, api: Running, verb: str, path: str, *, secret: str | None = None,
    body: Any = None, raw: bytes | None = None, params: Any = None, headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    all_headers = {**(auth(secret) if secret else {}), **(headers or {})}
    data: Any = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if isinstance(data, bytes) and len(data) > 1024 * 1024:
        data = io.BytesIO(data)  # aiohttp warns about large raw byte bodies
    async with session.request(verb, api.base_url + path, data=data, params=params, headers=all_headers) as response:
        text = await response.text()
        assert response.content_type == "application/json", (response.status, text[:200])
        return response.status, json.loads(text)


async def rest_seed(session: aiohttp.ClientSession, api: Running) -> None:
    for path, body in (("/v1/runtimes", RUNTIME), ("/v1/applications", APPLICATION), ("/v1/services", SERVICE)):
        status, answer = await call(session, api, "PUT", path, secret=api.admin, body=body)
        assert status == 200 and answer["changed"] is True, answer


async def test_four_eyes_over_rest(api: Running) -> None:
    """A deployer cannot approve their own release when the approval excludes the deployer;
    the release records who deployed it."""
    four_eyes = json.loads(json.dumps(APPLICATION))
    four_eyes["application"]["releaseChannels"][1]["preconditions"][1]["manualApproval"]["excludeDeployer"] = True
    async with http_session() as s:
        for path, body in (("/v1/runtimes", RUNTIME), ("/v1/applications", four_eyes), ("/v1/services", SERVICE)):
            status, answer = await call(s, api, "PUT", path, secret=api.admin, body=body)
            assert status == 200, answer
        tokens = {}
        for name in ("carol", "dave"):
            status, token = await call(
                s, api, "POST", "/v1/tokens", secret=api.admin, body={"name": name, "role": "ROLE_APPROVER"}
            )
            assert status == 200
            tokens[name] = token["secret"]
        status, deployed = await call(
            s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=tokens["carol"], body={"version": "v1"}
        )
        assert status == 200 and deployed["release"]["createdBy"] == "carol"
        path = "/v1/applications/shop/services/api:approve"
        status, refused = await call(s, api, "POST", path, secret=tokens["carol"], body={"channel": "prod"})
        message = refused["error"]["message"]
        assert status == 403 and "deployed by carol" in message and "four eyes" in message, refused
        status, approved = await call(s, api, "POST", path, secret=tokens["dave"], body={"channel": "prod"})
        assert status == 200 and approved["changed"], approved


async def test_as_of_reads_over_rest(api: Running) -> None:
    """GetConvergence and Why as of a past position or time: the catalog as it stood then,
    and clear 400s for nonsense."""
    async with http_session() as s:
        await rest_seed(s, api)
        status, answer = await call(s, api, "GET", "/v1/events", secret=api.admin, params={"limit": "1"})
        first = int(answer["events"][0]["position"])
        path = "/v1/applications/shop/convergence"
        status, past = await call(s, api, "GET", path, secret=api.admin, params={"as_of.position": str(first)})
        # At the first position (the runtime) the application did not exist yet.
        assert status == 404 and "does not exist" in past["error"]["message"], past
        status, now = await call(s, api, "GET", path, secret=api.admin)
        status, past = await call(s, api, "GET", path, secret=api.admin, params={"as_of.position": now["position"]})
        assert status == 200 and past["position"] == now["position"], past
        status, past = await call(
            s, api, "GET", path, secret=api.admin, params={"as_of.time": "2100-01-01T00:00:00Z"}
        )
        assert status == 200 and past["position"] == now["position"]
        why = "/v1/applications/shop/services/api/why"
        status, explained = await call(s, api, "GET", why, secret=api.admin, params={"as_of.position": now["position"]})
        assert status == 200 and explained["position"] == now["position"]
        assert explained["channels"][0]["summary"] == "no release has reached this channel yet"
        # The catalog queries answer as declared then: before the service, before an update.
        before_update = now["position"]
        changed = json.loads(json.dumps(APPLICATION))
        changed["application"]["description"] = "the shop, renamed"
        status, answer = await call(s, api, "PUT", "/v1/applications", secret=api.admin, body=changed)
        assert status == 200 and answer["changed"]
        status, app_then = await call(s, api, "GET", "/v1/applications/shop", secret=api.admin,
                                      params={"as_of.position": before_update})
        status_now, app_now = await call(s, api, "GET", "/v1/applications/shop", secret=api.admin)
        assert status == 200 and app_then.get("description", "") == "" and app_now["description"] == "the shop, renamed"
        status, services_then = await call(s, api, "GET", "/v1/applications/shop/services", secret=api.admin,
                                           params={"as_of.position": str(int(before_update) - 1)})
        assert status == 200 and services_then.get("services", []) == [], services_then  # the service came last
        for params, field in (
            ({"as_of.position": "5", "as_of.time": "2026-01-01T00:00:00Z"}, "as_of"),
            ({"as_of.position": "-3"}, "as_of.position"),
            ({"as_of.position": "99999999"}, "as_of.position"),
            ({"as_of.time": "not a time"}, "asOf.time"),
        ):
            status, refused = await call(s, api, "GET", path, secret=api.admin, params=params)
            assert status == 400, (params, refused)
            assert field in json.dumps(refused["error"]), (params, refused)


async def test_rest_flow_with_pages_and_events(api: Running) -> None:
    async with http_session() as s:
        await rest_seed(s, api)
        status, token = await call(
            s, api, "POST", "/v1/tokens", secret=api.admin, body={"name": "ci", "role": "ROLE_APPROVER"}
        )
        assert status == 200 and token["secret"].startswith("cvy_") and token["role"] == "ROLE_APPROVER"
        status, deployed = await call(
            s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=token["secret"], body={"version": "v1"}
        )
        assert status == 200 and deployed["write"]["changed"] and deployed["release"]["version"] == "v1"
        status, approved = await call(
            s, api, "POST", "/v1/applications/shop/services/api:approve", secret=token["secret"],
            body={"channel": "prod", "comment": "lgtm"},
        )
        assert status == 200 and int(approved["position"]) > int(deployed["write"]["position"])

        status, app = await call(s, api, "GET", "/v1/applications/shop", secret=token["secret"])
        assert status == 200 and [c["name"] for c in app["releaseChannels"]] == ["staging", "prod"]
        status, svc = await call(s, api, "GET", "/v1/applications/shop/services/api", secret=token["secret"])
        assert status == 200 and svc["replicas"] == 2
        status, releases = await call(s, api, "GET", "/v1/applications/shop/services/api/releases", secret=api.admin)
        assert [r["version"] for r in releases["releases"]] == ["v1"]

        for name in ("eu-2", "eu-3"):
            body = {"runtime": {**RUNTIME["runtime"], "name": name}}
            assert (await call(s, api, "PUT", "/v1/runtimes", secret=api.admin, body=body))[0] == 200
        names, page_token = [], ""
        while True:
            params = {"page.pageSize": "2", **({"page.page_token": page_token} if page_token else {})}
            status, page = await call(s, api, "GET", "/v1/runtimes", secret=api.admin, params=params)
            assert status == 200 and len(page["runtimes"]) <= 2
            names += [r["runtime"]["name"] for r in page["runtimes"]]
            page_token = page["nextPageToken"]
            if not page_token:
                break
        assert names == ["eu-1", "eu-2", "eu-3"]

        status, events = await call(
            s, api, "GET", "/v1/events", secret=api.admin,
            params=[("application", "shop"), ("types", "ReleaseCreated"), ("types", "convoy.v1.ApprovalGranted")],
        )
        assert status == 200 and [e["type"] for e in events["events"]] == [
            "convoy.v1.ReleaseCreated",
            "convoy.v1.ApprovalGranted",
        ]
        assert events["events"][1]["actor"] == "ci" and json.loads(events["events"][1]["json"])["channel"] == "prod"
        status, paused = await call(
            s, api, "POST", "/v1/runtimes/eu-1:pause", secret=api.admin, body={"reason": "maintenance"}
        )
        assert status == 200 and paused["changed"]
        status, rt = await call(s, api, "GET", "/v1/runtimes/eu-1", secret=api.admin)
        assert rt["paused"] is True and rt["pauseReason"] == "maintenance"
        status, revoked = await call(s, api, "DELETE", f"/v1/tokens/{token['tokenId']}", secret=api.admin,
                                     params={"reason": "done"})
        assert status == 200 and revoked["changed"]
        assert (await call(s, api, "GET", "/v1/applications/shop", secret=token["secret"]))[0] == 401


ROUTES = [
    ("PUT", "/v1/applications", APPLICATION, "admin"),
    ("GET", "/v1/applications", None, "viewer"),
    ("DELETE", "/v1/runtimes/eu-9", None, "admin"),
    ("POST", "/v1/applications/shop/services/api:deploy", {"version": "v7"}, "deployer"),
    ("POST", "/v1/applications/shop/services/api:approve", {"channel": "prod"}, "approver"),
    ("GET", "/v1/tokens", None, "admin"),
    ("GET", "/v1/events", None, "viewer"),
]


async def test_rest_refuses_unauthenticated_and_underprivileged(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs, http_session() as s:
        await seed(stubs, api.admin)
        tokens = {name: (await create_token(stubs, api.admin, role, name)).secret for name, role in ROLES.items()}
        order = list(ROLES)
        for verb, path, body, least in ROUTES:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
                status, answer = await call(s, api, verb, path, body=body, headers=headers)
                assert status == 401 and answer["error"]["status"] == "UNAUTHENTICATED", (verb, path)
            for role in order[: order.index(least)]:
                status, answer = await call(s, api, verb, path, secret=tokens[role], body=body)
                assert status == 403 and answer["error"]["status"] == "PERMISSION_DENIED", (verb, path, role)
            status, _ = await call(s, api, verb, path, secret=tokens[least], body=body)
            assert status not in (401, 403), (verb, path, least)


async def test_rest_idempotency_replay_mismatch_and_across_transports(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs, http_session() as s:
        await seed(stubs, api.admin)
        path = "/v1/applications/shop/services/api:deploy"
        key = {"Idempotency-Key": "rest-deploy-1"}
        status, first = await call(s, api, "POST", path, secret=api.admin, body={"version": "v1"}, headers=key)
        assert status == 200
        status, again = await call(s, api, "POST", path, secret=api.admin, body={"version": "v1"}, headers=key)
        assert status == 200 and again == first
        status, other = await call(s, api, "POST", path, secret=api.admin, body={"version": "v2"}, headers=key)
        assert status == 409 and "already used" in other["error"]["message"]
        # The same key and request over gRPC answers the same release.
        via_grpc = await stubs.releases.Deploy(
            api_pb2.DeployRequest(application="shop", service="api", version="v1"),
            metadata=(("authorization", f"Bearer {api.admin}"), ("idempotency-key", "rest-deploy-1")),
        )
        assert via_grpc.release.id == first["release"]["id"]
        assert list(via_grpc.write.event_ids) == first["write"]["eventIds"]
        status, bad = await call(s, api, "POST", path, secret=api.admin, body={"version": "v3"},
                                 headers={"Idempotency-Key": "\u00e9t\u00e9"})
        assert status == 400


async def test_rest_read_your_writes_and_noop(api: Running, tmp_path: Path) -> None:
    async with running_api(api.store, tmp_path / "second") as second, http_session() as s:
        await rest_seed(s, api)
        head = await api.store.head()
        status, noop = await call(s, api, "PUT", "/v1/applications", secret=api.admin, body=APPLICATION)
        assert status == 200 and noop == {"position": "0", "eventIds": [], "changed": False}
        assert await api.store.head() == head
        for i in range(5):
            body = {"runtime": {"name": f"rt-{i}", "kind": "RUNTIME_KIND_KUBERNETES"}}
            status, written = await call(s, api, "PUT", "/v1/runtimes", secret=api.admin, body=body)
            assert status == 200, written
            status, seen = await call(
                s, second, "GET", f"/v1/runtimes/rt-{i}", secret=api.admin, params={"minPosition": written["position"]}
            )
            assert status == 200 and seen["runtime"]["name"] == f"rt-{i}"
        status, listed = await call(
            s, second, "GET", "/v1/runtimes", secret=api.admin, params={"page.minPosition": str(head + 5)}
        )
        assert status == 200 and len(listed["runtimes"]) == 6
        status, beyond = await call(s, second, "GET", "/v1/runtimes", secret=api.admin, params={"page.minPosition": "999999"})
        assert status == 400 and beyond["error"]["violations"][0]["field"] == "page.min_position"


ERRORS: list[tuple[str, str, dict[str, Any], int]] = [
    ("PUT", "/v1/applications", {"raw": b"{not json"}, 400),
    ("PUT", "/v1/applications", {"raw": b"[1, 2]"}, 400),
    ("PUT", "/v1/applications", {"raw": b"\xff\xfe"}, 400),
    ("PUT", "/v1/applications", {"raw": b"[" * 100_000}, 400),
    ("PUT", "/v1/applications", {"body": {"application": {"name": "x", "bogus": 1}}}, 400),
    ("PUT", "/v1/applications", {"body": {"application": {"name": 12}}}, 400),
    ("PUT", "/v1/applications", {"body": {"application": {"name": "Not A Name"}}}, 400),
    ("PUT", "/v1/applications", {"body": {"application": {"name": "x"}}, "params": {"x": "1"}}, 400),
    ("PUT", "/v1/runtimes", {"body": {"runtime": {"name": "x", "kind": "RUNTIME_KIND_NOPE"}}}, 400),
    ("PUT", "/v1/runtimes", {"raw": b"{" + b'"a":' * 10 + b"1}"}, 400),
    ("GET", "/v1/applications", {"params": {"page.pageSize": "-1"}}, 400),
    ("GET", "/v1/applications", {"params": {"page.pageSize": "lots"}}, 400),
    ("GET", "/v1/applications", {"params": {"page.pageToken": "!!!"}}, 400),
    ("GET", "/v1/applications", {"params": {"nope": "1"}}, 400),
    ("GET", "/v1/applications", {"params": {"page": "1"}}, 400),
    ("GET", "/v1/events", {"params": {"since": "yesterday"}}, 400),
    ("GET", "/v1/events", {"params": {"limit": "99999999999"}}, 400),
    ("GET", "/v1/applications/%FF%FE", {}, 400),
    ("GET", "/v1/applications/missing", {}, 404),
    ("GET", "/v1/applications/shop/services/missing", {}, 404),
    ("GET", "/v1/nowhere", {}, 404),
    ("PATCH", "/v1/applications", {}, 405),
    ("POST", "/v1/applications/shop/services/api:deploy", {"body": {"version": "v1"}}, 409),
    ("DELETE", "/v1/applications/shop", {}, 409),
    ("POST", "/v1/applications/shop/services/api:deploy", {"body": {"service": "other", "version": "v5"}}, 400),
    ("PUT", "/v1/applications", {"raw": b" " * (5 * 1024 * 1024)}, 413),
]


async def test_a_value_no_process_can_take_is_refused_at_deploy_and_nothing_recorded(api: Running) -> None:
    """The issue's `{"version":"v9","parameters":{"docroot":"\u0000"}}`: 400 naming the
    parameter, no release recorded (it used to be applied, then wedge the workload)."""
    async with http_session() as s:
        await rest_seed(s, api)
        head = await api.store.head()
        status, answer = await call(s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=api.admin,
                                    body={"version": "v9", "parameters": {"docroot": "\u0000"}})
        assert status == 400, answer
        assert 'parameters["docroot"]' in answer["error"]["message"] and "NUL" in answer["error"]["message"]
        assert await api.store.head() == head


async def test_why_names_an_input_the_planner_rejected(api: Running) -> None:
    """A deploy the planner could not plan (a bug, here injected through the Engine seam)
    is not silently ignored: `why` names it, with the event that records the rejection."""
    async with http_session() as s:
        await rest_seed(s, api)
        async with Planner(store=api.store, registry=convoy_registry(), clock=FakeClock(datetime.now(UTC)),
                           engine=faulty_engine()) as planner:
            status, answer = await call(s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=api.admin,
                                        body={"version": "boom"})
            assert status == 200, answer
            await eventually(lambda: planner.stats.rejected == 1, message="the planner rejected the deploy")
            status, explained = await call(s, api, "GET", "/v1/applications/shop/services/api/why", secret=api.admin,
                                           params={"min_position": str(planner.rejections[0].position)})
    assert status == 200, explained
    staging = explained["channels"][0]
    [line] = [d for d in staging["details"] if "could not plan" in d]
    assert "ReleaseCreated" in line and "KeyError: 'boom'" in line and "decided nothing" in line
    assert any(e["type"] == "convoy.v1.PlannerInputRejected" for e in staging["evidence"])


async def test_rest_errors_map_to_statuses(api: Running) -> None:
    async with http_session() as s:
        await rest_seed(s, api)
        assert (await call(s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=api.admin,
                           body={"version": "v1"}))[0] == 200
        for verb, path, kwargs, expected in ERRORS:
            status, answer = await call(s, api, verb, path, secret=api.admin, **kwargs)
            assert status == expected, (verb, path, kwargs.get("params"), answer)
            assert answer["error"]["code"] == expected and answer["error"]["message"]
            assert answer["error"]["correlationId"]


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**64), 10**30, 3.5, 1e308])
    if kind == 3:
        return "".join(rng.choice(string.printable + "\u00e9\u2603\U0001f600\x00") for _ in range(rng.randrange(20)))
    if kind == 4:
        return rng.choice(["ROLE_ADMIN", "1s", "2024-01-01T00:00:00Z", "shop", "api", "eu-1", "", "v1"])
    if kind == 5:
        return "x" * rng.choice([63, 64, 300, 70_000])
    if kind == 6:
        return [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["name", "application", "service", "runtime", "version", "labels", "role", "page", "releaseChannels",
            "programs", "scope", "kind", "bogus", "pageSize", "channel", "release_channels", "exec", "since"]
    return {rng.choice(keys): _garbage(rng, depth + 1) for _ in range(rng.randrange(5))}


def _segment(rng: random.Random) -> str:
    return rng.choice(["shop", "api", "eu-1", "x" * 300, "%FF", "%2F", "a%20b", "..", "-", "UPPER", "%00", "\u00e9",
                       "tok-1", "a:b", "%25"])


async def test_fuzzed_requests_never_get_a_5xx(api: Running) -> None:
    rng = random.Random(20240611)
    routes = [m.http for m in METHODS if m.http is not None]
    async with grpc_stubs(api.grpc_target) as stubs, http_session() as s:
        await seed(stubs, api.admin)
        for i in range(400):
            route = routes[i % len(routes)]
            path = route.path
            for field in route.path_fields:
                path = path.replace("{" + field + "}", _segment(rng))
            kwargs: dict[str, Any] = {}
            if route.body == "*":
                choice = rng.randrange(4)
                if choice == 0:
                    kwargs["raw"] = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
                else:
                    kwargs["body"] = _garbage(rng)
            else:
                keys = ["page.pageSize", "page.page_token", "minPosition", "limit", "types", "since", "application",
                        "afterPosition", "reason", "page", "bogus", "page.minPosition", "scope"]
                kwargs["params"] = [(rng.choice(keys), str(_garbage(rng, 3))) for _ in range(rng.randrange(4))]
            headers = {"Idempotency-Key": f"fuzz-{i}"} if rng.random() < 0.3 else None
            async with s.request(
                route.method,
                api.base_url + path,
                data=kwargs.get("raw") if "raw" in kwargs else json.dumps(kwargs.get("body")).encode()
                if "body" in kwargs else None,
                params=kwargs.get("params"),
                headers={**auth(api.admin), **(headers or {})},
            ) as response:
                text = await response.text()
                assert response.status < 500, (route.method, path, kwargs, text[:300])
    assert api.server.projection.running


async def test_openapi_document_and_healthz(api: Running) -> None:
    async with http_session() as s:
        async with s.get(api.base_url + "/healthz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with s.get(api.base_url + "/openapi.json") as response:
            assert response.status == 200
            doc = await response.json()
    assert doc["openapi"].startswith("3.")
    operations = {op["operationId"]: op for path in doc["paths"].values() for op in path.values()}
    assert set(operations) == {m.name for m in METHODS if m.http is not None}
    deploy = doc["paths"]["/v1/applications/{application}/services/{service}:deploy"]["post"]
    assert {p["name"] for p in deploy["parameters"] if p["in"] == "path"} == {"application", "service"}
    body = deploy["requestBody"]["content"]["application/json"]["schema"]
    assert "version" in body["properties"] and "application" not in body["properties"]
    assert body["additionalProperties"] is False
    events = doc["paths"]["/v1/events"]["get"]
    assert {"afterPosition", "types", "since"} <= {p["name"] for p in events["parameters"]}
    listing = doc["paths"]["/v1/applications"]["get"]
    assert {"page.pageSize", "page.pageToken", "page.minPosition"} <= {p["name"] for p in listing["parameters"]}
    assert "convoy.v1.Application" in doc["components"]["schemas"]


async def test_schemathesis_finds_no_contract_violations(api: Running, tmp_path: Path) -> None:
    """schemathesis (when installed) fuzzes every operation from /openapi.json: no 5xx,
    statuses, content types, Allow headers and response bodies as documented, and
    schema-invalid requests refused. Not checked: that every schema-valid request is
    accepted — the domain's rules (DNS names, references) are stricter than a JSON
    schema says. RevokeToken is left out: revoking the run's own token ends the run."""
    schemathesis = pytest.importorskip("schemathesis")
    command = (
        "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; sys.exit(schemathesis())"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", command, "run", f"{api.base_url}/openapi.json",
        "-H", f"Authorization: Bearer {api.admin}",
        "--exclude-checks", "positive_data_acceptance",
        "--exclude-operation-id", "RevokeToken",
        "--phases", "coverage,fuzzing",
        "--max-examples", "5", "--workers", "1", "--seed", "1", "--warnings", "off", "--no-color",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,  # it writes .schemathesis/
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    text = output.decode(errors="replace").replace(api.admin, "<admin>")
    assert process.returncode == 0, f"schemathesis {schemathesis.__version__}:\n{text[-6000:]}"


# -- ApplyDeclarations over REST ----------------------------------------------------------

SET_PATH = "/v1/declarations:apply"
DB = {"resource": {"name": "db", "scope": "RESOURCE_SCOPE_APPLICATION", "application": "shop"}}


def service_using(*resources: str) -> dict[str, Any]:
    return {"service": {**SERVICE["service"], "resources": list(resources)}}


async def test_rest_declaration_set_is_all_or_nothing(api: Running) -> None:
    async with http_session() as s:
        head = await api.store.head()
        status, refused = await call(
            s, api, "POST", SET_PATH, secret=api.admin,
            body={"declarations": [RUNTIME, APPLICATION, service_using("db")]},
        )
        assert status == 400, refused
        assert refused["error"]["violations"][0]["field"] == "declarations[2].service.resources[0]"
        assert 'service "shop/api": resource "db" is not linked' in refused["error"]["message"]
        assert await api.store.head() == head
        status, listed = await call(s, api, "GET", "/v1/events", secret=api.admin, params={"afterPosition": head})
        assert status == 200 and listed.get("events", []) == []

        # The same set with the resource linked before the service: one commit, in order.
        body = {"declarations": [RUNTIME, APPLICATION, DB, service_using("db")]}
        key = {"Idempotency-Key": "rest-set-1"}
        status, applied = await call(s, api, "POST", SET_PATH, secret=api.admin, body=body, headers=key)
        assert status == 200, applied
        assert [r["outcome"] for r in applied["results"]] == ["DECLARATION_OUTCOME_CREATED"] * 4
        assert int(applied["write"]["position"]) == head + 4 == await api.store.head()
        status, again = await call(s, api, "POST", SET_PATH, secret=api.admin, body=body, headers=key)
        assert status == 200 and again == applied  # replayed: still "created"
        status, fresh = await call(s, api, "POST", SET_PATH, secret=api.admin, body=body)
        assert status == 200 and not fresh["write"].get("changed", False)
        assert {r["outcome"] for r in fresh["results"]} == {"DECLARATION_OUTCOME_UNCHANGED"}
        assert await api.store.head() == head + 4


async def test_rest_declaration_set_limits_and_roles(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs, http_session() as s:
        deployer = (await create_token(stubs, api.admin, options_pb2.ROLE_DEPLOYER, "ci")).secret
        head = await api.store.head()
        status, denied = await call(s, api, "POST", SET_PATH, secret=deployer, body={"declarations": [RUNTIME]})
        assert status == 403 and denied["error"]["message"].startswith(
            'declarations[0] (runtime "eu-1"): ApplyRuntime needs the admin role'
        ), denied
        many = [{"runtime": {"name": f"r-{i}", "kind": "RUNTIME_KIND_KUBERNETES"}} for i in range(1001)]
        status, refused = await call(s, api, "POST", SET_PATH, secret=api.admin, body={"declarations": many})
        assert status == 400 and "holds 1001 declarations; the limit is 1000" in refused["error"]["message"]
        status, refused = await call(s, api, "POST", SET_PATH, secret=api.admin, body={"declarations": []})
        assert status == 400 and refused["error"]["violations"][0]["field"] == "declarations"
        status, refused = await call(
            s, api, "POST", SET_PATH, secret=api.admin, body={"declarations": [{**RUNTIME, **APPLICATION}]}
        )
        assert status == 400, refused  # two kinds in one declaration
        assert await api.store.head() == head


# -- bounded errors -----------------------------------------------------------------------



async def test_a_huge_value_comes_back_as_a_short_400(api: Running, json_logs: io.StringIO) -> None:
    huge = "v" * (3 * 1024 * 1024)
    async with http_session() as s:
        await rest_seed(s, api)
        status, answer = await call(
            s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=api.admin, body={"version": huge}
        )
    assert status == 400 and answer["error"]["status"] == "INVALID_ARGUMENT", str(answer)[:300]
    message = answer["error"]["message"]
    assert message.startswith('version: "vvvv') and '…" (3145728 bytes) is not a valid version' in message
    assert len(json.dumps(answer)) < 2048
    assert [v["field"] for v in answer["error"]["violations"]] == ["version"]
    lines = json_logs.getvalue().splitlines()
    assert any("api call refused" in line for line in lines)
    assert max(len(line) for line in lines) < 4096


async def test_oversized_urls_headers_and_bodies_get_a_4xx_and_one_log_line(api: Running, json_logs: io.StringIO) -> None:
    """aiohttp answers a request line or header over 8190 bytes itself (400, before any
    route); the log gets one warning line per refusal, no traceback, nothing of the
    request (a header may hold a token)."""
    long = "a" * 100_000
    async with http_session() as s:
        for path, headers in (
            (f"/v1/runtimes/{long}", auth(api.admin)),
            (f"/v1/runtimes?pageSize={long}", auth(api.admin)),
            ("/v1/runtimes", {"Authorization": f"Bearer cvy_{long}"}),
        ):
            async with s.get(api.base_url + path, headers=headers) as response:
                text = await response.text()
                assert response.status in (400, 414, 431), (response.status, text[:200])
                assert len(text) < 1024
        status, answer = await call(s, api, "PUT", "/v1/runtimes", secret=api.admin, raw=b'{"runtime": {"name": "' + long.encode() * 50 + b'"}}')
        assert status == 413 and "larger than" in answer["error"]["message"]
        status, answer = await call(s, api, "GET", "/v1/runtimes/" + "b" * 8000, secret=api.admin)
        assert status == 400 and len(json.dumps(answer)) < 2048, str(answer)[:300]
    text = json_logs.getvalue()
    records = [json.loads(line) for line in text.splitlines()]
    refused = [r for r in records if r["event"] == "http request refused before routing"]
    assert len(refused) == 3 and all(r["level"] == "warning" and "longer than 8190 bytes" in r["problem"] for r in refused)
    assert not [r for r in records if "exception" in r or r.get("level") == "error"], text[:2000]
    assert "a" * 200 not in text and "b" * 200 not in text
    assert max(len(line) for line in text.splitlines()) < 4096


async def test_secret_hashes_in_the_log_are_redacted_over_rest_below_admin(api: Running) -> None:
    async with http_session() as s:
        status, _ = await call(s, api, "PUT", "/v1/runtimes", secret=api.admin, body=RUNTIME)
        assert status == 200
        status, _ = await call(s, api, "POST", "/v1/runtimes/eu-1/credentials", secret=api.admin, body={})
        assert status == 200
        secrets_by_role = {}
        for role in ROLES:
            body = {"name": f"rest-{role}", "role": f"ROLE_{role.upper()}"}
            status, token = await call(s, api, "POST", "/v1/tokens", secret=api.admin, body=body)
            assert status == 200, token
            secrets_by_role[role] = token["secret"]
        params = [("types", "TokenCreated"), ("types", "AgentCredentialIssued")]
        for role, secret in secrets_by_role.items():
            status, listed = await call(s, api, "GET", "/v1/events", secret=secret, params=params)
            assert status == 200, listed
            payloads = [json.loads(e["json"]) for e in listed["events"]]
            assert len(payloads) == len(ROLES) + 2  # the bootstrap token, the four, the credential
            hashes = [p[k] for p in payloads for k in ("secretSha256", "natsPasswordBcrypt") if k in p]
            assert {p.get("name") for p in payloads} >= {f"rest-{r}" for r in ROLES}
            if role == "admin":
                assert "[redacted]" not in hashes and any(h.startswith("$2") for h in hashes)
            else:
                assert set(hashes) == {"[redacted]"}, (role, hashes)


async def test_four_eyes_counts_principals_not_spellings_over_rest(api: Running) -> None:
    """The issue's scenario: two approvals, deployer excluded, deployed by `bob`. A second
    `bob ` or `bоb` (Cyrillic о) token cannot be created any more; and tokens named so
    before the rules (put into the log as an older Convoy recorded them) approve as bob —
    refused, since bob deployed it — while one real other approver counts once."""
    import hashlib
    import secrets as secrets_module

    from eventstore.codec import convoy_registry
    from schemas.convoy.v1 import events_pb2

    four_eyes = json.loads(json.dumps(APPLICATION))
    approval = four_eyes["application"]["releaseChannels"][1]["preconditions"][1]["manualApproval"]
    approval.update(excludeDeployer=True, minApprovers=2)
    async with http_session() as s:
        for path, body in (("/v1/runtimes", RUNTIME), ("/v1/applications", four_eyes), ("/v1/services", SERVICE)):
            status, answer = await call(s, api, "PUT", path, secret=api.admin, body=body)
            assert status == 200, answer
        status, bob = await call(s, api, "POST", "/v1/tokens", secret=api.admin, body={"name": "Bob", "role": "ROLE_APPROVER"})
        assert status == 200 and bob["name"] == "bob", bob
        status, twin = await call(s, api, "POST", "/v1/tokens", secret=api.admin, body={"name": "bob ", "role": "ROLE_APPROVER"})
        assert status == 409 and 'already named "bob"' in twin["error"]["message"], twin
        status, cyrillic = await call(s, api, "POST", "/v1/tokens", secret=api.admin,
                                      body={"name": "b\u043eb", "role": "ROLE_APPROVER"})
        assert status == 400 and "CYRILLIC SMALL LETTER O" in cyrillic["error"]["message"], cyrillic

        registry = convoy_registry()
        legacy = {}
        for token_id, name in (("legacy-space", "bob "), ("legacy-cyrillic", "b\u043eb")):
            secret = f"cvy_{token_id}_{secrets_module.token_urlsafe(24)}"
            created = events_pb2.TokenCreated(
                token_id=token_id, name=name, role="approver", secret_sha256=hashlib.sha256(secret.encode()).hexdigest()
            )
            await api.store.append(f"token/{token_id}", [registry.encode(created, actor="bootstrap")])
            legacy[name] = secret

        status, deployed = await call(
            s, api, "POST", "/v1/applications/shop/services/api:deploy", secret=bob["secret"], body={"version": "v1"}
        )
        assert status == 200 and deployed["release"]["createdBy"] == "bob"
        path = "/v1/applications/shop/services/api:approve"
        for name, secret in legacy.items():
            status, refused = await call(s, api, "POST", path, secret=secret, body={"channel": "prod"})
            assert status == 403 and "four eyes" in refused["error"]["message"], (name, refused)
        status, carol = await call(s, api, "POST", "/v1/tokens", secret=api.admin, body={"name": "carol", "role": "ROLE_APPROVER"})
        status, first = await call(s, api, "POST", path, secret=carol["secret"], body={"channel": "prod"})
        assert status == 200 and first["changed"], first
        status, listed = await call(s, api, "GET", "/v1/events", secret=api.admin, params={"types": "ApprovalGranted"})
        assert [json.loads(e["json"])["approver"] for e in listed["events"]] == ["carol"]


async def test_a_catalog_event_the_read_model_cannot_fold_stops_writes_not_reads(api: Running, tmp_path: Path) -> None:
    """It used to be skipped, and later commands decided on a state that lacked it. Now
    the read model stops before it: writes answer 503 naming the event, readiness says
    so, reads answer as of the position before it, the failure is counted — and an event
    of another category this build cannot read is still skipped."""
    async with http_session() as s:
        await rest_seed(s, api)
        await api.store.append("observation/eu-1/ns/shop/api", [NewEvent("convoy.v2.SomethingNew", b"\x01")])
        newer = NewEvent("convoy.v2.ApplicationFrobnicated", b"\x08\x01")  # a type a newer build wrote
        [result] = await api.store.commit([AppendRequest("app/shop", (newer,))])
        await eventually(lambda: api.server.projection.broken is not None, message="the read model stopped")
        head = await api.store.head()
        status, refused = await call(s, api, "PUT", "/v1/runtimes", secret=api.admin,
                                     body={"runtime": {"name": "us-1", "kind": "RUNTIME_KIND_KUBERNETES"}})
        assert status == 503, refused
        message = refused["error"]["message"]
        assert f"position {result.last_position}" in message and "convoy.v2.ApplicationFrobnicated" in message
        assert await api.store.head() == head  # nothing recorded
        status, app = await call(s, api, "GET", "/v1/applications/shop", secret=api.admin)
        assert status == 200 and app["name"] == "shop"
        ready, details = await api.server.readiness()
        assert not ready and "cannot fold the event" in json.dumps(details)
        assert api.server.projection.position == result.last_position - 1
        metrics = await api.server.metrics.exposition()
        assert "convoy_api_projection_fold_failures_total 1" in metrics

    # An API started on that log serves reads at once, degraded, instead of failing to start.
    async with running_api(api.store, tmp_path / "second") as second, http_session() as s:
        assert second.server.projection.broken is not None
        status, app = await call(s, second, "GET", "/v1/applications/shop", secret=api.admin)
        assert status == 200
