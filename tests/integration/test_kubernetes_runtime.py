"""Kubernetes-specific behaviour of the Kubernetes runtime, on the API emulator with the real client.

The contract suite (tests/contract/test_runtime_kubernetes.py) covers what every runtime
does; these cover what only this one has: the objects it renders and their labels,
namespace creation, server-side apply alongside other field managers, pruning, drift from
an out-of-band edit, progress followed through watches (ticked by the test), running with
nothing but the agent's ClusterRole, and errors mapped at the edge. And that a workload is
applied whole or not at all: names a cluster refuses are refused before any write, every
object is dry-run before the first real write, every write is `fieldValidation=Strict`, and
an apply cut short is finished by its retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from google.protobuf import duration_pb2
from kubernetes_asyncio import client, config

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Phase,
    RuntimeUnavailable,
    StaleGeneration,
    Workload,
    WorkloadKey,
    WorkloadStatus,
)
from services.agent.runtimes.kubernetes import KubernetesRuntime, KubernetesSettings, open_runtime, settings_from_environment
from tests.contract.runtime_suite import make_workload
from tests.k8s_emulator import FAIL_CRASH_LOOP, Emulator
from tests.k8s_emulator.authz import Subject
from tests.k8s_emulator.fixtures import k8s_emulator  # noqa: F401 - fixture

KEY = WorkloadKey(namespace="convoy-shop-staging", application="shop", service="web")
AGENT_YAML = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "agent.yaml"


def spec(*, image: str = "shop/web:1", version: str = "v1", replicas: int = 2, ports: bool = True, deadline: int = 0) -> convergence_pb2.WorkloadSpec:
    program = resources_pb2.Program(
        name="web",
        image=image,
        args=["--namespace={{.Namespace}}", *(["--port={{.Port}}"] if ports else [])],
        env={"VERSION": version},
        ports=[resources_pb2.Port(name="http", port=8080)] if ports else [],
    )
    if ports:
        program.health_check.CopyFrom(resources_pb2.HealthCheck(http=resources_pb2.HttpGet(path="/healthz")))
    made = convergence_pb2.WorkloadSpec(
        application="shop", service="web", channel="staging", release_id=f"rel-{version}", version=version,
        programs=[program], replicas=replicas,
    )
    if deadline:
        made.progress_deadline.CopyFrom(duration_pb2.Duration(seconds=deadline))
    return made


@pytest.fixture
def kubeconfig(k8s_emulator: Emulator, tmp_path: Path) -> Path:  # noqa: F811
    return k8s_emulator.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def runtime(kubeconfig: Path) -> AsyncIterator[KubernetesRuntime]:
    made = await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig)))
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    """What a person with kubectl would use: the real client, another field manager."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


async def healthy(runtime: KubernetesRuntime, emulator: Emulator, workload: Workload) -> WorkloadStatus:
    await emulator.settle()
    await emulator.tick()
    status = await runtime.status(workload.key)
    assert (status.phase, status.generation) == (Phase.HEALTHY, workload.generation), status
    return status


async def test_apply_creates_the_namespace_deployment_and_service_with_convoys_labels(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator  # noqa: F811
) -> None:
    workload = make_workload(KEY, spec(), generation=3)
    status = await runtime.apply(workload)
    assert (status.phase, status.generation, status.intent_id) == (Phase.PROGRESSING, 3, workload.intent_id)

    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    namespace = await core.read_namespace(KEY.namespace)
    assert namespace.metadata.labels["convoy.dev/managed-by"] == "convoy"
    deployment = await apps.read_namespaced_deployment("web", KEY.namespace)
    assert deployment.metadata.labels == {
        "convoy.dev/application": "shop", "convoy.dev/service": "web", "convoy.dev/channel": "staging", "convoy.dev/managed-by": "convoy",
    }
    annotations = deployment.metadata.annotations
    assert (annotations["convoy.dev/spec-hash"], annotations["convoy.dev/generation"], annotations["convoy.dev/intent-id"]) == (
        workload.spec_hash, "3", workload.intent_id,
    )
    assert {m.manager for m in deployment.metadata.managed_fields if m.operation == "Apply"} == {"convoy"}
    container = deployment.spec.template.spec.containers[0]
    assert container.args == [f"--namespace={KEY.namespace}", "--port=8080"]
    assert container.readiness_probe.http_get.port == 8080
    service = await core.read_namespaced_service("web", KEY.namespace)
    assert [(p.name, p.port) for p in service.spec.ports] == [("http", 8080)]
    assert service.spec.selector == {"convoy.dev/application": "shop", "convoy.dev/service": "web"}

    await healthy(runtime, k8s_emulator, workload)
    # A new generation without ports drops the Service.
    await runtime.apply(make_workload(KEY, spec(version="v2", ports=False), generation=4))
    assert [s.metadata.name for s in (await core.list_namespaced_service(KEY.namespace)).items] == []


