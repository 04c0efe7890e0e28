"""The Kubernetes API emulator, driven by the real kubernetes_asyncio client.

These pin the behaviour the runtime (and anyone reading its tests) relies on being
faithful: server-side apply semantics and its conflicts, error bodies as the client parses
them, resourceVersion/generation rules, list+watch with resume and 410, the Deployment
controller's status progression, and failure injection. The emulator ticks only when a
test says so.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.k8s_emulator import FAIL_CRASH_LOOP, FAIL_IMAGE_PULL, FAIL_NEVER_READY, Emulator
from tests.k8s_emulator.authz import Subject
from tests.k8s_emulator.fixtures import k8s_emulator  # noqa: F401 - fixture

APPLY = "application/apply-patch+yaml"
NS = "team"


def deployment(name: str = "web", *, image: str = "nginx:1.27", replicas: int = 2, **extra: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"tier": "front"}, **extra.pop("metadata", {})},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "main", "image": image, "ports": [{"containerPort": 80}]}]}},
            **extra,
        },
    }


@pytest.fixture
async def api(k8s_emulator: Emulator, tmp_path: Path) -> AsyncIterator[client.ApiClient]:  # noqa: F811
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(k8s_emulator.write_kubeconfig(tmp_path / "kc")), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        await client.CoreV1Api(api_client).create_namespace({"metadata": {"name": NS}})
        yield api_client


@pytest.fixture
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


async def apply(apps: client.AppsV1Api, body: dict[str, Any], *, manager: str = "convoy", force: bool = False) -> Any:
    return await apps.patch_namespaced_deployment(body["metadata"]["name"], NS, body, field_manager=manager, force=force, _content_type=APPLY)


def status_body(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == error.status
    return body


def managers(obj: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.manager, m.operation): m.fields_v1 for m in obj.metadata.managed_fields}


async def test_discovery_answers_like_an_apiserver(api: client.ApiClient) -> None:
    assert (await client.VersionApi(api).get_code()).major == "1"
    assert (await client.CoreApi(api).get_api_versions()).versions == ["v1"]
    groups = await client.ApisApi(api).get_api_versions()
    assert [g.name for g in groups.groups] == ["apps"]
    resources = {r.name: r for r in (await client.AppsV1Api(api).get_api_resources()).resources}
    assert resources["deployments"].namespaced and "patch" in resources["deployments"].verbs
    core_names = {r.name for r in (await client.CoreV1Api(api).get_api_resources()).resources}
    assert {"namespaces", "pods", "services", "configmaps", "secrets"} <= core_names


async def test_server_side_apply_creates_updates_and_noop_keeps_the_resource_version(
    apps: client.AppsV1Api, k8s_emulator: Emulator  # noqa: F811
) -> None:
    created = await apply(apps, deployment())
    assert created.metadata.generation == 1
    assert managers(created)[("convoy", "Apply")]["f:spec"]["f:replicas"] == {}
    await k8s_emulator.settle()
    settled = await apps.read_namespaced_deployment("web", NS)

    again = await apply(apps, deployment())
    assert again.metadata.resource_version == settled.metadata.resource_version  # a no-op changes nothing

    updated = await apply(apps, deployment(image="nginx:1.28"))
    assert int(updated.metadata.resource_version) > int(settled.metadata.resource_version)
    assert updated.metadata.generation == 2
    assert updated.spec.template.spec.containers[0].image == "nginx:1.28"
    # Server defaults are filled in, and owned by nobody.
    assert updated.spec.progress_deadline_seconds == 600
    assert updated.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"


async def test_apply_conflicts_with_another_manager_unless_forced(apps: client.AppsV1Api) -> None:
    await apply(apps, deployment())
    await apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 5}}, field_manager="kubectl-edit")

    with pytest.raises(ApiException) as raised:
        await apply(apps, deployment())
    assert raised.value.status == 409
    body = status_body(raised.value)
    assert body["reason"] == "Conflict"
    assert body["message"].startswith('Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1')
    assert body["message"].endswith(": .spec.replicas")
    assert [(c["type"], c["field"]) for c in body["details"]["causes"]] == [("FieldManagerConflict", ".spec.replicas")]

    # The same value is no conflict: ownership is shared.
    shared = await apply(apps, deployment(replicas=5))
    assert shared.spec.replicas == 5

    forced = await apply(apps, deployment(replicas=2), force=True)
    assert forced.spec.replicas == 2
    owners = managers(forced)
    assert "f:replicas" in owners[("convoy", "Apply")]["f:spec"]
    assert "f:replicas" not in owners.get(("kubectl-edit", "Update"), {}).get("f:spec", {})


async def test_apply_removes_only_what_no_manager_still_applies(apps: client.AppsV1Api) -> None:
    mine = deployment(metadata={"annotations": {"a": "1", "b": "2"}})
    await apply(apps, mine)
    theirs = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "annotations": {"b": "2", "c": "3"}}}
    await apply(apps, theirs, manager="other")

    del mine["metadata"]["annotations"]["a"]
    del mine["metadata"]["annotations"]["b"]
    result = await apply(apps, mine)
    assert result.metadata.annotations == {"b": "2", "c": "3"}  # b survives: "other" still applies it


async def test_error_bodies_are_the_apiservers(apps: client.AppsV1Api, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as missing:
        await apps.read_namespaced_deployment("nope", NS)
    assert (missing.value.status, status_body(missing.value)["reason"]) == (404, "NotFound")
    assert status_body(missing.value)["message"] == 'deployments.apps "nope" not found'

    await core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
    with pytest.raises(ApiException) as exists:
        await core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}})
    assert (exists.value.status, status_body(exists.value)["reason"]) == (409, "AlreadyExists")

    with pytest.raises(ApiException) as invalid:
        await apply(apps, deployment(image=""))
    body = status_body(invalid.value)
    assert (invalid.value.status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.template.spec.containers[0].image"}
    ]
    assert body["message"].startswith('Deployment.apps "web" is invalid: spec.template.spec.containers[0].image')

    with pytest.raises(ApiException) as no_namespace:
        await core.create_namespaced_secret("absent", {"metadata": {"name": "s"}})
    assert status_body(no_namespace.value)["message"] == 'namespaces "absent" not found'


async def test_a_stale_resource_version_is_a_conflict(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"k": "1"}})
    created.data = {"k": "2"}
    await core.replace_namespaced_config_map("cfg", NS, created)
    created.data = {"k": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as raised:
        await core.replace_namespaced_config_map("cfg", NS, created)
    body = status_body(raised.value)
    assert (raised.value.status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]


async def test_generation_moves_on_spec_changes_only(apps: client.AppsV1Api, k8s_emulator: Emulator) -> None:  # noqa: F811
    await apply(apps, deployment())
    await k8s_emulator.tick()  # status writes
    assert (await apps.read_namespaced_deployment("web", NS)).metadata.generation == 1
    labelled = await apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"x": "y"}}}, field_manager="kubectl-label")
    assert labelled.metadata.generation == 1
    scaled = await apps.patch_namespaced_deployment("web", NS, [{"op": "replace", "path": "/spec/replicas", "value": 3}], field_manager="kubectl-edit")
    assert scaled.metadata.generation == 2
    merged = await apps.patch_namespaced_deployment("web", NS, {"spec": {"paused": True}}, field_manager="x", _content_type="application/merge-patch+json")
    assert (merged.metadata.generation, merged.spec.paused) == (3, True)


async def test_the_controller_progresses_status_tick_by_tick(apps: client.AppsV1Api, core: client.CoreV1Api, k8s_emulator: Emulator) -> None:  # noqa: F811
    await apply(apps, deployment(replicas=2))
    await k8s_emulator.settle()
    started = await apps.read_namespaced_deployment("web", NS)
    assert (started.status.observed_generation, started.status.updated_replicas, started.status.ready_replicas) == (1, 2, None)
    progressing = {c.type: c for c in started.status.conditions}
    assert progressing["Progressing"].reason == "NewReplicaSetCreated"
    assert progressing["Available"].status == "False"
    pods = await core.list_namespaced_pod(NS, label_selector="app=web")
    assert [p.status.container_statuses[0].state.waiting.reason for p in pods.items] == ["ContainerCreating"] * 2

    await k8s_emulator.tick()
    done = await apps.read_namespaced_deployment("web", NS)
    assert (done.status.ready_replicas, done.status.available_replicas, done.status.replicas) == (2, 2, 2)
    conditions = {c.type: c for c in done.status.conditions}
    assert (conditions["Progressing"].reason, conditions["Available"].status) == ("NewReplicaSetAvailable", "True")

    # A rolling update keeps the old pods until the new ones are ready.
    await apply(apps, deployment(image="nginx:1.28"))
    await k8s_emulator.settle()
    rolling = await apps.read_namespaced_deployment("web", NS)
    assert (rolling.status.observed_generation, rolling.status.replicas, rolling.status.updated_replicas) == (2, 4, 2)
    await k8s_emulator.tick()
    rolled = await apps.read_namespaced_deployment("web", NS)
    assert (rolled.status.replicas, rolled.status.updated_replicas, rolled.status.ready_replicas) == (2, 2, 2)
    images = {p.spec.containers[0].image for p in (await core.list_namespaced_pod(NS, label_selector="app=web")).items}
    assert images == {"nginx:1.28"}


async def test_failure_injection(apps: client.AppsV1Api, core: client.CoreV1Api, k8s_emulator: Emulator) -> None:  # noqa: F811
    for name, image in (("pull", f"{FAIL_IMAGE_PULL}/x:1"), ("crash", f"{FAIL_CRASH_LOOP}/x:1"), ("idle", f"{FAIL_NEVER_READY}/x:1")):
        await apply(apps, deployment(name, image=image, replicas=1, progressDeadlineSeconds=5))
    await k8s_emulator.settle()

    async def container(name: str) -> Any:
        (pod,) = (await core.list_namespaced_pod(NS, label_selector=f"app={name}")).items
        return pod, pod.status.container_statuses[0]

    await k8s_emulator.tick()
    pod, state = await container("pull")
    assert (pod.status.phase, state.state.waiting.reason) == ("Pending", "ErrImagePull")
    await k8s_emulator.tick()
    _, state = await container("pull")
    assert state.state.waiting.reason == "ImagePullBackOff"

    _, first = await container("crash")
    await k8s_emulator.tick()
    pod, state = await container("crash")
    assert (pod.status.phase, state.state.waiting.reason, state.last_state.terminated.exit_code) == ("Running", "CrashLoopBackOff", 1)
    assert state.restart_count > first.restart_count

    pod, state = await container("idle")
    assert (pod.status.phase, state.ready, state.state.running is not None) == ("Running", False, True)

    for name in ("pull", "crash", "idle"):
        status = (await apps.read_namespaced_deployment(name, NS)).status
        assert {c.type: c.reason for c in status.conditions}["Progressing"] != "ProgressDeadlineExceeded"
    await k8s_emulator.tick(5)
    for name in ("pull", "crash", "idle"):
        conditions = {c.type: c for c in (await apps.read_namespaced_deployment(name, NS)).status.conditions}
        assert (conditions["Progressing"].status, conditions["Progressing"].reason) == ("False", "ProgressDeadlineExceeded")
        assert conditions["Progressing"].message.endswith("has timed out progressing.")


async def test_list_by_label_and_watch_resume(apps: client.AppsV1Api, core: client.CoreV1Api, k8s_emulator: Emulator) -> None:  # noqa: F811
    for name, tier in (("a", "front"), ("b", "back")):
        await core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": {"tier": tier}}})
    listed = await core.list_namespaced_config_map(NS, label_selector="tier in (front,middle)")
    assert [c.metadata.name for c in listed.items] == ["a"]
    assert [c.metadata.name for c in (await core.list_namespaced_config_map(NS, label_selector="tier!=front")).items] == ["b"]

    since = listed.metadata.resource_version
    await core.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}})
    await core.create_namespaced_config_map(NS, {"metadata": {"name": "c", "labels": {"tier": "front"}}})
    await core.delete_namespaced_config_map("a", NS)

    seen: list[tuple[str, str]] = []
    async with watch.Watch() as stream:
        async for event in stream.stream(core.list_namespaced_config_map, NS, label_selector="tier=front", resource_version=since, timeout_seconds=5):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 3:
                break
    assert seen == [("MODIFIED", "a"), ("ADDED", "c"), ("DELETED", "a")]

    k8s_emulator.compact()
    with pytest.raises(ApiException) as gone:
        async with watch.Watch() as stream:
            async for _ in stream.stream(core.list_namespaced_config_map, NS, resource_version=since, timeout_seconds=5):
                pass
    assert gone.value.status == 410
    assert "too old resource version" in str(gone.value.reason)


async def test_deleting_a_namespace_removes_its_content(core: client.CoreV1Api, apps: client.AppsV1Api, k8s_emulator: Emulator) -> None:  # noqa: F811
    await apply(apps, deployment())
    response = await core.delete_namespace(NS, _preload_content=False)
    terminating = json.loads(await response.read())
    response.release()
    assert (terminating["kind"], terminating["status"]["phase"]) == ("Namespace", "Terminating")
    await k8s_emulator.settle()
    with pytest.raises(ApiException) as gone:
        await core.read_namespace(NS)
    assert gone.value.status == 404
    assert (await apps.list_deployment_for_all_namespaces()).items == []
    assert (await core.list_pod_for_all_namespaces()).items == []


async def test_rbac_answers_forbidden_with_the_apiservers_message(tmp_path: Path) -> None:
    rules = ({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]},)
    async with Emulator(tokens={"t0ken": Subject("system:serviceaccount:convoy-system:convoy-agent", rules)}) as emulator:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(emulator.write_kubeconfig(tmp_path / "kc", token="t0ken")), client_configuration=configuration)
        async with client.ApiClient(configuration) as api_client:
            apps = client.AppsV1Api(api_client)
            with pytest.raises(ApiException) as denied:
                await apps.list_namespaced_deployment("default")
            body = status_body(denied.value)
            assert (denied.value.status, body["reason"]) == (403, "Forbidden")
            assert body["message"] == (
                'deployments.apps is forbidden: User "system:serviceaccount:convoy-system:convoy-agent" cannot list '
                'resource "deployments" in API group "apps" in the namespace "default"'
            )
            # Server-side apply that would create the object needs `create` as well.
            with pytest.raises(ApiException) as create_denied:
                await apps.patch_namespaced_deployment("web", "default", deployment(), field_manager="convoy", _content_type=APPLY)
            assert "cannot create resource" in status_body(create_denied.value)["message"]
