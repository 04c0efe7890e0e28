"""The Runtime contract suite against the Kubernetes runtime: on the API emulator always,
and on a real cluster (marker `realcluster`) when $KUBECONFIG names one.

Both run the real kubernetes_asyncio client; the hooks do their out-of-band edits the way
a person would, through the API with another field manager (`kubectl-edit`). On the
emulator, failures come from its image markers (tests/k8s_emulator/controller.py); on a
real cluster, from real images that crash, never get ready or do not exist.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
from google.protobuf import duration_pb2
from kubernetes_asyncio import client, config

from schemas.convoy.v1 import convergence_pb2, resources_pb2
from services.agent.runtimes.base import ApplyRejected, FailureReason, Runtime, WorkloadKey
from services.agent.runtimes.kubernetes import KubernetesRuntime, KubernetesSettings
from services.agent.runtimes.kubernetes_manifests import object_name
from tests.contract.runtime_suite import FailureMode, RuntimeContract, RuntimeFactory, make_workload
from tests.k8s_emulator import FAIL_CRASH_LOOP, FAIL_IMAGE_PULL, FAIL_NEVER_READY, Emulator


class KubernetesContract(RuntimeContract):
    """Hooks shared by the emulator and the real-cluster runs (not collected: no `Test` prefix)."""

    failure_modes: ClassVar[dict[str, str]] = {
        FailureMode.CRASH_LOOP: FailureReason.CRASH_LOOP,
        FailureMode.NEVER_READY: FailureReason.PROGRESS_DEADLINE,
        FailureMode.BAD_COMMAND: FailureReason.IMAGE_PULL,
    }
    healthy_image: ClassVar[str] = "registry.k8s.io/pause:3.10"
    progress_deadline_seconds: ClassVar[int] = 5

    oob: client.ApiClient
    """An API client of the test's own: what a person with kubectl would use."""

    @pytest.fixture
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    async def out_of_band_client(self, kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            self.oob = api
            yield api

    @pytest.fixture
    def runtime_factory(self, kubeconfig: Path) -> RuntimeFactory:
        async def make() -> Runtime:
            return await KubernetesRuntime.connect(KubernetesSettings(kubeconfig=str(kubeconfig)))

        return make

    def program(self, image: str, **fields: object) -> resources_pb2.Program:
        return resources_pb2.Program(name="main", image=image, **fields)  # type: ignore[arg-type]

    def spec(self, key: WorkloadKey, program: resources_pb2.Program, *, version: str, replicas: int = 2) -> convergence_pb2.WorkloadSpec:
        return convergence_pb2.WorkloadSpec(
            application=key.application,
            service=key.service,
            channel="staging",
            release_id=f"rel-{version}",
            version=version,
            programs=[program],
            replicas=replicas,
            progress_deadline=duration_pb2.Duration(seconds=self.progress_deadline_seconds),
        )

    def healthy_spec(self, key: WorkloadKey, *, version: str) -> convergence_pb2.WorkloadSpec:
        program = self.program(
            self.healthy_image, env={"VERSION": version}, ports=[resources_pb2.Port(name="http", port=8080)]
        )
        return self.spec(key, program, version=version)

    def failing_image(self, mode: str) -> resources_pb2.Program:
        raise NotImplementedError

    def failing_spec(self, key: WorkloadKey, mode: str) -> convergence_pb2.WorkloadSpec:
        return self.spec(key, self.failing_image(mode), version="bad", replicas=1)

    async def drift(self, runtime: Runtime, key: WorkloadKey) -> None:
        apps = client.AppsV1Api(self.oob)
        live = await apps.read_namespaced_deployment(object_name(key), key.namespace)
        await apps.patch_namespaced_deployment(
            object_name(key), key.namespace, {"spec": {"replicas": live.spec.replicas + 1}}, field_manager="kubectl-edit"
        )

    async def fingerprint(self, runtime: Runtime, key: WorkloadKey) -> object:
        live = await client.AppsV1Api(self.oob).read_namespaced_deployment(object_name(key), key.namespace)
        return (live.metadata.uid, live.metadata.generation)

    async def add_foreign_workload(self, runtime: Runtime, namespace: str) -> None:
        labels = {"app": "foreign"}
        body = {
            "metadata": {"name": "foreign", "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": self.healthy_image}]}},
            },
        }
        await client.AppsV1Api(self.oob).create_namespaced_deployment(namespace, body)

    async def test_names_a_cluster_refuses_leave_nothing_applied(self, runtime: Runtime, namespace: str) -> None:
        http = resources_pb2.Port(name="http", port=8080)
        digit = WorkloadKey(namespace=namespace, application="shop", service="1api")
        with pytest.raises(ApplyRejected, match="a Service name must be a DNS-1035 label"):
            await runtime.apply(make_workload(digit, self.spec(digit, self.program(self.healthy_image, ports=[http]), version="v1"), generation=1))
        web = WorkloadKey(namespace=namespace, application="shop", service="web")
        for bad in ("8080", "a--b"):
            port = resources_pb2.Port(name=bad, port=8080)
            with pytest.raises(ApplyRejected, match=f"port name '{bad}' is not a valid Kubernetes port name"):
                await runtime.apply(make_workload(web, self.spec(web, self.program(self.healthy_image, ports=[port]), version="v1"), generation=1))
        listed = await client.AppsV1Api(self.oob).list_namespaced_deployment(namespace)
        services = await client.CoreV1Api(self.oob).list_namespaced_service(namespace)
        assert (listed.items, services.items) == ([], [])

    async def assert_stopped(self, runtime: Runtime, keys: list[WorkloadKey]) -> None:
        apps = client.AppsV1Api(self.oob)
        for key in keys:  # the workloads outlive the agent
            live = await apps.read_namespaced_deployment(object_name(key), key.namespace)
            assert live.metadata.labels["convoy.dev/managed-by"] == "convoy"
        leftovers = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("convoy-k8s-") and not t.done()]
        assert leftovers == []