async def test_other_field_managers_keep_their_fields_and_conflicts_are_forced_or_refused(
    runtime: KubernetesRuntime, kube: client.ApiClient, kubeconfig: Path, k8s_emulator: Emulator  # noqa: F811
) -> None:
    apps = client.AppsV1Api(kube)
    await runtime.apply(make_workload(KEY, spec(), generation=1))
    # Someone else applies an annotation of their own, and an autoscaler takes replicas.
    theirs = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "annotations": {"team.example/owner": "ops"}}}
    await apps.patch_namespaced_deployment("web", KEY.namespace, theirs, field_manager="ops-tool", _content_type="application/apply-patch+yaml")
    await apps.patch_namespaced_deployment("web", KEY.namespace, {"spec": {"replicas": 5}}, field_manager="autoscaler")

    polite = await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig), force_conflicts=False))
    try:
        with pytest.raises(ApplyRejected) as rejected:
            await polite.apply(make_workload(KEY, spec(version="v2"), generation=2))
    finally:
        await polite.close()
    assert rejected.value.retryable is False
    assert 'conflict with "autoscaler"' in str(rejected.value) and ".spec.replicas" in str(rejected.value)

    await runtime.apply(make_workload(KEY, spec(version="v2"), generation=2))
    live = await apps.read_namespaced_deployment("web", KEY.namespace)
    assert live.spec.replicas == 2
    assert live.metadata.annotations["team.example/owner"] == "ops"
    owners = {(m.manager, m.operation): m.fields_v1 for m in live.metadata.managed_fields}
    assert "f:replicas" in owners[("convoy", "Apply")]["f:spec"]
    assert "f:replicas" not in owners.get(("autoscaler", "Update"), {}).get("f:spec", {})


async def test_drift_after_an_out_of_band_edit_is_detected_and_repaired(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator  # noqa: F811
) -> None:
    workload = make_workload(KEY, spec(), generation=1)
    await runtime.apply(workload)
    await healthy(runtime, k8s_emulator, workload)
    apps = client.AppsV1Api(kube)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:hotfix"}]}}}}
    await apps.patch_namespaced_deployment("web", KEY.namespace, patch, field_manager="kubectl-edit")
    await k8s_emulator.settle()
    await k8s_emulator.tick()
    drifted = await runtime.status(KEY)
    assert (drifted.drifted, drifted.generation, drifted.spec_hash) == (True, 1, workload.spec_hash)
    assert next(s for s in await runtime.live() if s.key == KEY).drifted

    # The same generation without repair changes nothing; with repair it is put back.
    assert (await runtime.apply(workload)).drifted
    repaired = await runtime.apply(workload, repair=True)
    assert not repaired.drifted
    live = await apps.read_namespaced_deployment("web", KEY.namespace)
    assert live.spec.template.spec.containers[0].image == "shop/web:1"
    await healthy(runtime, k8s_emulator, workload)


async def test_delete_prunes_the_workload_and_leaves_the_namespace_and_strangers(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator  # noqa: F811
) -> None:
    await runtime.apply(make_workload(KEY, spec(), generation=1))
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    stranger = {"metadata": {"name": "other"}, "data": {"k": "v"}}
    await core.create_namespaced_config_map(KEY.namespace, stranger)
    await k8s_emulator.settle()
    assert len((await core.list_namespaced_pod(KEY.namespace)).items) == 2

    await runtime.delete(KEY)
    await k8s_emulator.settle()
    assert (await apps.list_namespaced_deployment(KEY.namespace)).items == []
    assert (await core.list_namespaced_service(KEY.namespace)).items == []
    assert (await core.list_namespaced_pod(KEY.namespace)).items == []
    assert [c.metadata.name for c in (await core.list_namespaced_config_map(KEY.namespace)).items] == ["other"]
    await core.read_namespace(KEY.namespace)
    assert (await runtime.status(KEY)).phase is Phase.ABSENT
    await runtime.delete(KEY)  # idempotent


