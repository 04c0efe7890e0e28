"""The Kubernetes runtime: server-side apply of rendered manifests with kubernetes_asyncio.

This module is the edge: it is one of the only modules allowed to import
kubernetes_asyncio (an import-linter contract says so), it turns every ApiException /
aiohttp error into RuntimeUnavailable (retry later) or ApplyRejected (the spec cannot run
here), and it does no reasoning of its own — manifests and statuses come from the pure
`kubernetes_manifests`.

Applies use field manager `convoy` and force conflicts by default: Convoy is the
controller of the objects it renders, and Kubernetes' advice for controllers is to force
(a person's `kubectl scale` then shows as drift, which the agent reports; it does not
block the next release). With `force_conflicts=False` a conflict is an ApplyRejected that
names the other manager and field; a repair always forces.

A workload is applied whole or not at all. Its objects' names are checked against the
apiserver's rules first (`kubernetes_manifests.name_problems`), then every object is applied
with `dryRun=All` — the server runs admission, conflicts, defaulting and validation and
stores nothing — and only when all of them pass are they applied for real. So a Service the
cluster would refuse never leaves its Deployment applied alone. The Deployment is written
last: its generation annotation is what says "this workload is applied", so an apply cut
short after the Service (a timeout, the agent's crash) is done again in full by the retry,
which finds the Deployment still at the older generation; for the same reason a Service the
new generation no longer has is deleted before the Deployment is written. (The namespace is made before
the dry run: namespaced objects cannot be dry-run in a namespace that does not exist; an
empty namespace is no part of a workload, and delete leaves it too.) Every write sends
`fieldValidation=Strict`, so a field the server does not know fails the write instead of
being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes import kubernetes_manifests as manifests
from services.agent.runtimes.base import (
    ApplyRejected,
    FailureReason,
    Runtime,
    RuntimeUnavailable,
    StaleGeneration,
    Workload,
    WorkloadKey,
    WorkloadStatus,
)

JSON = dict[str, Any]
APPLY = "application/apply-patch+yaml"
STRICT = "Strict"
DRY_RUN = "All"
_CLOSED = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    name: str = "kubernetes"
    """The runtime's name in Convoy (observations carry it)."""
    kubeconfig: str | None = None
    """Path of a kubeconfig; None means the in-cluster service account (the agent's Deployment)."""
    context: str | None = None
    field_manager: str = manifests.FIELD_MANAGER
    force_conflicts: bool = True
    request_timeout: float = 30.0
    """Seconds per API request (watches are not bounded by it)."""


def settings_from_environment(name: str, environ: Mapping[str, str]) -> KubernetesSettings:
    """Where the agent's credentials come from, the way kubectl decides: $KUBECONFIG (its first
    file) when set, else the in-cluster service account when running in a Pod, else
    ~/.kube/config. $CONVOY_KUBE_CONTEXT picks a context other than the current one."""
    context = environ.get("CONVOY_KUBE_CONTEXT") or None
    if environ.get("KUBECONFIG"):
        return KubernetesSettings(name=name, kubeconfig=environ["KUBECONFIG"].split(os.pathsep)[0], context=context)
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return KubernetesSettings(name=name, context=context)
    return KubernetesSettings(name=name, kubeconfig=str(Path(environ.get("HOME", "~")).expanduser() / ".kube" / "config"), context=context)


async def open_runtime(
    *, config: resources_pb2.Runtime, state_dir: Path, environ: Mapping[str, str] | None = None
) -> KubernetesRuntime:
    """The agent's entry point (services.agent.selection): a connected runtime for `config`.
    `state_dir` is unused: the cluster is the state."""
    del state_dir
    return await KubernetesRuntime.connect(settings_from_environment(config.name, os.environ if environ is None else environ))


def _message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "")
        return str(body.get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason or error)


def _refused_shape(error: ApiException) -> bool:
    """The apiserver's 500 for an apply configuration that does not fit the schema (an unknown
    field, a list item twice): the object is wrong, retrying cannot help (kubernetes #122480)."""
    return error.status == 500 and _message(error).startswith("failed to create typed patch object")


