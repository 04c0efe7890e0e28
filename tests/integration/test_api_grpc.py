"""The API over gRPC against a real PostgreSQL: the deploy flow end to end, Watch, auth,
idempotency, read-your-writes across two API processes, concurrent conflicting
commands, error codes, the bootstrap admin token, a clean shutdown, and ApplyDeclarations
(a config set recorded in one commit or not at all)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from structlog.testing import capture_logs

from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, options_pb2, resources_pb2
from services.api.server import ApiServer
from tests.conftest import eventually
from tests.integration.test_api_support import (
    ROLES,
    Running,
    api,  # noqa: F401  (fixture)
    application,
    bearer,
    create_token,
    grpc_stubs,
    http_session,
    runtime,
    running_api,
    seed,
    service,
)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_deploy_flow_lists_events_and_watch(api: Running) -> None:
    admin = bearer(api.admin)
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        deployer = await create_token(stubs, api.admin, options_pb2.ROLE_DEPLOYER, "ci")
        approver = await create_token(stubs, api.admin, options_pb2.ROLE_APPROVER, "alice")

        watch = stubs.events.Watch(api_pb2.WatchRequest(application="shop"), metadata=bearer(deployer.secret))
        # The history arrives first: the application and its service.
        first = await watch.read()
        assert first.type == "convoy.v1.ApplicationCreated" and json.loads(first.json)["application"]["name"] == "shop"
        second = await watch.read()
        assert second.type == "convoy.v1.ServiceConfigured"

        deployed = await stubs.releases.Deploy(
            api_pb2.DeployRequest(application="shop", service="api", version="v1", image="registry.example/api:2"),
            metadata=bearer(deployer.secret),
        )
        assert deployed.write.changed and deployed.write.position > second.position
        assert deployed.release.config.programs[0].image == "registry.example/api:2"
        live = await watch.read()
        assert live.type == "convoy.v1.ReleaseCreated" and live.actor == "ci"
        assert live.event_id == deployed.write.event_ids[0] and live.position == deployed.write.position

        approved = await stubs.releases.Approve(
            api_pb2.ApproveRequest(application="shop", service="api", channel="prod", comment="ok"),
            metadata=bearer(approver.secret),
        )
        assert approved.changed
        live = await watch.read()
        assert live.type == "convoy.v1.ApprovalGranted" and live.actor == "alice"
        watch.cancel()

        app = await stubs.applications.GetApplication(api_pb2.GetApplicationRequest(name="shop"), metadata=admin)
        assert [c.name for c in app.release_channels] == ["staging", "prod"]
        got = await stubs.services.GetService(api_pb2.GetServiceRequest(application="shop", name="api"), metadata=admin)
        assert got.replicas == 2
        releases = await stubs.releases.ListReleases(
            api_pb2.ListReleasesRequest(application="shop", service="api"), metadata=admin
        )
        assert [r.version for r in releases.releases] == ["v1"] and releases.releases[0].id == deployed.release.id
        runtimes = await stubs.runtimes.ListRuntimes(api_pb2.ListRuntimesRequest(), metadata=admin)
        assert [r.runtime.name for r in runtimes.runtimes] == ["eu-1"]
        tokens = await stubs.tokens.ListTokens(api_pb2.ListTokensRequest(), metadata=admin)
        assert {t.name for t in tokens.tokens} == {"bootstrap-admin", "ci", "alice"}
        assert all("secret" not in str(t) for t in tokens.tokens)

        listed = await stubs.events.ListEvents(api_pb2.ListEventsRequest(application="shop"), metadata=admin)
        assert [e.type.rsplit(".", 1)[-1] for e in listed.events] == [
            "ApplicationCreated",
            "ServiceConfigured",
            "ReleaseCreated",
            "ApprovalGranted",
        ]
        by_actor = await stubs.events.ListEvents(
            api_pb2.ListEventsRequest(actor="alice", types=["ApprovalGranted"]), metadata=admin
        )
        assert len(by_actor.events) == 1 and by_actor.last_position >= by_actor.events[0].position
        page = await stubs.events.ListEvents(api_pb2.ListEventsRequest(limit=2), metadata=admin)
        rest = await stubs.events.ListEvents(
            api_pb2.ListEventsRequest(after_position=page.last_position), metadata=admin
        )
        everything = [*page.events, *rest.events]
        assert len(page.events) == 2 and [e.position for e in everything] == list(range(1, len(everything) + 1))


CASES = [
    # (method path on the stubs, request, least role)
    ("applications.ApplyApplication", api_pb2.ApplyApplicationRequest(application=application("other")), "admin"),
    ("applications.GetApplication", api_pb2.GetApplicationRequest(name="shop"), "viewer"),
    ("releases.Deploy", api_pb2.DeployRequest(application="shop", service="api", version="v9"), "deployer"),
    ("releases.Approve", api_pb2.ApproveRequest(application="shop", service="api", channel="prod"), "approver"),
    ("runtimes.PauseRuntime", api_pb2.PauseRuntimeRequest(name="eu-1", reason="x"), "deployer"),
    ("tokens.ListTokens", api_pb2.ListTokensRequest(), "admin"),
    ("tokens.CreateToken", api_pb2.CreateTokenRequest(name="x", role=options_pb2.ROLE_VIEWER), "admin"),
    ("events.ListEvents", api_pb2.ListEventsRequest(), "viewer"),
]


async def test_unauthenticated_and_underprivileged_calls_are_refused(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        tokens = {name: await create_token(stubs, api.admin, role, name) for name, role in ROLES.items()}
        revoked = await create_token(stubs, api.admin, options_pb2.ROLE_ADMIN, "gone")
        await stubs.tokens.RevokeToken(api_pb2.RevokeTokenRequest(token_id=revoked.token_id), metadata=bearer(api.admin))
        order = list(ROLES)
        for path, request, least in CASES:
            group, name = path.split(".")
            method = getattr(getattr(stubs, group), name)
            for metadata in ((), bearer("nope"), bearer(f"cvy_{tokens['admin'].token_id}_wrong"), bearer(revoked.secret)):
                assert await _code(method(request, metadata=metadata)) == grpc.StatusCode.UNAUTHENTICATED, (path, metadata)
            for role in order[: order.index(least)]:
                code = await _code(method(request, metadata=bearer(tokens[role].secret)))
                assert code == grpc.StatusCode.PERMISSION_DENIED, (path, role)
            # The least role gets past auth (whatever the domain then says).
            try:
                await method(request, metadata=bearer(tokens[least].secret))
            except grpc.aio.AioRpcError as error:
                assert error.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), path


async def test_idempotency_key_replays_the_first_answer_and_refuses_a_different_request(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        metadata = (*bearer(api.admin), ("idempotency-key", "deploy-v1-attempt"))
        request = api_pb2.DeployRequest(application="shop", service="api", version="v1")
        first = await stubs.releases.Deploy(request, metadata=metadata)
        again = await stubs.releases.Deploy(request, metadata=metadata)
        assert again == first
        head = await api.store.head()
        assert head == first.write.position  # the retry recorded nothing
        other = api_pb2.DeployRequest(application="shop", service="api", version="v2")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.releases.Deploy(other, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "already used" in (caught.value.details() or "")
        # A token's secret is never stored, so its creation cannot be replayed.
        token_key = (*bearer(api.admin), ("idempotency-key", "token-1"))
        token_request = api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_VIEWER)
        created = await stubs.tokens.CreateToken(token_request, metadata=token_key)
        assert created.secret
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.tokens.CreateToken(token_request, metadata=token_key)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert created.token_id in (caught.value.details() or "") and created.secret not in (caught.value.details() or "")


async def test_declarative_noop_records_nothing(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        head = await api.store.head()
        again = await stubs.applications.ApplyApplication(
            api_pb2.ApplyApplicationRequest(application=application()), metadata=bearer(api.admin)
        )
        assert again == api_pb2.WriteResult(changed=False)
        assert await api.store.head() == head


async def test_read_your_writes_across_two_api_processes(api: Running, tmp_path: Path) -> None:
    async with running_api(api.store, tmp_path / "second", read_wait=10.0) as second:
        assert second.admin == ""  # an admin token existed: no second bootstrap
        async with grpc_stubs(api.grpc_target) as one, grpc_stubs(second.grpc_target) as two:
            for i in range(5):
                name = f"rt-{i}"
                written = await one.runtimes.ApplyRuntime(
                    api_pb2.ApplyRuntimeRequest(runtime=runtime(name)), metadata=bearer(api.admin)
                )
                seen = await two.runtimes.GetRuntime(
                    api_pb2.GetRuntimeRequest(name=name, min_position=written.position), metadata=bearer(api.admin)
                )
                assert seen.runtime.name == name
            beyond = api_pb2.GetRuntimeRequest(name="rt-0", min_position=written.position + 1000)
            assert await _code(two.runtimes.GetRuntime(beyond, metadata=bearer(api.admin))) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )


async def test_concurrent_conflicting_commands_from_two_processes(api: Running, tmp_path: Path) -> None:
    """Both processes relabel the same runtime at once: every answer is a success or
    ABORTED (never INTERNAL), and each success recorded exactly its own event."""
    async with running_api(api.store, tmp_path / "second") as second:
        async with grpc_stubs(api.grpc_target) as one, grpc_stubs(second.grpc_target) as two:
            await seed(one, api.admin)

            async def relabel(stubs: object, i: int) -> api_pb2.WriteResult | grpc.StatusCode:
                request = api_pb2.LabelRuntimeRequest(name="eu-1", labels={"n": str(i)})
                try:
                    return await stubs.runtimes.LabelRuntime(request, metadata=bearer(api.admin))  # type: ignore[attr-defined]
                except grpc.aio.AioRpcError as error:
                    return error.code()

            results = await asyncio.gather(*(relabel(one if i % 2 else two, i) for i in range(16)))
            assert all(isinstance(r, api_pb2.WriteResult) or r == grpc.StatusCode.ABORTED for r in results), results
            written = [r for r in results if isinstance(r, api_pb2.WriteResult) and r.changed]
            events = [e for e in await api.store.read_stream("runtime/eu-1") if e.type == "convoy.v1.RuntimeLabelled"]
            assert sorted(str(e.event_id) for e in events) == sorted(r.event_ids[0] for r in written)
            assert [e.version for e in await api.store.read_stream("runtime/eu-1")] == list(range(1, len(events) + 2))


async def test_one_keyed_request_sent_to_two_processes_at_once_is_recorded_once(api: Running, tmp_path: Path) -> None:
    """The answer is recorded with the events, and a key is recorded once: whichever
    process loses the race writes nothing and answers the winner's answer (never
    ALREADY_EXISTS for the release the winner created)."""
    async with running_api(api.store, tmp_path / "second") as second:
        async with grpc_stubs(api.grpc_target) as one, grpc_stubs(second.grpc_target) as two:
            await seed(one, api.admin)
            for i in range(5):
                request = api_pb2.DeployRequest(application="shop", service="api", version=f"v{i}")
                metadata = (*bearer(api.admin), ("idempotency-key", f"deploy-race-{i}"))
                a, b = await asyncio.gather(
                    one.releases.Deploy(request, metadata=metadata), two.releases.Deploy(request, metadata=metadata)
                )
                assert a == b and a.write.changed and a.write.position > 0
                releases = [e for e in await api.store.read_all() if e.type == "convoy.v1.ReleaseCreated"]
                assert len(releases) == i + 1


ERRORS: list[tuple[str, Message, grpc.StatusCode]] = [
    (
        "applications.ApplyApplication",
        api_pb2.ApplyApplicationRequest(application=resources_pb2.Application(name="Not A Name")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("applications.GetApplication", api_pb2.GetApplicationRequest(name="missing"), grpc.StatusCode.NOT_FOUND),
    ("applications.GetApplication", api_pb2.GetApplicationRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT),
    (
        "releases.Deploy",
        api_pb2.DeployRequest(application="shop", service="api", version="v1"),
        grpc.StatusCode.ALREADY_EXISTS,
    ),
    ("applications.DeleteApplication", api_pb2.DeleteApplicationRequest(name="shop"), grpc.StatusCode.FAILED_PRECONDITION),
    ("tokens.RevokeToken", api_pb2.RevokeTokenRequest(token_id="tok-missing"), grpc.StatusCode.NOT_FOUND),
    (
        "applications.ListApplications",
        api_pb2.ListApplicationsRequest(page=api_pb2.PageRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "applications.ListApplications",
        api_pb2.ListApplicationsRequest(page=api_pb2.PageRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("events.ListEvents", api_pb2.ListEventsRequest(limit=-5), grpc.StatusCode.INVALID_ARGUMENT),
]


async def test_errors_map_to_status_codes(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        await stubs.releases.Deploy(
            api_pb2.DeployRequest(application="shop", service="api", version="v1"), metadata=bearer(api.admin)
        )
        for path, request, expected in ERRORS:
            group, name = path.split(".")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(getattr(stubs, group), name)(request, metadata=bearer(api.admin))
            assert caught.value.code() == expected, (path, caught.value.details())
            assert caught.value.details()
            trailing = dict(caught.value.trailing_metadata() or ())
            assert "x-correlation-id" in trailing
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.applications.ApplyApplication(
                api_pb2.ApplyApplicationRequest(application=resources_pb2.Application(name="Bad")),
                metadata=bearer(api.admin),
            )
        violations = json.loads(dict(caught.value.trailing_metadata() or ())["convoy-violations-bin"])
        assert violations[0]["field"].startswith("application.name")


async def test_watch_refuses_bad_requests_and_anonymous_callers(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        for request, metadata, expected in (
            (api_pb2.WatchRequest(application="shop"), (), grpc.StatusCode.UNAUTHENTICATED),
            (api_pb2.WatchRequest(after_position=-1), bearer(api.admin), grpc.StatusCode.INVALID_ARGUMENT),
            (api_pb2.WatchRequest(application="shop", after_position=-1), bearer(api.admin), grpc.StatusCode.INVALID_ARGUMENT),
        ):
            watch = stubs.events.Watch(request, metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch.read()
            assert caught.value.code() == expected


async def test_watch_without_an_application_follows_the_whole_log(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        head = (await stubs.events.ListEvents(api_pb2.ListEventsRequest(limit=1000), metadata=bearer(api.admin))).last_position
        watch = stubs.events.Watch(api_pb2.WatchRequest(after_position=head - 2), metadata=bearer(api.admin))
        got = [(await watch.read()).position for _ in range(2)]
        assert got == [head - 1, head]
        await stubs.runtimes.ApplyRuntime(api_pb2.ApplyRuntimeRequest(runtime=runtime("us-1")), metadata=bearer(api.admin))
        event = await watch.read()
        assert (event.position, event.stream_id) == (head + 1, "runtime/us-1")  # an infrastructure event too
        watch.cancel()


async def test_garbage_bytes_are_invalid_argument_not_internal(api: Running) -> None:
    async with grpc.aio.insecure_channel(api.grpc_target) as channel:
        for path in ("/convoy.v1.ApplicationService/ApplyApplication", "/convoy.v1.EventService/ListEvents"):
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            for garbage in (b"\xff\xff\xff", b"\x0a\x05abc", bytes(range(256))):
                code = await _code(call(garbage, metadata=bearer(api.admin)))
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, garbage)


async def test_bootstrap_token_file_is_private_and_secrets_are_never_logged(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    with capture_logs() as logs:
        async with running_api(pg_store, tmp_path / "state") as running:
            path = tmp_path / "state" / "admin-token"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert running.admin.startswith("cvy_tok-")
            async with grpc_stubs(running.grpc_target) as stubs:
                created = await create_token(stubs, running.admin, options_pb2.ROLE_VIEWER, "ci")
                refused = stubs.tokens.ListTokens(api_pb2.ListTokensRequest(), metadata=bearer("cvy_x_y"))
                assert await _code(refused) == grpc.StatusCode.UNAUTHENTICATED
        # A restart finds the live admin token: no second bootstrap, the file is kept.
        async with running_api(pg_store, tmp_path / "state") as again:
            assert again.server.admin_token_path is None and again.admin == running.admin
    text = repr(logs)
    assert running.admin not in text and created.secret not in text
    assert any(str(entry.get("event", "")).startswith("bootstrap admin token created") for entry in logs)


async def test_stop_ends_watch_streams_and_leaves_no_task(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    before = {t for t in asyncio.all_tasks()}
    async with running_api(pg_store, tmp_path / "state") as running:
        async with grpc_stubs(running.grpc_target) as stubs:
            await seed(stubs, running.admin)
            watch = stubs.events.Watch(api_pb2.WatchRequest(application="shop"), metadata=bearer(running.admin))
            assert (await watch.read()).type == "convoy.v1.ApplicationCreated"
            assert (await watch.read()).type == "convoy.v1.ServiceConfigured"
            await running.server.stop()
            ended = await watch.read()
            assert ended is grpc.aio.EOF
    leftover = [t for t in asyncio.all_tasks() - before if not t.done() and t.get_name().startswith("convoy")]
    assert leftover == []
    await eventually(lambda: not running.server.projection.running, message="projection stopped")


async def test_a_watch_ends_when_its_token_is_revoked(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        viewer = await create_token(stubs, api.admin, options_pb2.ROLE_VIEWER, "dashboard")
        watch = stubs.events.Watch(api_pb2.WatchRequest(application="shop"), metadata=bearer(viewer.secret))
        assert (await watch.read()).type == "convoy.v1.ApplicationCreated"

        await stubs.tokens.RevokeToken(
            api_pb2.RevokeTokenRequest(token_id=viewer.token_id, reason="laptop lost"), metadata=bearer(api.admin)
        )

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:  # the rest of the history, then the end
                await watch.read()
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_two_api_processes_bootstrapping_one_empty_instance_create_one_admin_token(
    pg_store: PostgresEventStore, tmp_path: Path
) -> None:
    first = ApiServer(store=pg_store, state_dir=tmp_path / "a", grpc_address=None, http_address=None)
    second = ApiServer(store=pg_store, state_dir=tmp_path / "b", grpc_address=None, http_address=None)
    try:
        await asyncio.gather(first.start(), second.start())
        tokens = [e for e in await pg_store.read_all(limit=100) if e.type == "convoy.v1.TokenCreated"]
        assert len(tokens) == 1
        files = [p for p in (tmp_path / "a" / "admin-token", tmp_path / "b" / "admin-token") if p.exists()]
        assert len(files) == 1, "exactly one process keeps a (working) secret file"
    finally:
        await first.stop()
        await second.stop()


async def test_grpc_calls_are_counted_by_method_and_status(api: Running) -> None:
    async with grpc_stubs(api.grpc_target) as stubs:
        await stubs.applications.ListApplications(api_pb2.ListApplicationsRequest(), metadata=bearer(api.admin))
        code = await _code(stubs.applications.GetApplication(
            api_pb2.GetApplicationRequest(name="nope"), metadata=bearer(api.admin)))
        assert code == grpc.StatusCode.NOT_FOUND
    async with http_session() as session, session.get(f"{api.base_url}/metrics") as response:
        text = await response.text()
    assert 'convoy_api_grpc_requests_total{method="ListApplications",code="OK"} 1' in text, text
    assert 'convoy_api_grpc_requests_total{method="GetApplication",code="NOT_FOUND"} 1' in text
    assert 'convoy_api_grpc_request_duration_seconds_count{method="ListApplications"} 1' in text


# -- ApplyDeclarations: a whole config set, all or nothing ---------------------------------

CREATED = api_pb2.DECLARATION_OUTCOME_CREATED
UNCHANGED = api_pb2.DECLARATION_OUTCOME_UNCHANGED


def declarations(*declared: Message) -> api_pb2.ApplyDeclarationsRequest:
    """A set of the given resource messages (Application, Service, Runtime, Resource …)."""
    kinds = {
        resources_pb2.Application: "application", resources_pb2.Service: "service", resources_pb2.Runtime: "runtime",
        resources_pb2.Protection: "protection", resources_pb2.Resource: "resource",
    }
    return api_pb2.ApplyDeclarationsRequest(
        declarations=[api_pb2.Declaration(**{kinds[type(m)]: m}) for m in declared]  # type: ignore[arg-type]
    )


def shop_db() -> resources_pb2.Resource:
    return resources_pb2.Resource(name="db", scope=resources_pb2.RESOURCE_SCOPE_APPLICATION, application="shop")


async def assert_one_commit(store: PostgresEventStore, *, after: int, write: api_pb2.WriteResult) -> None:
    """The events after `after` are exactly the write's, at consecutive positions, inserted
    by one PostgreSQL transaction (one xmin) under one correlation id."""
    rows = await store.pool.fetch(
        "SELECT position, event_id::text AS id, xmin::text AS tx, correlation_id FROM events WHERE position > $1 "
        "ORDER BY position",
        after,
    )
    assert [r["position"] for r in rows] == list(range(after + 1, write.position + 1)), rows
    assert [r["id"] for r in rows] == list(write.event_ids)
    assert len({r["tx"] for r in rows}) == 1, f"recorded by {len({r['tx'] for r in rows})} transactions"
    assert len({r["correlation_id"] for r in rows}) == 1


@contextlib.asynccontextmanager
async def declaration_stub(target: str) -> AsyncIterator[api_pb2_grpc.DeclarationServiceStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield api_pb2_grpc.DeclarationServiceStub(channel)


async def test_a_set_with_one_refused_declaration_records_nothing(api: Running) -> None:
    # The issue's scenario: a good new application, then a service naming an unlinked resource.
    admin = bearer(api.admin)
    async with grpc_stubs(api.grpc_target) as stubs, declaration_stub(api.grpc_target) as sets:
        await stubs.runtimes.ApplyRuntime(api_pb2.ApplyRuntimeRequest(runtime=runtime()), metadata=admin)
        head = await api.store.head()
        web = service(name="web")
        web.resources.append("db")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sets.ApplyDeclarations(declarations(application(), web), metadata=admin)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(
            'declarations[1].service.resources[0]: service "shop/web": resource "db" is not linked'
        ), caught.value.details()
        violations = json.loads(dict(caught.value.trailing_metadata() or ())["convoy-violations-bin"])
        assert [v["field"] for v in violations] == ["declarations[1].service.resources[0]"]

        assert await api.store.head() == head, "part of a refused set was recorded"
        listed = await stubs.events.ListEvents(api_pb2.ListEventsRequest(after_position=head), metadata=admin)
        assert list(listed.events) == []
        assert await _code(
            stubs.applications.GetApplication(api_pb2.GetApplicationRequest(name="shop"), metadata=admin)
        ) == grpc.StatusCode.NOT_FOUND


async def test_a_dependent_set_is_recorded_in_one_commit_and_reapplying_it_records_nothing(api: Running) -> None:
    admin = bearer(api.admin)
    api_service = service()
    api_service.resources.append("db")  # linked by the document before it
    request = declarations(runtime(), application(), shop_db(), api_service)
    async with grpc_stubs(api.grpc_target) as stubs, declaration_stub(api.grpc_target) as sets:
        head = await api.store.head()
        answer = await sets.ApplyDeclarations(request, metadata=admin)
        assert [(r.index, r.kind, r.name, r.outcome) for r in answer.results] == [
            (0, "runtime", "eu-1", CREATED),
            (1, "application", "shop", CREATED),
            (2, "resource", "shop/db", CREATED),
            (3, "service", "shop/api", CREATED),
        ]
        assert answer.write.changed and len(answer.write.event_ids) == 4
        await assert_one_commit(api.store, after=head, write=answer.write)
        listed = await stubs.events.ListEvents(api_pb2.ListEventsRequest(after_position=head), metadata=admin)
        assert [e.type for e in listed.events] == [
            "convoy.v1.RuntimeRegistered", "convoy.v1.ApplicationCreated", "convoy.v1.ResourceLinked",
            "convoy.v1.ServiceConfigured",
        ]
        # Read-your-writes: the answer came after the read model folded the set.
        got = await stubs.services.GetService(api_pb2.GetServiceRequest(application="shop", name="api"), metadata=admin)
        assert list(got.resources) == ["db"]

        again = await sets.ApplyDeclarations(request, metadata=admin)
        assert again.write == api_pb2.WriteResult(changed=False)
        assert [r.outcome for r in again.results] == [UNCHANGED] * 4
        assert await api.store.head() == answer.write.position


async def test_a_set_needs_the_role_of_each_of_its_declarations(api: Running) -> None:
    request = declarations(runtime(), application())
    async with grpc_stubs(api.grpc_target) as stubs, declaration_stub(api.grpc_target) as sets:
        deployer = await create_token(stubs, api.admin, options_pb2.ROLE_DEPLOYER, "ci")
        viewer = await create_token(stubs, api.admin, options_pb2.ROLE_VIEWER, "reader")
        head = await api.store.head()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sets.ApplyDeclarations(request, metadata=bearer(deployer.secret))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (caught.value.details() or "").startswith(
            'declarations[0] (runtime "eu-1"): ApplyRuntime needs the admin role'
        ), caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sets.ApplyDeclarations(request, metadata=bearer(viewer.secret))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ApplyDeclarations needs the deployer role" in (caught.value.details() or "")
        assert await api.store.head() == head
        assert (await sets.ApplyDeclarations(request, metadata=bearer(api.admin))).write.changed


async def test_a_set_retried_with_its_idempotency_key_gets_the_first_answer(api: Running) -> None:
    request = declarations(runtime(), application())
    keyed = (*bearer(api.admin), ("idempotency-key", "config-commit-abc123"))
    async with declaration_stub(api.grpc_target) as sets:
        first = await sets.ApplyDeclarations(request, metadata=keyed)
        assert [r.outcome for r in first.results] == [CREATED, CREATED] and first.write.position > 0
        again = await sets.ApplyDeclarations(request, metadata=keyed)
        assert again == first  # the first answer ("created"), not a new decision ("unchanged")
        assert await api.store.head() == first.write.position
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sets.ApplyDeclarations(declarations(runtime("us-1")), metadata=keyed)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "already used" in (caught.value.details() or "")


async def test_a_huge_value_comes_back_as_a_short_invalid_argument(api: Running) -> None:
    """A 3 MB version is INVALID_ARGUMENT with a short message, not RESOURCE_EXHAUSTED
    (the status travels in trailing metadata, which clients cap at 8 KiB by default);
    so are thousands of violations at once."""
    huge = "v" * (3 * 1024 * 1024)
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.releases.Deploy(
                api_pb2.DeployRequest(application="shop", service="api", version=huge), metadata=bearer(api.admin)
            )
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()[:300]
        details = error.details()
        assert details.startswith('version: "vvvv') and '…" (3145728 bytes) is not a valid version' in details
        assert len(details.encode()) <= 1024
        trailers = dict(error.trailing_metadata())
        assert [v["field"] for v in json.loads(trailers["convoy-violations-bin"])] == ["version"]
        assert max(len(repr(entry)) for entry in logs) < 4096

        labels = {f"bad key {n:04}": "v" for n in range(5000)}
        bad = resources_pb2.Runtime(name="eu-2", kind=resources_pb2.RUNTIME_KIND_KUBERNETES, labels=labels)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.runtimes.ApplyRuntime(api_pb2.ApplyRuntimeRequest(runtime=bad), metadata=bearer(api.admin))
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith('runtime.labels["bad key 0000"]: label key "bad key 0000" is invalid')
        assert error.details().endswith(" more") and len(error.details().encode()) <= 1024
        violations = json.loads(dict(error.trailing_metadata())["convoy-violations-bin"])
        assert 1 < len(violations) < 5000 and violations[-1]["description"].startswith("… and ")
        assert sum(len(k) + len(v) for k, v in error.trailing_metadata()) < 4096


async def test_secret_hashes_in_the_log_are_shown_to_admins_only(api: Running) -> None:
    """TokenCreated.secretSha256 and AgentCredentialIssued's hashes are admin material
    (like ListTokens): every role below admin reads the events with them redacted."""
    admin = bearer(api.admin)
    async with grpc_stubs(api.grpc_target) as stubs:
        await stubs.runtimes.ApplyRuntime(api_pb2.ApplyRuntimeRequest(runtime=runtime()), metadata=admin)
        await stubs.runtimes.IssueAgentCredential(api_pb2.IssueAgentCredentialRequest(runtime="eu-1"), metadata=admin)
        tokens = {role: await create_token(stubs, api.admin, level, f"reader-{role}") for role, level in ROLES.items()}
        types = ["TokenCreated", "AgentCredentialIssued"]
        for role, token in tokens.items():
            listed = await stubs.events.ListEvents(api_pb2.ListEventsRequest(types=types), metadata=bearer(token.secret))
            payloads = {(e.type, e.stream_id): json.loads(e.json) for e in listed.events}
            issued = next(p for (t, _), p in payloads.items() if t.endswith("AgentCredentialIssued"))
            created = [p for (t, _), p in payloads.items() if t.endswith("TokenCreated")]
            assert len(created) == len(tokens) + 1 and issued["runtime"] == "eu-1" and issued["generation"] == "1"
            assert {p["name"] for p in created} >= {f"reader-{r}" for r in ROLES}  # the rest of the event is intact
            hashes = [issued["secretSha256"], issued["natsPasswordBcrypt"], *(p["secretSha256"] for p in created)]
            if role == "admin":
                assert issued["natsPasswordBcrypt"].startswith("$2") and all(len(p["secretSha256"]) == 64 for p in created)
            else:
                assert set(hashes) == {"[redacted]"}, (role, hashes)


class _HeldFold:
    """Holds the API's projection back: events it tails are kept, not folded, until
    `release()` (then folded in order, and every later one as it comes)."""

    def __init__(self, server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.projection = server.projection
        self._fold = server.projection._apply
        self._held: list[object] = []
        self._open = True
        monkeypatch.setattr(server.projection, "_apply", self._apply)

    def _apply(self, recorded: object) -> None:
        if self._open:
            self._fold(recorded)  # type: ignore[arg-type]
        else:
            self._held.append(recorded)

    def hold(self) -> None:
        self._open = False

    def release(self) -> None:
        self._open = True
        held, self._held = self._held, []
        for recorded in held:
            self._fold(recorded)  # type: ignore[arg-type]


async def test_a_remote_command_answers_before_the_fold_and_what_reads_next_waits_for_it(
    api: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gRPC/REST command is answered once committed, not once folded: the client's next
    command decides on the writer's speculative state (no conflict, no wait), while a read
    and an authentication in this process wait until the projection holds the write —
    so read-your-writes and an immediate revocation still hold."""
    held = _HeldFold(api.server, monkeypatch)
    async with grpc_stubs(api.grpc_target) as stubs:
        await seed(stubs, api.admin)
        doomed = await create_token(stubs, api.admin, options_pb2.ROLE_VIEWER, "doomed")
        admin = bearer(api.admin)
        await stubs.runtimes.GetRuntime(api_pb2.GetRuntimeRequest(name="eu-1"), metadata=admin)  # all folded
        held.hold()
        first = await stubs.runtimes.LabelRuntime(
            api_pb2.LabelRuntimeRequest(name="eu-1", labels={"round": "1"}), metadata=admin
        )
        second = await stubs.runtimes.LabelRuntime(
            api_pb2.LabelRuntimeRequest(name="eu-1", labels={"round": "2"}), metadata=admin
        )
        assert first.changed and second.changed and second.position > first.position
        assert held.projection.position < first.position  # both answered with nothing folded
        waiting = api.server._writer._folded._waiting
        read = asyncio.ensure_future(stubs.runtimes.GetRuntime(api_pb2.GetRuntimeRequest(name="eu-1"), metadata=admin))
        await eventually(lambda: bool(waiting), message="the read waits for the fold")
        held.release()
        assert dict((await read).runtime.labels) == {"round": "2"}

        await stubs.runtimes.GetRuntime(api_pb2.GetRuntimeRequest(name="eu-1"), metadata=admin)
        held.hold()
        await stubs.tokens.RevokeToken(api_pb2.RevokeTokenRequest(token_id=doomed.token_id), metadata=admin)
        use = asyncio.ensure_future(
            stubs.runtimes.GetRuntime(api_pb2.GetRuntimeRequest(name="eu-1"), metadata=bearer(doomed.secret))
        )
        await eventually(lambda: bool(waiting), message="authentication waits for the revocation's fold")
        held.release()
        assert await _code(use) == grpc.StatusCode.UNAUTHENTICATED