async def test_a_newer_live_generation_refuses_an_older_intent(runtime: KubernetesRuntime) -> None:
    await runtime.apply(make_workload(KEY, spec(version="v2"), generation=5))
    with pytest.raises(StaleGeneration):
        await runtime.apply(make_workload(KEY, spec(version="v1"), generation=4))
    with pytest.raises(ApplyRejected, match="a new spec needs a new generation"):
        await runtime.apply(make_workload(KEY, spec(version="v3"), generation=5))


async def test_watch_follows_progress_tick_by_tick_and_survives_a_compaction(
    runtime: KubernetesRuntime, k8s_emulator: Emulator  # noqa: F811
) -> None:
    workload = make_workload(KEY, spec(replicas=1), generation=1)
    async with contextlib.aclosing(runtime.watch(KEY)) as statuses:
        assert (await anext(statuses)).phase is Phase.ABSENT
        await runtime.apply(workload)
        status = await anext(statuses)
        while status.phase is not Phase.PROGRESSING or status.desired_replicas != 1:
            status = await anext(statuses)
        k8s_emulator.compact()  # the watches' resourceVersions expire: they relist and go on
        await k8s_emulator.tick()
        while status.phase is not Phase.HEALTHY:
            status = await anext(statuses)
        assert (status.ready_replicas, status.intent_id) == (1, workload.intent_id)

        crashing = make_workload(KEY, spec(image=f"{FAIL_CRASH_LOOP}/web:2", replicas=1, deadline=30), generation=2)
        await runtime.apply(crashing)
        await k8s_emulator.tick(2)
        while status.phase is not Phase.FAILED:
            status = await anext(statuses)
    assert status.reason == FailureReason.CRASH_LOOP
    assert "CrashLoopBackOff" in status.message and "restarted" in status.message
    assert status.generation == 2


async def test_the_agents_cluster_role_is_all_the_runtime_needs(tmp_path: Path) -> None:
    role = next(d for d in yaml.safe_load_all(AGENT_YAML.read_text()) if d and d["kind"] == "ClusterRole")
    subject = Subject("system:serviceaccount:convoy-system:convoy-agent", tuple(role["rules"]))
    async with Emulator(tokens={"agent-token": subject}) as emulator:
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig", token="agent-token")
        runtime = await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig)))
        try:
            workload = make_workload(KEY, spec(), generation=1)
            await runtime.apply(workload)
            async with contextlib.aclosing(runtime.watch(KEY)) as statuses:
                await emulator.settle()
                await emulator.tick()
                status = await anext(statuses)
                while status.phase is not Phase.HEALTHY:
                    status = await anext(statuses)
            assert [s.key for s in await runtime.live()] == [KEY]
            await runtime.apply(make_workload(KEY, spec(version="v2", ports=False), generation=2))
            await runtime.delete(KEY)
            assert (await runtime.status(KEY)).phase is Phase.ABSENT
        finally:
            await runtime.close()

    narrower = Subject("someone", tuple(r for r in role["rules"] if r["resources"] != ["services"]))
    async with Emulator(tokens={"t": narrower}) as emulator:
        kubeconfig = emulator.write_kubeconfig(tmp_path / "narrow", token="t")
        runtime = await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig)))
        try:
            with pytest.raises(ApplyRejected, match="403.*services"):
                await runtime.apply(make_workload(KEY, spec(), generation=1))
        finally:
            await runtime.close()


async def test_errors_say_whether_to_retry(runtime: KubernetesRuntime, kubeconfig: Path, k8s_emulator: Emulator) -> None:  # noqa: F811
    no_image = spec(image="")
    with pytest.raises(ApplyRejected, match="has no image") as rejected:
        await runtime.apply(make_workload(KEY, no_image, generation=1))
    assert rejected.value.reason == FailureReason.APPLY_ERROR

    await k8s_emulator.stop()
    with pytest.raises(RuntimeUnavailable) as unavailable:
        await runtime.status(KEY)
    assert unavailable.value.retryable is True

    with pytest.raises(RuntimeUnavailable, match="cannot load Kubernetes credentials"):
        await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig.parent / "missing")))


