"""The Kubernetes API emulator, driven by the real kubernetes_asyncio client.

These pin the behaviour the runtime (and anyone reading its tests) relies on being
faithful: server-side apply semantics and its conflicts, error bodies as the client parses
them, resourceVersion/generation rules, list+watch with resume and 410, the Deployment
controller's status progression, and failure injection. The emulator ticks only when a
test says so.

It must also refuse what a real kube-apiserver refuses, with the same answer: name rules per
kind, IANA port names, label syntax, unknown fields per `fieldValidation`, quantities stored
canonically, dry runs that store nothing — checked through the client and through kubectl
itself (installed on Convoy's machines; the kubectl test is skipped where it is not).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
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


# ---- what a real apiserver refuses (names, unknown fields, quantities) and dry runs ----------


def causes(error: ApiException) -> list[tuple[str, str, str]]:
    body = status_body(error)
    assert (error.status, body["reason"]) == (422, "Invalid")
    return [(c["field"], c["reason"], c["message"]) for c in body["details"]["causes"]]


DNS1035 = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
    "and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
    "'[a-z]([-a-z0-9]*[a-z0-9])?')"
)


async def test_each_kind_has_its_own_name_rule(apps: client.AppsV1Api, core: client.CoreV1Api) -> None:
    # A Service name is a DNS-1035 label (a letter first); a Deployment's a DNS-1123 subdomain.
    service = {"metadata": {"name": "1api"}, "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(ApiException) as refused:
        await core.create_namespaced_service(NS, service)
    assert causes(refused.value) == [("metadata.name", "FieldValueInvalid", f'Invalid value: "1api": {DNS1035}')]
    assert status_body(refused.value)["message"] == f'Service "1api" is invalid: metadata.name: Invalid value: "1api": {DNS1035}'
    assert (await apply(apps, deployment("1api"))).metadata.name == "1api"
    await core.create_namespaced_config_map(NS, {"metadata": {"name": "app.settings"}})

    # A namespace is a DNS-1123 label: no dots.
    with pytest.raises(ApiException) as dotted:
        await core.create_namespace({"metadata": {"name": "a.b"}})
    assert causes(dotted.value) == [("metadata.name", "FieldValueInvalid", 'Invalid value: "a.b": must not contain dots')]
    with pytest.raises(ApiException) as upper:
        await apply(apps, deployment("Web"))
    [(field, reason, message)] = causes(upper.value)
    assert (field, reason) == ("metadata.name", "FieldValueInvalid")
    assert message.startswith('Invalid value: "Web": a lowercase RFC 1123 subdomain must consist of')
    assert (await apps.list_namespaced_deployment(NS)).items[0].metadata.name == "1api"


async def test_port_container_and_label_names_are_checked_like_the_apiserver(
    apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    body = deployment("web", metadata={"labels": {"tier": "-front"}})
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["name"] = "Main"
    container["ports"] = [
        {"name": "8080", "containerPort": 8080},
        {"name": "a--b", "containerPort": 8081},
        {"name": "metrics-endpoint", "containerPort": 8082},
        {"name": "ok", "containerPort": 8083, "protocol": "HTTP"},
    ]
    with pytest.raises(ApiException) as refused:
        await apply(apps, body)
    found = causes(refused.value)
    at = "spec.template.spec.containers[0]"
    assert ("metadata.labels", "FieldValueInvalid") in {(f, r) for f, r, _ in found}
    assert (f"{at}.name", "FieldValueInvalid") in {(f, r) for f, r, _ in found}
    assert [c for c in found if c[0].startswith(f"{at}.ports")] == [
        (f"{at}.ports[0].name", "FieldValueInvalid", 'Invalid value: "8080": must contain at least one letter (a-z)'),
        (f"{at}.ports[1].name", "FieldValueInvalid", 'Invalid value: "a--b": must not contain consecutive hyphens'),
        (f"{at}.ports[2].name", "FieldValueInvalid", 'Invalid value: "metrics-endpoint": must be no more than 15 characters'),
        (f"{at}.ports[3].protocol", "FieldValueNotSupported", 'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"'),
    ]

    # A Service's port names are DNS-1123 labels ('a--b' is one), required once there are two.
    service = {"metadata": {"name": "web"}, "spec": {"ports": [{"name": "a--b", "port": 80}, {"port": 81}, {"name": "a--b", "port": 82}]}}
    with pytest.raises(ApiException) as ports:
        await core.create_namespaced_service(NS, service)
    assert causes(ports.value) == [
        ("spec.ports[1].name", "FieldValueRequired", "Required value"),
        ("spec.ports[2].name", "FieldValueDuplicate", 'Duplicate value: "a--b"'),
    ]
    service["spec"]["ports"] = [{"name": "a--b", "port": 80, "targetPort": "8080"}]
    with pytest.raises(ApiException) as target:
        await core.create_namespaced_service(NS, service)
    assert causes(target.value) == [
        ("spec.ports[0].targetPort", "FieldValueInvalid", 'Invalid value: "8080": must contain at least one letter (a-z)')
    ]
    service["spec"]["ports"] = [{"name": "a--b", "port": 80, "targetPort": "http"}]
    created = await core.create_namespaced_service(NS, service)
    assert [(p.name, p.target_port) for p in created.spec.ports] == [("a--b", "http")]


async def test_unknown_fields_follow_field_validation(core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
    body = {"metadata": {"name": "cfg"}, "data": {"k": "v"}, "bogus": 1, "metadata_": {}}
    with pytest.raises(ApiException) as strict:
        await core.create_namespaced_config_map(NS, body, field_validation="Strict")
    assert (strict.value.status, status_body(strict.value)["reason"]) == (400, "BadRequest")
    assert status_body(strict.value)["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
        'unknown field "bogus", unknown field "metadata_"'
    )
    assert (await core.list_namespaced_config_map(NS)).items == []

    created, status, headers = await core.create_namespaced_config_map_with_http_info(NS, body)  # Warn, the default
    assert status == 201 and created.data == {"k": "v"}
    assert headers.getall("Warning") == ['299 - "unknown field \\"bogus\\""', '299 - "unknown field \\"metadata_\\""']
    _, _, quiet = await core.create_namespaced_config_map_with_http_info(
        NS, {**body, "metadata": {"name": "cfg2"}}, field_validation="Ignore"
    )
    assert "Warning" not in quiet
    stored = await core.read_namespaced_config_map("cfg", NS, _preload_content=False)
    assert "bogus" not in json.loads(await stored.read())
    stored.release()

    # Patches are decoded too; a nested unknown field is named by its path.
    nested = {"spec": {"template": {"spec": {"containers": [{"name": "main", "bogus": True}]}}}}
    await apply(apps, deployment())
    with pytest.raises(ApiException) as patched:
        await apps.patch_namespaced_deployment("web", NS, nested, field_validation="Strict")
    assert status_body(patched.value)["message"] == 'strict decoding error: unknown field "spec.template.spec.containers[0].bogus"'

    # Server-side apply refuses unknown fields whatever fieldValidation says, with the apiserver's 500.
    with pytest.raises(ApiException) as applied:
        bad = deployment()
        bad["spec"]["template"]["spec"]["containers"][0]["bogus"] = True
        await apps.patch_namespaced_deployment("web", NS, bad, field_manager="convoy", field_validation="Ignore", _content_type=APPLY)
    assert applied.value.status == 500
    assert status_body(applied.value)["message"] == (
        "failed to create typed patch object (team/web; apps/v1, Kind=Deployment): "
        '.spec.template.spec.containers[name="main"].bogus: field not declared in schema'
    )

    with pytest.raises(ApiException) as unsupported:
        await core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}}, field_validation="Loud")
    assert causes(unsupported.value) == [
        ("fieldValidation", "FieldValueNotSupported", 'Unsupported value: "Loud": supported values: "", "Ignore", "Strict", "Warn"')
    ]
    assert status_body(unsupported.value)["message"].startswith('CreateOptions.meta.k8s.io "" is invalid: fieldValidation')


async def test_quantities_are_stored_in_canonical_form(apps: client.AppsV1Api, k8s_emulator: Emulator) -> None:  # noqa: F811
    body = deployment()
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"cpu": "1.5", "memory": "1.5Gi"}}
    created = await apply(apps, body)
    resources = created.spec.template.spec.containers[0].resources
    assert (resources.requests, resources.limits) == ({"cpu": "1", "memory": "1Gi"}, {"cpu": "1500m", "memory": "1536Mi"})
    await k8s_emulator.settle()
    settled = await apps.read_namespaced_deployment("web", NS)
    assert (await apply(apps, body)).metadata.resource_version == settled.metadata.resource_version  # still a no-op

    container["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    with pytest.raises(ApiException) as above_limit:
        await apply(apps, body)
    assert causes(above_limit.value) == [
        ("spec.template.spec.containers[0].resources.requests[cpu]", "FieldValueInvalid",
         'Invalid value: "2": must be less than or equal to cpu limit of 1')
    ]
    container["resources"] = {"requests": {"cpu": "-1"}}
    with pytest.raises(ApiException) as negative:
        await apply(apps, body)
    assert causes(negative.value)[0][2] == 'Invalid value: "-1": must be greater than or equal to 0'
    container["resources"] = {"requests": {"memory": "1 GB"}}
    with pytest.raises(ApiException) as garbage:
        await apply(apps, body)
    assert (garbage.value.status, status_body(garbage.value)["message"]) == (
        400, "Deployment in version \"v1\" cannot be handled as a Deployment: quantities must match the regular expression "
        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [("1000m", "1"), ("0.5", "500m"), ("1Gi", "1Gi"), ("1024Mi", "1Gi"), ("1.5Gi", "1536Mi"), ("0.5Gi", "512Mi"),
     ("1000", "1k"), ("1500", "1500"), ("100", "100"), ("1e3", "1e3"), ("1.5e3", "1500"), ("0.1m", "100u"),
     ("1.1Ki", "1126400m"), ("0.0000000001", "1n"), ("0", "0"), ("0Gi", "0"), ("500Mi", "500Mi"), ("3000000000m", "3M")],
)
def test_quantity_canonical_forms(given: str, stored: str) -> None:
    from tests.k8s_emulator import quantity

    assert quantity.canonical(given) == stored
    assert quantity.canonical(stored) == stored


async def test_dry_run_validates_and_answers_without_storing(
    apps: client.AppsV1Api, core: client.CoreV1Api, k8s_emulator: Emulator  # noqa: F811
) -> None:
    before = (await core.list_namespaced_config_map(NS)).metadata.resource_version
    preview = await core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"k": "v"}}, dry_run="All")
    assert (preview.metadata.name, preview.data, preview.metadata.resource_version) == ("cfg", {"k": "v"}, None)
    assert preview.metadata.uid and preview.metadata.creation_timestamp
    listed = await core.list_namespaced_config_map(NS)
    assert (listed.items, listed.metadata.resource_version) == ([], before)

    await apply(apps, deployment())
    await k8s_emulator.settle()
    created = await apps.read_namespaced_deployment("web", NS)
    body = deployment(image="nginx:1.28")
    preview = await apps.patch_namespaced_deployment(
        "web", NS, body, field_manager="convoy", dry_run="All", _content_type=APPLY
    )
    assert preview.spec.template.spec.containers[0].image == "nginx:1.28"
    assert preview.metadata.generation == 2 and preview.metadata.resource_version == created.metadata.resource_version
    await k8s_emulator.settle()
    live = await apps.read_namespaced_deployment("web", NS)
    assert (live.spec.template.spec.containers[0].image, live.metadata.generation) == ("nginx:1.27", 1)
    assert live.metadata.resource_version == created.metadata.resource_version

    # A dry run refuses what the write would refuse: validation, and other managers' fields.
    with pytest.raises(ApiException) as invalid:
        await apps.patch_namespaced_deployment("web", NS, deployment(image=""), field_manager="convoy", dry_run="All", _content_type=APPLY)
    assert invalid.value.status == 422
    await apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 5}}, field_manager="kubectl-edit")
    with pytest.raises(ApiException) as conflict:
        await apps.patch_namespaced_deployment("web", NS, body, field_manager="convoy", dry_run="All", _content_type=APPLY)
    assert conflict.value.status == 409

    await apps.delete_namespaced_deployment("web", NS, dry_run="All")
    assert (await apps.read_namespaced_deployment("web", NS)).spec.replicas == 5
    with pytest.raises(ApiException) as bad:
        await apps.delete_namespaced_deployment("web", NS, dry_run="Some")
    assert causes(bad.value) == [("dryRun", "FieldValueNotSupported", 'Unsupported value: ["Some"]: supported values: "All"')]
    assert {r.param("dryRun") for r in k8s_emulator.requests if r.verb in ("create", "patch", "delete")} == {"All", None, "Some"}


KUBECTL = shutil.which("kubectl")


async def kubectl(kubeconfig: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run kubectl against the emulator (which keeps serving: this awaits the process)."""
    assert KUBECTL is not None
    process = await asyncio.create_subprocess_exec(
        KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kube-cache'}", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(kubeconfig.parent)},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_kubectl_gets_the_apiservers_answers(k8s_emulator: Emulator, tmp_path: Path) -> None:  # noqa: F811
    kubeconfig = k8s_emulator.write_kubeconfig(tmp_path / "kubeconfig")
    manifest = json.dumps({**deployment(), "metadata": {"name": "web", "namespace": "default"}})

    # --validate=strict (the default) finds fieldValidation in /openapi/v3 and leaves it to the server.
    code, out, err = await kubectl(kubeconfig, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=manifest)
    assert (code, out.strip(), err) == (0, "deployment.apps/web serverside-applied (server dry run)", "")
    code, out, err = await kubectl(kubeconfig, "get", "deployments", "-A", "-o", "name")
    assert (code, out) == (0, "")
    assert any(r.verb == "patch" and r.param("dryRun") == "All" and r.param("fieldValidation") == "Strict" for r in k8s_emulator.requests)

    code, _, err = await kubectl(kubeconfig, "create", "service", "clusterip", "1api", "--tcp=80:80")
    assert code == 1
    assert err.strip() == f'error: failed to create ClusterIP service: Service "1api" is invalid: metadata.name: Invalid value: "1api": {DNS1035}'

    bad_port = deployment()
    bad_port["metadata"]["namespace"] = "default"
    bad_port["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"name": "8080", "containerPort": 8080}]
    code, _, err = await kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=json.dumps(bad_port))
    assert code == 1
    assert err.strip() == (
        'The Deployment "web" is invalid: spec.template.spec.containers[0].ports[0].name: '
        'Invalid value: "8080": must contain at least one letter (a-z)'
    )

    config_map = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default"}, "bogus": 1})
    code, _, err = await kubectl(kubeconfig, "create", "--validate=strict", "-f", "-", stdin=config_map)
    assert code == 1
    assert 'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "bogus"' in err
    code, out, err = await kubectl(kubeconfig, "create", "--validate=warn", "-f", "-", stdin=config_map)
    assert (code, out.strip(), err.strip()) == (0, "configmap/cfg created", 'Warning: unknown field "bogus"')