def _raise_translated(error: BaseException, what: str) -> NoReturn:
    if isinstance(error, ApiException):
        status = error.status or 0
        message = f"{what}: Kubernetes answered {status} {_message(error)}"
        if _refused_shape(error):
            raise ApplyRejected(message, reason=FailureReason.APPLY_ERROR) from error
        if status == 0 or status == 401 or status == 429 or status >= 500:
            raise RuntimeUnavailable(message + "; retry later") from error
        raise ApplyRejected(message, reason=FailureReason.APPLY_ERROR) from error
    if isinstance(error, (aiohttp.ClientError, TimeoutError, OSError)):
        raise RuntimeUnavailable(f"{what}: cannot reach the Kubernetes API ({error!r}); retry later") from error
    raise error


@contextlib.contextmanager
def _edge(what: str) -> Iterator[None]:
    """Translate client errors raised inside the block into Convoy's runtime errors."""
    try:
        yield
    except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as error:
        _raise_translated(error, what)


class KubernetesRuntime:
    """Runs each workload as a Deployment (+ Service) in its namespace."""

    def __init__(self, api: client.ApiClient, *, settings: KubernetesSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._api = api
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._closed = False
        self._watches: set[asyncio.Queue[object]] = set()

    @classmethod
    async def connect(cls, settings: KubernetesSettings) -> KubernetesRuntime:
        """Load credentials (kubeconfig file or in-cluster service account) and build the client."""
        configuration = client.Configuration()
        try:
            if settings.kubeconfig:
                await config.load_kube_config(
                    config_file=settings.kubeconfig, context=settings.context, client_configuration=configuration
                )
            else:
                config.load_incluster_config(client_configuration=configuration)
        except (ConfigException, OSError) as error:
            where = settings.kubeconfig or "the in-cluster service account"
            raise RuntimeUnavailable(f"cannot load Kubernetes credentials from {where}: {error}; fix the agent's configuration") from error
        return cls(client.ApiClient(configuration), settings=settings)

    # ---- Runtime -----------------------------------------------------------------------------

    async def apply(self, workload: Workload, *, repair: bool = False) -> WorkloadStatus:
        self._check_open()
        key = workload.key
        live = await self._deployment(key)
        if live is not None:
            if not manifests.is_managed(live) or manifests.workload_key(live) != key:
                raise ApplyRejected(f"{key}: Deployment {live['metadata']['name']!r} exists and is not this Convoy workload; rename the service or remove it")
            annotations = live["metadata"].get("annotations") or {}
            live_generation = int(annotations.get(manifests.ANNOTATION_GENERATION) or 0)
            if workload.generation < live_generation:
                raise StaleGeneration(f"{key} runs generation {live_generation}; generation {workload.generation} is older")
            if workload.generation == live_generation:
                live_hash = annotations.get(manifests.ANNOTATION_SPEC_HASH, "")
                if workload.spec_hash != live_hash:
                    raise ApplyRejected(
                        f"{key}: generation {workload.generation} was applied with spec {live_hash}, "
                        f"not {workload.spec_hash}; a new spec needs a new generation"
                    )
                if not repair:
                    return await self.status(key)
                # A repair re-applies what that generation's intent applied.
                workload = Workload(
                    key=key, spec=workload.spec, spec_hash=workload.spec_hash, generation=workload.generation,
                    intent_id=annotations.get(manifests.ANNOTATION_INTENT_ID, workload.intent_id), channel=workload.channel,
                )
        try:
            deployment = manifests.render_deployment(workload)
            service = manifests.render_service(workload)
            manifests.check_names(workload, deployment, service)
        except manifests.ManifestError as error:
            raise ApplyRejected(f"{key}: {error}", reason=FailureReason.APPLY_ERROR) from None
        if live is None:
            await self._ensure_namespace(key.namespace)
        force = repair or self.settings.force_conflicts
        await self._apply_objects(key, deployment, service, force=force, dry_run=True)
        if service is None:  # a Service of an older generation goes before the new generation is marked
            await self._delete_service(key)
        applied = await self._apply_objects(key, deployment, service, force=force, dry_run=False)
        return manifests.rollout_status(key, self._plain(applied), await self._pods(key))

    async def _apply_objects(self, key: WorkloadKey, deployment: JSON, service: JSON | None, *, force: bool, dry_run: bool) -> Any:
        """Server-side apply the Service, then the Deployment (the generation marker goes last);
        with `dry_run` nothing is stored."""
        options: dict[str, Any] = {
            "field_manager": self.settings.field_manager, "force": force, "field_validation": STRICT,
            "_content_type": APPLY, "_request_timeout": self.settings.request_timeout,
        }
        if dry_run:
            options["dry_run"] = DRY_RUN
        check = " (dry run)" if dry_run else ""
        if service is not None:
            with _edge(f"apply Service {key}{check}"):
                await self._core.patch_namespaced_service(service["metadata"]["name"], key.namespace, service, **options)
        with _edge(f"apply Deployment {key}{check}"):
            return await self._apps.patch_namespaced_deployment(deployment["metadata"]["name"], key.namespace, deployment, **options)

    async def status(self, key: WorkloadKey) -> WorkloadStatus:
        self._check_open()
        deployment = await self._deployment(key)
        if deployment is None or not manifests.is_managed(deployment):
            return manifests.rollout_status(key, None, [])
        return manifests.rollout_status(key, deployment, await self._pods(key))

    async def watch(self, key: WorkloadKey) -> AsyncIterator[WorkloadStatus]:
        """The current status, then a new one after every change to the Deployment or its Pods."""
        self._check_open()
        wakeups: asyncio.Queue[object] = asyncio.Queue()
        self._watches.add(wakeups)
        name = manifests.object_name(key)
        followers: list[asyncio.Task[None]] = []
        try:
            with _edge(f"watch {key}"):
                deployments = await self._apps.list_namespaced_deployment(key.namespace, field_selector=f"metadata.name={name}")
                pods = await self._core.list_namespaced_pod(key.namespace, label_selector=manifests.pod_selector(key))
            followers = [
                asyncio.create_task(
                    self._follow(self._apps.list_namespaced_deployment, key.namespace, deployments.metadata.resource_version, wakeups, field_selector=f"metadata.name={name}"),
                    name=f"convoy-k8s-watch-deployment-{key}",
                ),
                asyncio.create_task(
                    self._follow(self._core.list_namespaced_pod, key.namespace, pods.metadata.resource_version, wakeups, label_selector=manifests.pod_selector(key)),
                    name=f"convoy-k8s-watch-pods-{key}",
                ),
            ]
            last = await self.status(key)
            yield last
            while True:
                item = await wakeups.get()
                while not wakeups.empty() and item is not _CLOSED and not isinstance(item, BaseException):
                    item = wakeups.get_nowait()
                if item is _CLOSED or self._closed:
                    return
                if isinstance(item, BaseException):
                    _raise_translated(item, f"watch {key}")
                current = await self.status(key)
                if current != last:
                    last = current
                    yield current
        finally:
            self._watches.discard(wakeups)
            for task in followers:
                task.cancel()
            for task in followers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def delete(self, key: WorkloadKey) -> None:
        self._check_open()
        live = await self._deployment(key)
        if live is not None and manifests.is_managed(live) and manifests.workload_key(live) == key:
            with _edge(f"delete Deployment {key}"):
                await self._ignore_missing(
                    self._apps.delete_namespaced_deployment(
                        live["metadata"]["name"], key.namespace,
                        body=client.V1DeleteOptions(propagation_policy="Background", preconditions=client.V1Preconditions(uid=live["metadata"]["uid"])),
                        _request_timeout=self.settings.request_timeout,
                    )
                )
        await self._delete_service(key)

    async def live(self) -> list[WorkloadStatus]:
        self._check_open()
        with _edge("list Convoy's Deployments"):
            deployments = await self._apps.list_deployment_for_all_namespaces(label_selector=manifests.MANAGED_SELECTOR, _request_timeout=self.settings.request_timeout)
            pods = await self._core.list_pod_for_all_namespaces(label_selector=manifests.MANAGED_SELECTOR, _request_timeout=self.settings.request_timeout)
        by_owner: dict[tuple[str, str, str], list[JSON]] = {}
        for pod in pods.items:
            plain = self._plain(pod)
            labels = plain["metadata"].get("labels") or {}
            owner = (plain["metadata"].get("namespace", ""), labels.get(manifests.LABEL_APPLICATION, ""), labels.get(manifests.LABEL_SERVICE, ""))
            by_owner.setdefault(owner, []).append(plain)
        out: list[WorkloadStatus] = []
        for item in deployments.items:
            deployment = self._plain(item)
            key = manifests.workload_key(deployment)
            selector = manifests.selector_labels(key)
            pods_of = by_owner.get((key.namespace, selector[manifests.LABEL_APPLICATION], selector[manifests.LABEL_SERVICE]), [])
            out.append(manifests.rollout_status(key, deployment, pods_of))
        return sorted(out, key=lambda s: s.key)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for wakeups in list(self._watches):
            wakeups.put_nowait(_CLOSED)
        await asyncio.sleep(0)
        await self._api.close()

    # ---- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeUnavailable(f"the {self.name} runtime is closed")

    def _plain(self, obj: Any) -> JSON:
        """A client model as the API's JSON dict (camelCase keys), what the pure code reads."""
        result: JSON = self._api.sanitize_for_serialization(obj)
        return result

    async def _deployment(self, key: WorkloadKey) -> JSON | None:
        with _edge(f"read Deployment {key}"):
            try:
                found = await self._apps.read_namespaced_deployment(
                    manifests.object_name(key), key.namespace, _request_timeout=self.settings.request_timeout
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return self._plain(found)

    async def _pods(self, key: WorkloadKey) -> list[JSON]:
        with _edge(f"list Pods of {key}"):
            pods = await self._core.list_namespaced_pod(
                key.namespace, label_selector=manifests.pod_selector(key), _request_timeout=self.settings.request_timeout
            )
        return [self._plain(p) for p in pods.items]

    async def _ensure_namespace(self, namespace: str) -> None:
        with _edge(f"create namespace {namespace}"):
            try:
                await self._core.read_namespace(namespace, _request_timeout=self.settings.request_timeout)
                return
            except ApiException as error:
                if error.status != 404:
                    raise
            try:
                await self._core.create_namespace(
                    manifests.namespace_manifest(namespace), field_manager=self.settings.field_manager,
                    field_validation=STRICT, _request_timeout=self.settings.request_timeout,
                )
            except ApiException as error:
                if error.status != 409:  # created meanwhile by someone else: fine
                    raise

    async def _delete_service(self, key: WorkloadKey) -> None:
        with _edge(f"delete Service {key}"):
            await self._ignore_missing(
                self._core.delete_namespaced_service(
                    manifests.object_name(key), key.namespace, _request_timeout=self.settings.request_timeout
                )
            )

    @staticmethod
    async def _ignore_missing(call: Awaitable[Any]) -> None:
        """Deletes are idempotent: an object that is already gone is fine."""
        try:
            await call
        except ApiException as error:
            if error.status != 404:
                raise

    async def _follow(
        self, list_call: Callable[..., Any], namespace: str, resource_version: str, wakeups: asyncio.Queue[object], **selectors: str
    ) -> None:
        """Stream watch events into `wakeups` (one item per event); relist on 410 Gone, report other errors."""
        version = resource_version
        try:
            while True:
                try:
                    async with watch.Watch() as stream:
                        async for _event in stream.stream(list_call, namespace, resource_version=version, **selectors):
                            version = stream.resource_version or version
                            wakeups.put_nowait(None)
                    return
                except ApiException as error:
                    if error.status != 410:
                        raise
                # Our resourceVersion was compacted away: list again and carry on from there.
                listed = await list_call(namespace, **selectors)
                version = listed.metadata.resource_version
                wakeups.put_nowait(None)
        except Exception as error:  # noqa: BLE001 - handed to the watching generator, which translates it
            if not self._closed:
                wakeups.put_nowait(error)


def _typecheck(runtime: KubernetesRuntime) -> Runtime:
    """Type checkers verify here that KubernetesRuntime satisfies the Runtime Protocol."""
    return runtime