async def test_credentials_are_found_the_way_kubectl_finds_them(kubeconfig: Path) -> None:
    assert settings_from_environment("prod", {"KUBECONFIG": f"{kubeconfig}:/elsewhere", "CONVOY_KUBE_CONTEXT": "emulator"}) == KubernetesSettings(
        name="prod", kubeconfig=str(kubeconfig), context="emulator"
    )
    assert settings_from_environment("prod", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).kubeconfig is None
    assert settings_from_environment("prod", {"HOME": "/home/x"}).kubeconfig == "/home/x/.kube/config"
    runtime = await open_runtime(config=resources_pb2.Runtime(name="prod"), state_dir=Path("/nonexistent"), environ={"KUBECONFIG": str(kubeconfig)})
    try:
        assert runtime.name == "prod"
        assert (await runtime.status(KEY)).phase is Phase.ABSENT
    finally:
        await runtime.close()


# ---- whole or nothing: names Kubernetes refuses, dry runs first, Strict, the generation last ----

WRITES = ("create", "update", "patch", "delete", "deletecollection")


def writes(emulator: Emulator) -> list[tuple[str, str]]:
    return [(r.verb, r.path) for r in emulator.requests if r.verb in WRITES]


def named(service: str, *ports: resources_pb2.Port, programs: int = 1) -> convergence_pb2.WorkloadSpec:
    made = spec(ports=False)
    made.service = service
    for i in range(1, programs):
        made.programs.append(resources_pb2.Program(name=f"side{i}", image="shop/side:1"))
    made.programs[0].ports.extend(ports)
    return made


@pytest.mark.parametrize(
    ("key", "workload_spec", "refusal"),
    [
        pytest.param(
            WorkloadKey(namespace=KEY.namespace, application="shop", service="1api"),
            named("1api", resources_pb2.Port(name="http", port=8080)),
            "service '1api' declares ports, so it needs a Kubernetes Service named '1api', and a Service name must be "
            "a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter and ending with a "
            "letter or digit; rename the service",
            id="service-name-starts-with-a-digit",
        ),
        pytest.param(
            KEY, named("web", resources_pb2.Port(name="8080", port=8080)),
            "program 'web': port name '8080' is not a valid Kubernetes port name (an IANA service name: at most 15 "
            "lower-case letters, digits and '-', with at least one letter, not starting or ending with '-' and without "
            "'--'); rename the port",
            id="port-name-without-a-letter",
        ),
        pytest.param(KEY, named("web", resources_pb2.Port(name="a--b", port=8080)), "port name 'a--b' is not a valid Kubernetes port name", id="port-name-with-double-hyphen"),
        pytest.param(
            KEY, named("web", resources_pb2.Port(name="metrics-endpoint-a", port=9090), resources_pb2.Port(name="metrics-endpoint-b", port=9091)),
            "program 'web': port name 'metrics-endpoin' is used twice", id="port-names-equal-once-cut-to-15",
        ),
        pytest.param(
            WorkloadKey(namespace="team.shop", application="shop", service="web"), named("web", resources_pb2.Port(name="http", port=8080)),
            "namespace 'team.shop' is not a valid Kubernetes namespace name", id="namespace-with-a-dot",
        ),
    ],
)
async def test_names_kubernetes_refuses_are_refused_before_anything_is_written(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator,  # noqa: F811
    key: WorkloadKey, workload_spec: convergence_pb2.WorkloadSpec, refusal: str,
) -> None:
    with pytest.raises(ApplyRejected) as rejected:
        await runtime.apply(make_workload(key, workload_spec, generation=1))
    assert refusal in str(rejected.value)
    assert (rejected.value.reason, rejected.value.retryable) == (FailureReason.APPLY_ERROR, False)
    assert writes(k8s_emulator) == []
    assert (await client.AppsV1Api(kube).list_deployment_for_all_namespaces()).items == []


async def test_ports_of_several_programs_make_one_service_so_they_must_differ(runtime: KubernetesRuntime, k8s_emulator: Emulator) -> None:  # noqa: F811
    both = named("web", resources_pb2.Port(name="http", port=8080), programs=2)
    both.programs[1].ports.append(resources_pb2.Port(name="http", port=8080))
    with pytest.raises(ApplyRejected) as rejected:
        await runtime.apply(make_workload(KEY, both, generation=1))
    assert "port name 'http' is declared by two programs" in str(rejected.value)
    assert "port 8080/TCP is declared by two programs" in str(rejected.value)
    assert writes(k8s_emulator) == []
    # A name that is only invalid for a Service is fine without ports: no Service is made.
    key = WorkloadKey(namespace=KEY.namespace, application="shop", service="1api")
    status = await runtime.apply(make_workload(key, named("1api"), generation=1))
    assert status.phase is Phase.PROGRESSING


