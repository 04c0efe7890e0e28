"""What the control plane and the kubelet would do: Deployments become Pods, Pods progress.

The Deployment controller reacts to changes (the emulator runs `reconcile` from an asyncio
task whenever a Deployment, Pod or Namespace changes), the way kube-controller-manager
does: it creates Pods for the current template (a rolling update keeps old Pods until the
new ones are ready), garbage-collects Pods of deleted Deployments, and writes the
Deployment's status (observedGeneration, replica counts, Progressing/Available).

Time-driven behaviour — a Pod starting, a container crash-looping, a progress deadline
expiring — happens only on `tick`, which moves the emulator's clock. Tests advance it
explicitly (or let the emulator auto-tick), so nothing depends on wall-clock sleeps.

Failure injection, by image name (a container whose image contains the marker):

- `fail.convoy.test/image-pull`: the image never pulls; the container waits with reason
  ErrImagePull, then ImagePullBackOff (alternating each tick); the Pod stays Pending.
- `fail.convoy.test/crash-loop`: the container exits with code 1 on every start; it waits
  in CrashLoopBackOff with `restartCount` growing by one per tick.
- `fail.convoy.test/never-ready`: the container runs but never passes readiness.

Any of them keeps the rollout from completing, so `progressDeadlineSeconds` (emulator
time) later the Deployment's Progressing condition turns False/ProgressDeadlineExceeded.
"""

from __future__ import annotations

import copy
import hashlib
import math
import uuid
from typing import Any

from tests.k8s_emulator import errors
from tests.k8s_emulator.resources import TYPES
from tests.k8s_emulator.store import Store, parse_stamp

JSON = dict[str, Any]

FAIL_IMAGE_PULL = "fail.convoy.test/image-pull"
FAIL_CRASH_LOOP = "fail.convoy.test/crash-loop"
FAIL_NEVER_READY = "fail.convoy.test/never-ready"

DEPLOYMENTS = next(t for t in TYPES if t.plural == "deployments")
PODS = next(t for t in TYPES if t.plural == "pods")

CONTROLLER = "kube-controller-manager"
KUBELET = "kubelet"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: JSON) -> str:
    digest = hashlib.sha256(repr(sorted_json(template)).encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:10])