class TestKubernetesRuntimeOnEmulator(KubernetesContract):
    @pytest.fixture
    async def kubeconfig(self, tmp_path: Path) -> AsyncIterator[Path]:
        async with Emulator(auto_tick=0.02) as emulator:
            yield emulator.write_kubeconfig(tmp_path / "kubeconfig")

    def failing_image(self, mode: str) -> resources_pb2.Program:
        marker = {
            FailureMode.CRASH_LOOP: FAIL_CRASH_LOOP,
            FailureMode.NEVER_READY: FAIL_NEVER_READY,
            FailureMode.BAD_COMMAND: FAIL_IMAGE_PULL,
        }[mode]
        return self.program(f"{marker}/app:1")


@pytest.mark.realcluster
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="set KUBECONFIG to run the contract suite on a real cluster")
class TestKubernetesRuntimeOnRealCluster(KubernetesContract):
    timeout = 300.0
    progress_deadline_seconds = 30

    @pytest.fixture
    def kubeconfig(self) -> Path:
        return Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])

    @pytest.fixture(autouse=True)
    async def remove_namespace(self, namespace: str, out_of_band_client: client.ApiClient) -> AsyncIterator[None]:
        yield
        try:
            await client.CoreV1Api(out_of_band_client).delete_namespace(namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise

    def failing_image(self, mode: str) -> resources_pb2.Program:
        busybox = "busybox:1.36"
        if mode == FailureMode.CRASH_LOOP:
            return self.program(busybox, command=["sh", "-c", "exit 1"])
        if mode == FailureMode.NEVER_READY:
            never = resources_pb2.HealthCheck(command=resources_pb2.CommandCheck(command=["false"]))
            return self.program(busybox, command=["sleep", "3600"], health_check=never)
        return self.program("registry.invalid/convoy/does-not-exist:1")