@pytest.mark.parametrize("taken", ["Service", "Deployment"])
async def test_a_workload_is_applied_whole_or_not_at_all(
    runtime: KubernetesRuntime, kube: client.ApiClient, kubeconfig: Path, taken: str
) -> None:
    """Someone else owns a field of one of the two objects: the polite runtime's apply is refused
    before either object changes (old code applied the Deployment, then the Service was refused)."""
    await runtime.apply(make_workload(KEY, spec(), generation=1))
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    if taken == "Service":
        await core.patch_namespaced_service("web", KEY.namespace, {"metadata": {"labels": {"convoy.dev/channel": "hotfix"}}}, field_manager="kubectl-label")
    else:
        await apps.patch_namespaced_deployment("web", KEY.namespace, {"spec": {"replicas": 5}}, field_manager="autoscaler")

    polite = await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig), force_conflicts=False))
    try:
        with pytest.raises(ApplyRejected, match="409.*conflict"):
            await polite.apply(make_workload(KEY, spec(image="shop/web:2", version="v2"), generation=2))
    finally:
        await polite.close()
    deployment = await apps.read_namespaced_deployment("web", KEY.namespace)
    service = await core.read_namespaced_service("web", KEY.namespace)
    assert deployment.metadata.annotations["convoy.dev/generation"] == "1"
    assert deployment.spec.template.spec.containers[0].image == "shop/web:1"
    assert service.metadata.annotations["convoy.dev/generation"] == "1"


@pytest.mark.fault
@pytest.mark.parametrize("plural", ["services", "deployments"])
async def test_an_apply_cut_short_is_finished_by_the_retry(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator, plural: str  # noqa: F811
) -> None:
    workload = make_workload(KEY, spec(), generation=1)
    k8s_emulator.fail_next("patch", plural, code=503)  # the real write, after the dry runs passed
    with pytest.raises(RuntimeUnavailable):
        await runtime.apply(workload)
    await runtime.apply(workload)  # the agent's retry of the same intent
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    assert (await apps.read_namespaced_deployment("web", KEY.namespace)).metadata.annotations["convoy.dev/generation"] == "1"
    assert (await core.read_namespaced_service("web", KEY.namespace)).metadata.annotations["convoy.dev/generation"] == "1"
    await healthy(runtime, k8s_emulator, workload)


async def test_a_service_dropped_by_a_new_generation_is_gone_before_the_generation_is_marked(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator  # noqa: F811
) -> None:
    await runtime.apply(make_workload(KEY, spec(), generation=1))
    without_ports = make_workload(KEY, spec(version="v2", ports=False), generation=2)
    k8s_emulator.fail_next("delete", "services", code=503)
    with pytest.raises(RuntimeUnavailable):
        await runtime.apply(without_ports)
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    assert (await apps.read_namespaced_deployment("web", KEY.namespace)).metadata.annotations["convoy.dev/generation"] == "1"
    await runtime.apply(without_ports)  # the retry
    assert (await apps.read_namespaced_deployment("web", KEY.namespace)).metadata.annotations["convoy.dev/generation"] == "2"
    assert (await core.list_namespaced_service(KEY.namespace)).items == []


async def test_every_write_is_strict_and_dry_run_first(runtime: KubernetesRuntime, k8s_emulator: Emulator) -> None:  # noqa: F811
    await runtime.apply(make_workload(KEY, spec(), generation=1))
    second = spec(version="v2")
    second.programs[0].resources.cpu, second.programs[0].resources.memory = "0.5", "1024Mi"  # stored as 500m, 1Gi
    workload = make_workload(KEY, second, generation=2)
    await runtime.apply(workload)
    assert not (await healthy(runtime, k8s_emulator, workload)).drifted  # canonical quantities are no drift
    sent = [r for r in k8s_emulator.requests if r.verb in ("create", "update", "patch")]
    assert sent and all(r.param("fieldValidation") == "Strict" for r in sent)
    patches = [(r.path, r.param("dryRun")) for r in sent if r.verb == "patch"]
    deployment = f"/apis/apps/v1/namespaces/{KEY.namespace}/deployments/web"
    service = f"/api/v1/namespaces/{KEY.namespace}/services/web"
    assert patches == [(service, "All"), (deployment, "All"), (service, None), (deployment, None)] * 2