def sorted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, sorted_json(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(sorted_json(v) for v in value)
    return value


def _owner_uid(deployment: JSON, pod_hash: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{deployment['metadata']['uid']}/{pod_hash}"))


def _ready(pod: JSON) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _max_unavailable(deployment: JSON, desired: int) -> int:
    value = (((deployment["spec"].get("strategy") or {}).get("rollingUpdate")) or {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.floor(desired * int(value[:-1]) / 100)
    return int(value)


class Controllers:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = store.clock
        self._steps: dict[str, int] = {}
        """Per pod uid: how many ticks it has lived through (drives its container states)."""
        self._hashes: dict[str, str] = {}
        """Per Deployment uid: the template hash it last rolled out (a new one is progress)."""

    # ---- entry points -----------------------------------------------------------------------

    def reconcile(self) -> None:
        self.store.finalize_namespaces()
        deployments = [o for (p, _, _), o in list(self.store.objects.items()) if p == "deployments"]
        for deployment in deployments:
            self._reconcile_deployment(deployment)
        self._collect_orphans()

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for (plural, ns, name), pod in list(self.store.objects.items()):
            if plural == "pods":
                uid = pod["metadata"]["uid"]
                self._steps[uid] = self._steps.get(uid, 0) + 1
                self.store.write_status(PODS, ns, name, self._pod_status(pod, self._steps[uid]), manager=KUBELET)
        self.reconcile()

    # ---- pods ------------------------------------------------------------------------------

    def _pod_status(self, pod: JSON, step: int) -> JSON:
        previous = pod.get("status") or {}
        before = {c["name"]: c for c in previous.get("containerStatuses") or []}
        statuses: list[JSON] = []
        phase = "Running"
        for container in pod["spec"]["containers"]:
            image = container.get("image", "")
            entry: JSON = {"name": container["name"], "image": image, "imageID": "", "restartCount": 0, "ready": False, "started": False}
            if FAIL_IMAGE_PULL in image:
                phase = "Pending"
                if step % 2:
                    entry["state"] = {"waiting": {"reason": "ErrImagePull", "message": f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'}}
                else:
                    entry["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}
            else:
                entry["imageID"] = f"{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"
                entry["containerID"] = f"containerd://{hashlib.sha256((pod['metadata']['uid'] + container['name']).encode()).hexdigest()}"
                started = (before.get(container["name"], {}).get("state") or {}).get("running", {}).get("startedAt") or self.clock.stamp()
                if FAIL_CRASH_LOOP in image:
                    entry["restartCount"] = step
                    entry["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": self.clock.stamp(), "finishedAt": self.clock.stamp()}}
                    entry["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {min(10 * 2 ** (step - 1), 300)}s restarting failed container={container['name']} pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"}}
                else:
                    entry["state"] = {"running": {"startedAt": started}}
                    entry["started"] = True
                    entry["ready"] = FAIL_NEVER_READY not in image
            statuses.append(entry)
        ready = all(s["ready"] for s in statuses)
        return self._with_conditions(previous, phase, statuses, ready, pod)

    def _with_conditions(self, previous: JSON, phase: str, statuses: list[JSON], ready: bool, pod: JSON) -> JSON:
        old = {c["type"]: c for c in previous.get("conditions") or []}

        def condition(kind: str, value: bool) -> JSON:
            text = "True" if value else "False"
            if kind in old and old[kind]["status"] == text:
                return old[kind]
            cond: JSON = {"type": kind, "status": text, "lastProbeTime": None, "lastTransitionTime": self.clock.stamp()}
            if not value:
                cond["reason"] = "ContainersNotReady"
                waiting = [s["name"] for s in statuses if not s["ready"]]
                cond["message"] = f"containers with unready status: [{' '.join(waiting)}]"
            return cond

        return {
            "phase": phase,
            "conditions": [
                condition("Initialized", True),
                condition("Ready", ready),
                condition("ContainersReady", ready),
                condition("PodScheduled", True),
            ],
            "hostIP": "10.0.0.2",
            "podIP": previous.get("podIP") or f"10.244.0.{(int(pod['metadata']['resourceVersion']) % 250) + 2}",
            "startTime": previous.get("startTime") or self.clock.stamp(),
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        }

    def _create_pod(self, deployment: JSON, pod_hash: str) -> None:
        meta = deployment["metadata"]
        template = copy.deepcopy(deployment["spec"]["template"])
        tmeta = template.get("metadata") or {}
        rs_name = f"{meta['name']}-{pod_hash}"
        pod: JSON = {
            "metadata": {
                "name": f"{rs_name}-{uuid.uuid4().hex[:5]}",
                "labels": {**(tmeta.get("labels") or {}), "pod-template-hash": pod_hash},
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": _owner_uid(deployment, pod_hash), "controller": True, "blockOwnerDeletion": True}
                ],
            },
            "spec": {**template["spec"], "nodeName": "emulator-node"},
        }
        if tmeta.get("annotations"):
            pod["metadata"]["annotations"] = tmeta["annotations"]
        created = self.store.create(PODS, meta["namespace"], pod, manager=CONTROLLER)
        waiting = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0, "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
            for c in created["spec"]["containers"]
        ]
        status = self._with_conditions({}, "Pending", waiting, False, created)
        self.store.write_status(PODS, meta["namespace"], created["metadata"]["name"], status, manager=KUBELET)

    def _owned_pods(self, deployment: JSON) -> list[JSON]:
        meta = deployment["metadata"]
        out = []
        for (plural, ns, _), pod in self.store.objects.items():
            if plural != "pods" or ns != meta["namespace"]:
                continue
            pod_hash = (pod["metadata"].get("labels") or {}).get("pod-template-hash", "")
            owners = pod["metadata"].get("ownerReferences") or []
            if pod_hash and owners and owners[0].get("uid") == _owner_uid(deployment, pod_hash):
                out.append(pod)
        return out

    def _collect_orphans(self) -> None:
        for (plural, ns, name), pod in list(self.store.objects.items()):
            if plural != "pods":
                continue
            owners = pod["metadata"].get("ownerReferences") or []
            pod_hash = (pod["metadata"].get("labels") or {}).get("pod-template-hash", "")
            if not owners or owners[0].get("kind") != "ReplicaSet" or not pod_hash:
                continue
            deployment = self.store.find(DEPLOYMENTS, ns, owners[0]["name"][: -(len(pod_hash) + 1)])
            if deployment is None or _owner_uid(deployment, pod_hash) != owners[0].get("uid"):
                self._delete_pod(ns, name)

    def _delete_pod(self, namespace: str, name: str) -> None:
        pod = self.store.find(PODS, namespace, name)
        if pod is not None:
            self._steps.pop(pod["metadata"]["uid"], None)
            try:
                self.store.delete(PODS, namespace, name)
            except errors.ApiError:
                pass

    # ---- deployments -------------------------------------------------------------------------

    def _reconcile_deployment(self, deployment: JSON) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        desired = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec["template"])
        pods = self._owned_pods(deployment)
        new = [p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == pod_hash]
        old = [p for p in pods if p not in new]
        for _ in range(desired - len(new)):
            self._create_pod(deployment, pod_hash)
        if len(new) > desired:
            for pod in sorted(new, key=_ready)[: len(new) - desired]:
                self._delete_pod(meta["namespace"], pod["metadata"]["name"])
        pods = self._owned_pods(deployment)
        new = [p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == pod_hash]
        if sum(map(_ready, new)) >= desired:
            for pod in old:
                self._delete_pod(meta["namespace"], pod["metadata"]["name"])
        pods = self._owned_pods(deployment)
        current = self.store.find(DEPLOYMENTS, meta["namespace"], meta["name"])
        if current is None:
            return
        status = self._deployment_status(current, pods, pod_hash, desired)
        self.store.write_status(DEPLOYMENTS, meta["namespace"], meta["name"], status, manager=CONTROLLER)

    def _deployment_status(self, deployment: JSON, pods: list[JSON], pod_hash: str, desired: int) -> JSON:
        meta, spec = deployment["metadata"], deployment["spec"]
        previous = deployment.get("status") or {}
        new = [p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == pod_hash]
        ready = sum(map(_ready, pods))
        counts = {
            "replicas": len(pods),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(desired - ready, 0),
        }
        rs_name = f"{meta['name']}-{pod_hash}"
        now = self.clock.stamp()
        old_conditions = {c["type"]: c for c in previous.get("conditions") or []}
        prior = old_conditions.get("Progressing")
        new_template = self._hashes.get(meta["uid"]) != pod_hash
        self._hashes[meta["uid"]] = pod_hash
        progressed = new_template or any(previous.get(k, 0) != counts[k] for k in ("updatedReplicas", "readyReplicas", "availableReplicas"))
        complete = len(new) == desired and len(pods) == desired and sum(map(_ready, new)) >= desired
        if complete:
            progressing = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif progressed or prior is None:
            reason = "NewReplicaSetCreated" if new_template else "ReplicaSetUpdated"
            message = f'Created new replica set "{rs_name}"' if new_template else f'ReplicaSet "{rs_name}" is progressing.'
            progressing = ("True", reason, message)
        elif prior.get("reason") == "ProgressDeadlineExceeded" or (
            (self.clock.now() - parse_stamp(prior["lastUpdateTime"])).total_seconds() > int(spec.get("progressDeadlineSeconds", 600))
        ):
            progressing = ("False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.')
        else:
            progressing = (prior["status"], prior["reason"], prior["message"])
        available = ready >= desired - _max_unavailable(deployment, desired)
        conditions = [
            self._condition(old_conditions, "Available", ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") if available else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."), now, touch=False),
            self._condition(old_conditions, "Progressing", progressing, now, touch=progressed),
        ]
        status: JSON = {"observedGeneration": meta.get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})
        status["conditions"] = conditions
        return status

    @staticmethod
    def _condition(old: dict[str, JSON], kind: str, value: tuple[str, str, str], now: str, *, touch: bool) -> JSON:
        status, reason, message = value
        prior = old.get(kind)
        same = prior is not None and (prior["status"], prior["reason"], prior["message"]) == value
        return {
            "type": kind,
            "status": status,
            "lastUpdateTime": now if (touch or not same) or prior is None else prior["lastUpdateTime"],
            "lastTransitionTime": prior["lastTransitionTime"] if prior is not None and prior["status"] == status else now,
            "reason": reason,
            "message": message,
        }