async def test_an_apply_the_schema_refuses_is_no_reason_to_retry(kube: client.ApiClient) -> None:
    """The apiserver answers an apply configuration with an unknown field with a 500 (kubernetes
    #122480); the runtime's edge knows that retrying it cannot help."""
    from services.agent.runtimes import kubernetes

    apps = client.AppsV1Api(kube)
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replica": 2}}
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": KEY.namespace}})
    with pytest.raises(ApplyRejected, match="field not declared in schema") as rejected:
        with kubernetes._edge("apply Deployment"):
            await apps.patch_namespaced_deployment("web", KEY.namespace, body, field_manager="convoy", _content_type="application/apply-patch+yaml")
    assert rejected.value.retryable is False


def _with_secrets(made: convergence_pb2.WorkloadSpec, **refs: resources_pb2.SecretRef) -> convergence_pb2.WorkloadSpec:
    made.programs[0].env["CONVOY_RESOURCE_DB_HOST"] = "db.internal"
    for name, ref in refs.items():
        made.programs[0].secret_env[name].CopyFrom(ref)
    return made


async def test_resource_attributes_are_env_values_and_secret_ones_secret_key_refs(
    runtime: KubernetesRuntime, kube: client.ApiClient, k8s_emulator: Emulator  # noqa: F811
) -> None:
    ref = resources_pb2.SecretRef(kubernetes=resources_pb2.KubernetesSecretKey(name="orders-db", key="password"))
    workload = make_workload(KEY, _with_secrets(spec(), CONVOY_RESOURCE_DB_PASSWORD=ref), generation=1)

    await runtime.apply(workload)

    deployment = await client.AppsV1Api(kube).read_namespaced_deployment("web", KEY.namespace)
    env = {e.name: e for e in deployment.spec.template.spec.containers[0].env}
    assert env["CONVOY_RESOURCE_DB_HOST"].value == "db.internal"
    secret = env["CONVOY_RESOURCE_DB_PASSWORD"]
    assert secret.value is None
    assert (secret.value_from.secret_key_ref.name, secret.value_from.secret_key_ref.key) == ("orders-db", "password")
    # The live object digests as rendered: no drift from the secretKeyRef's shape.
    assert not (await healthy(runtime, k8s_emulator, workload)).drifted


async def test_an_env_or_file_secret_reference_is_refused_on_kubernetes_before_anything_is_written(
    runtime: KubernetesRuntime, kube: client.ApiClient  # noqa: F811
) -> None:
    workload = make_workload(KEY, _with_secrets(spec(), DB_PASSWORD=resources_pb2.SecretRef(env="DB_PASSWORD")), generation=1)

    with pytest.raises(ApplyRejected, match="DB_PASSWORD references env:DB_PASSWORD; on a Kubernetes runtime") as refused:
        await runtime.apply(workload)

    assert refused.value.retryable is False
    assert [d.metadata.name for d in (await client.AppsV1Api(kube).list_deployment_for_all_namespaces()).items] == []


@pytest.mark.parametrize(
    ("value_from", "error"),
    [
        ({"secretKeyRef": {"name": "db", "key": "a/b"}}, "valueFrom.secretKeyRef.key: Invalid value"),
        ({"secretKeyRef": {"key": "password"}}, "valueFrom.secretKeyRef.name: Required value"),
        ({"secretKeyRef": {"name": "Not_A_Name", "key": "k"}}, "valueFrom.secretKeyRef.name: Invalid value"),
        ({}, "must specify one of"),
    ],
)
async def test_the_emulator_is_as_strict_as_the_apiserver_about_secret_key_refs(
    kube: client.ApiClient, value_from: dict[str, object], error: str
) -> None:
    await client.CoreV1Api(kube).create_namespace({"metadata": {"name": KEY.namespace}})
    container = {"name": "web", "image": "shop/web:1", "env": [{"name": "X", "valueFrom": value_from}]}
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [container]}}},
    }
    with pytest.raises(client.exceptions.ApiException) as refused:
        await client.AppsV1Api(kube).create_namespaced_deployment(KEY.namespace, body)
    assert refused.value.status == 422
    assert error in refused.value.body
