"""Kubernetes objects for a workload, and what live objects say about it — pure functions.

The Kubernetes runtime is a thin shell around these: it renders a Deployment (and a
Service when the programs declare ports) from a WorkloadSpec, server-side-applies them,
and reads back the Deployment and its Pods to compute a WorkloadStatus. Keeping all of
that free of I/O (no kubernetes_asyncio here: objects are plain dicts in the API's JSON
shape) makes it testable without a cluster and keeps the client at the edge.

Names: every name rendered must be one Kubernetes accepts for its place, or the apiserver
refuses the object with 422 — after the objects before it were applied. `name_problems`
checks the rendered objects with the apiserver's own rules (ported from k8s.io/apimachinery
`pkg/util/validation/validation.go`: IsDNS1123Label, IsDNS1123Subdomain, IsDNS1035Label,
IsValidPortName, and `pkg/api/validate/content/kube.go` IsLabelValue; applied per place as
k8s.io/kubernetes `pkg/apis/core/validation/validation.go` and `pkg/apis/apps/validation`
do: namespaces are DNS-1123 labels, Deployment names DNS-1123 subdomains, Service names
DNS-1035 labels, container names DNS-1123 labels, container port names IANA service names
(unique per container), Service port names DNS-1123 labels, unique, with no (port, protocol)
twice), so the runtime refuses a workload whole before it writes anything. Convoy's names map
to Kubernetes names as they always did (lower case, other characters as '-', port names cut
to 15 characters); what still breaks a rule after that is refused with the name to change.

Drift: the Deployment carries `convoy.dev/applied-digest`, a digest of the fields Convoy
renders (replicas, selector, deadline, Convoy's template labels, and per container the
image, command, args, env, ports, resources and readiness probe). `digest()` reads the
same fields back from the live object, normalising what the apiserver defaults or
canonicalises, so only an edit someone else made to one of those fields shows as drift.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.convoy.v1 import resources_pb2
from services.agent.runtimes import templates
from services.secrets.references import describe
from services.agent.runtimes.base import (
    FailureReason,
    Phase,
    Workload,
    WorkloadKey,
    WorkloadStatus,
    truncate,
)

JSON = dict[str, Any]

FIELD_MANAGER = "convoy"
MANAGED_BY = "convoy"
LABEL_APPLICATION = "convoy.dev/application"
LABEL_SERVICE = "convoy.dev/service"
LABEL_CHANNEL = "convoy.dev/channel"
LABEL_MANAGED_BY = "convoy.dev/managed-by"
ANNOTATION_SPEC_HASH = "convoy.dev/spec-hash"
ANNOTATION_GENERATION = "convoy.dev/generation"
ANNOTATION_INTENT_ID = "convoy.dev/intent-id"
ANNOTATION_DIGEST = "convoy.dev/applied-digest"
ANNOTATION_APPLICATION = "convoy.dev/application"
ANNOTATION_SERVICE = "convoy.dev/service"
ANNOTATION_RELEASE = "convoy.dev/release-id"
ANNOTATION_VERSION = "convoy.dev/version"

MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
DEFAULT_PROGRESS_DEADLINE = 600

PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    ("", "namespaces"): frozenset({"get", "create"}),
    ("apps", "deployments"): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("", "services"): frozenset({"create", "patch", "delete"}),
    ("", "pods"): frozenset({"list", "watch"}),
}
"""Every (API group, resource) → verbs the runtime uses: the agent's ClusterRole grants exactly
these (deploy/kubernetes/agent.yaml; a test compares them). `create` on deployments and
services is there because server-side apply that creates an object is authorized as create."""

POD_FAILURES = {
    "ImagePullBackOff": FailureReason.IMAGE_PULL,
    "ErrImagePull": FailureReason.IMAGE_PULL,
    "InvalidImageName": FailureReason.IMAGE_PULL,
    "ErrImageNeverPull": FailureReason.IMAGE_PULL,
    "CrashLoopBackOff": FailureReason.CRASH_LOOP,
    "RunContainerError": FailureReason.CRASH_LOOP,
    "CreateContainerError": FailureReason.APPLY_ERROR,
    "CreateContainerConfigError": FailureReason.APPLY_ERROR,
}
"""Container waiting reasons that mean the rollout will not succeed by waiting."""


class ManifestError(ValueError):
    """The spec cannot be expressed as Kubernetes objects (no image, bad port): not retryable."""


_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

DNS1123_LABEL_RULE = "a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
DNS1123_SUBDOMAIN_RULE = "a DNS-1123 subdomain: at most 253 characters of DNS-1123 labels joined by '.'"
DNS1035_LABEL_RULE = "a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter and ending with a letter or digit"
PORT_NAME_RULE = (
    "an IANA service name: at most 15 lower-case letters, digits and '-', with at least one letter, "
    "not starting or ending with '-' and without '--'"
)


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(value) is not None


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and _DNS1035_LABEL.fullmatch(value) is not None


def is_port_name(value: str) -> bool:
    """IsValidPortName (IANA_SVC_NAME, RFC 6335, lower case only)."""
    return (
        0 < len(value) <= 15
        and re.fullmatch(r"[-a-z0-9]+", value) is not None
        and re.search(r"[a-z]", value) is not None
        and "--" not in value
        and not value.startswith("-")
        and not value.endswith("-")
    )


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


def dns_label(text: str, *, limit: int = 63) -> str:
    """`text` as an RFC 1123 label: lowercase alphanumerics and '-', at most `limit` long."""
    label = _INVALID.sub("-", text.lower()).strip("-")[:limit].strip("-")
    if not label:
        raise ManifestError(f"{text!r} has no characters usable in a Kubernetes name")
    return label


def label_value(text: str) -> str:
    value = _LABEL_INVALID.sub("-", text)[:63]
    return value.strip("-_.")


def object_name(key: WorkloadKey) -> str:
    return dns_label(key.service)


def selector_labels(key: WorkloadKey) -> dict[str, str]:
    return {LABEL_APPLICATION: label_value(key.application), LABEL_SERVICE: label_value(key.service)}


def workload_labels(key: WorkloadKey, channel: str) -> dict[str, str]:
    labels = {**selector_labels(key), LABEL_MANAGED_BY: MANAGED_BY}
    if channel:
        labels[LABEL_CHANNEL] = label_value(channel)
    return labels


def pod_selector(key: WorkloadKey) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(key).items())


def namespace_manifest(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {LABEL_MANAGED_BY: MANAGED_BY}}}


def _seconds(duration: Any, default: int) -> int:
    if duration is None or (duration.seconds == 0 and duration.nanos == 0):
        return default
    return max(1, duration.seconds + (1 if duration.nanos else 0))


def _ports(program: resources_pb2.Program) -> list[JSON]:
    out: list[JSON] = []
    for port in program.ports:
        if not 0 < port.port < 65536:
            raise ManifestError(f"program {program.name!r}: port {port.port} is not between 1 and 65535")
        entry: JSON = {"name": dns_label(port.name or f"p{port.port}", limit=15), "containerPort": port.port}
        entry["protocol"] = (port.protocol or "TCP").upper()
        out.append(entry)
    return out


def _probe(program: resources_pb2.Program, ports: list[JSON], values: dict[str, str]) -> JSON | None:
    if not program.HasField("health_check"):
        return None
    check = program.health_check
    kind = check.WhichOneof("kind")
    probe: JSON
    if kind == "http":
        port = check.http.port or (ports[0]["containerPort"] if ports else 0)
        if not port:
            raise ManifestError(f"program {program.name!r}: an HTTP health check needs a port")
        probe = {"httpGet": {"path": check.http.path or "/", "port": port, "scheme": "HTTP"}}
    elif kind == "tcp":
        probe = {"tcpSocket": {"port": check.tcp.port or (ports[0]["containerPort"] if ports else 0)}}
    elif kind == "command":
        probe = {"exec": {"command": templates.render_all(list(check.command.command), values)}}
    else:
        return None
    probe.update(
        periodSeconds=_seconds(check.period if check.HasField("period") else None, 10),
        timeoutSeconds=_seconds(check.timeout if check.HasField("timeout") else None, 1),
        failureThreshold=check.failure_threshold or 3,
        successThreshold=1,
    )
    return probe


def _secret_env(program: resources_pb2.Program, name: str, ref: resources_pb2.SecretRef) -> JSON:
    """A secret variable as the cluster resolves it: `valueFrom.secretKeyRef` to a Secret in
    the workload's namespace. Only Kubernetes Secret references can be: env and file
    references name a machine the cluster is not, and Convoy-kept secrets are not delivered
    to agents by this version — the runtime refuses those before applying anything."""
    if ref.WhichOneof("source") != "kubernetes":
        raise ManifestError(
            f"program {program.name!r}: {name} references {describe(ref)}; on a Kubernetes runtime a secret must "
            "be a Kubernetes Secret reference ({kubernetes: {name, key}}) in the workload's namespace "
            "(retrying will not help)"
        )
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.kubernetes.name, "key": ref.kubernetes.key}}}


def _container(index: int, program: resources_pb2.Program, key: WorkloadKey, values: dict[str, str]) -> JSON:
    name = dns_label(program.name or (key.service if index == 0 else f"{key.service}-{index}"))
    if not program.image:
        raise ManifestError(f"program {program.name or name!r} has no image; the Kubernetes runtime runs images")
    ports = _ports(program)
    container: JSON = {"name": name, "image": program.image}
    if program.command:
        container["command"] = templates.render_all(list(program.command), values)
    if program.args:
        container["args"] = templates.render_all(list(program.args), values)
    env = [{"name": k, "value": templates.render(v, values)} for k, v in program.env.items()]
    env += [_secret_env(program, name, ref) for name, ref in program.secret_env.items()]
    if env:
        container["env"] = sorted(env, key=lambda e: e["name"])
    if ports:
        container["ports"] = ports
    requests = {k: v for k, v in (("cpu", program.resources.cpu), ("memory", program.resources.memory)) if v}
    if requests:
        container["resources"] = {"requests": requests}
    probe = _probe(program, ports, values)
    if probe is not None:
        container["readinessProbe"] = probe
    return container


def render_deployment(workload: Workload) -> JSON:
    """The Deployment Convoy applies for `workload` (raises ManifestError / TemplateError)."""
    key, spec = workload.key, workload.spec
    channel = workload.channel or spec.channel
    if not spec.programs:
        raise ManifestError(f"{key}: the spec has no programs")
    declared = {p.name: p.port for program in spec.programs for p in program.ports}
    try:
        values = templates.workload_values(spec, namespace=key.namespace, ports=declared)
        containers = [_container(i, program, key, values) for i, program in enumerate(spec.programs)]
    except templates.TemplateError as error:
        raise ManifestError(str(error)) from None
    names = [c["name"] for c in containers]
    if len(set(names)) != len(names):
        raise ManifestError(f"{key}: program names must be unique, got {names}")
    deployment: JSON = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(key),
            "namespace": key.namespace,
            "labels": workload_labels(key, channel),
            "annotations": {
                ANNOTATION_APPLICATION: key.application,
                ANNOTATION_SERVICE: key.service,
                ANNOTATION_SPEC_HASH: workload.spec_hash,
                ANNOTATION_GENERATION: str(workload.generation),
                ANNOTATION_INTENT_ID: workload.intent_id,
                ANNOTATION_RELEASE: spec.release_id,
                ANNOTATION_VERSION: spec.version,
            },
        },
        "spec": {
            "replicas": max(spec.replicas, 0),
            "progressDeadlineSeconds": _seconds(spec.progress_deadline if spec.HasField("progress_deadline") else None, DEFAULT_PROGRESS_DEADLINE),
            "selector": {"matchLabels": selector_labels(key)},
            "template": {
                "metadata": {"labels": workload_labels(key, channel)},
                "spec": {"containers": containers},
            },
        },
    }
    deployment["metadata"]["annotations"][ANNOTATION_DIGEST] = digest(deployment)
    return deployment


def render_service(workload: Workload) -> JSON | None:
    """A ClusterIP Service for the declared ports (None when there are none)."""
    key = workload.key
    ports: list[JSON] = []
    for program in workload.spec.programs:
        for port in _ports(program):
            ports.append({"name": port["name"], "port": port["containerPort"], "targetPort": port["containerPort"], "protocol": port["protocol"]})
    if not ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(key),
            "namespace": key.namespace,
            "labels": workload_labels(key, workload.channel or workload.spec.channel),
            "annotations": {ANNOTATION_GENERATION: str(workload.generation), ANNOTATION_SPEC_HASH: workload.spec_hash},
        },
        "spec": {"type": "ClusterIP", "selector": selector_labels(key), "ports": ports},
    }


def _label_problems(labels: JSON, where: str) -> list[str]:
    return [
        f"{where} label {key}={value!r} is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_' "
        "or '.', starting and ending with a letter or digit)"
        for key, value in sorted(labels.items()) if not is_label_value(value)
    ]


def name_problems(workload: Workload, deployment: JSON, service: JSON | None) -> list[str]:
    """Every name in the rendered objects that the apiserver would refuse, said as what to change
    in Convoy (the rules are those of the module docstring); empty when all of them are valid."""
    key, programs = workload.key, list(workload.spec.programs)
    problems: list[str] = []
    if not is_dns1123_label(key.namespace):
        problems.append(f"namespace {key.namespace!r} is not a valid Kubernetes namespace name ({DNS1123_LABEL_RULE}); bind the channel to another namespace")
    name = deployment["metadata"]["name"]
    if not is_dns1123_subdomain(name):
        problems.append(f"service {key.service!r} cannot name a Kubernetes Deployment ({DNS1123_SUBDOMAIN_RULE}); rename the service")
    problems += _label_problems(deployment["metadata"].get("labels") or {}, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    for index, container in enumerate(containers):
        program = programs[index].name if index < len(programs) and programs[index].name else key.service
        if not is_dns1123_label(container["name"]):
            problems.append(f"program {program!r} cannot name a Kubernetes container {container['name']!r} ({DNS1123_LABEL_RULE}); rename the program")
        seen: set[str] = set()
        for port in container.get("ports") or []:
            port_name = port.get("name", "")
            if not is_port_name(port_name):
                problems.append(f"program {program!r}: port name {port_name!r} is not a valid Kubernetes port name ({PORT_NAME_RULE}); rename the port")
            elif port_name in seen:
                problems.append(f"program {program!r}: port name {port_name!r} is used twice")
            seen.add(port_name)
    if service is not None:
        if not is_dns1035_label(service["metadata"]["name"]):
            problems.append(
                f"service {key.service!r} declares ports, so it needs a Kubernetes Service named "
                f"{service['metadata']['name']!r}, and a Service name must be {DNS1035_LABEL_RULE}; rename the service"
            )
        names: set[str] = set()
        pairs: set[tuple[int, str]] = set()
        for port in service["spec"]["ports"]:
            if port["name"] in names:
                problems.append(f"port name {port['name']!r} is declared by two programs; the ports of one Kubernetes Service need distinct names")
            if (port["port"], port["protocol"]) in pairs:
                problems.append(f"port {port['port']}/{port['protocol']} is declared by two programs; a Kubernetes Service serves each port once")
            names.add(port["name"])
            pairs.add((port["port"], port["protocol"]))
    return list(dict.fromkeys(problems))


def check_names(workload: Workload, deployment: JSON, service: JSON | None) -> None:
    """Raise ManifestError naming every invalid name (see `name_problems`)."""
    problems = name_problems(workload, deployment, service)
    if problems:
        raise ManifestError("; ".join(problems))


# ---- reading live objects ---------------------------------------------------------------------

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def quantity(text: Any) -> str:
    """A resource quantity in canonical form (the apiserver rewrites "0.5" as "500m")."""
    raw = str(text)
    for suffix, factor in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if raw.endswith(suffix):
            number, scale = raw[: -len(suffix)], Decimal(factor)
            break
    else:
        number, scale = raw, Decimal(1)
    try:
        return str((Decimal(number) * scale).normalize())
    except InvalidOperation:
        return raw


def _project_probe(probe: JSON | None) -> JSON | None:
    if not probe:
        return None
    handler = {k: probe[k] for k in ("httpGet", "tcpSocket", "exec") if k in probe}
    if "httpGet" in handler:
        handler["httpGet"] = {"path": handler["httpGet"].get("path", "/"), "port": handler["httpGet"].get("port")}
    return {
        **handler,
        "periodSeconds": probe.get("periodSeconds", 10),
        "timeoutSeconds": probe.get("timeoutSeconds", 1),
        "failureThreshold": probe.get("failureThreshold", 3),
    }


def _project_env(env: JSON) -> tuple[str, ...]:
    """(name, value) — the shape digests had before secret references, so a Deployment
    applied by an older agent does not look drifted — plus the Secret and key of a
    `secretKeyRef`."""
    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
    if ref is None:
        return (env.get("name"), env.get("value", ""))
    return (env.get("name"), env.get("value", ""), ref.get("name", ""), ref.get("key", ""))


def _project_container(container: JSON) -> JSON:
    resources = container.get("resources") or {}
    return {
        "name": container.get("name"),
        "image": container.get("image"),
        "command": container.get("command") or [],
        "args": container.get("args") or [],
        "env": sorted(_project_env(e) for e in container.get("env") or []),
        "ports": sorted((p.get("containerPort"), p.get("protocol") or "TCP", p.get("name") or "") for p in container.get("ports") or []),
        "resources": {
            kind: {k: quantity(v) for k, v in sorted((resources.get(kind) or {}).items())} for kind in ("requests", "limits")
        },
        "readiness": _project_probe(container.get("readinessProbe")),
    }


def digest(deployment: JSON) -> str:
    """A digest of the fields Convoy renders, read the same way from a rendered or a live Deployment."""
    spec = deployment.get("spec") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    projection = {
        "replicas": spec.get("replicas", 1),
        "progressDeadlineSeconds": spec.get("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE),
        "selector": (spec.get("selector") or {}).get("matchLabels") or {},
        "labels": {k: v for k, v in sorted(labels.items()) if k.startswith("convoy.dev/")},
        "containers": [_project_container(c) for c in (template.get("spec") or {}).get("containers") or []],
    }
    return hashlib.sha256(json.dumps(projection, sort_keys=True, default=str).encode()).hexdigest()[:32]


def workload_key(deployment: JSON) -> WorkloadKey:
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    return WorkloadKey(
        namespace=meta.get("namespace", ""),
        application=annotations.get(ANNOTATION_APPLICATION) or labels.get(LABEL_APPLICATION, ""),
        service=annotations.get(ANNOTATION_SERVICE) or labels.get(LABEL_SERVICE, ""),
    )


def is_managed(obj: JSON) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY


def _runs_template(pod: JSON, template: JSON) -> bool:
    """Whether the pod runs the Deployment's current template (same containers and images)."""
    def shape(spec: JSON) -> list[tuple[Any, ...]]:
        return [(c.get("name"), c.get("image"), tuple(c.get("command") or ()), tuple(c.get("args") or ())) for c in spec.get("containers") or []]
    return shape(pod.get("spec") or {}) == shape(template.get("spec") or {})


def pod_failure(pods: list[JSON], template: JSON) -> tuple[str, str] | None:
    """(FailureReason, message) when a pod of the current template is stuck in a failing state."""
    for pod in pods:
        if not _runs_template(pod, template):
            continue
        status = pod.get("status") or {}
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = POD_FAILURES.get(waiting.get("reason", ""))
            if reason is not None:
                name = (pod.get("metadata") or {}).get("name", "")
                restarts = container.get("restartCount", 0)
                detail = f"pod {name} container {container.get('name')}: {waiting.get('reason')}"
                if restarts:
                    detail += f" (restarted {restarts} times)"
                if waiting.get("message"):
                    detail += f": {waiting['message']}"
                return reason, detail
    return None


def rollout_status(key: WorkloadKey, deployment: JSON | None, pods: list[JSON]) -> WorkloadStatus:
    """Where the rollout is, from the Deployment's status and its Pods (like `kubectl rollout status`)."""
    if deployment is None:
        return WorkloadStatus(key=key, phase=Phase.ABSENT)
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    base = WorkloadStatus(
        key=key,
        phase=Phase.PROGRESSING,
        generation=int(annotations.get(ANNOTATION_GENERATION) or 0),
        spec_hash=annotations.get(ANNOTATION_SPEC_HASH, ""),
        intent_id=annotations.get(ANNOTATION_INTENT_ID, ""),
        drifted=annotations.get(ANNOTATION_DIGEST) != digest(deployment),
        ready_replicas=ready,
        desired_replicas=desired,
    )
    name = meta.get("name", "")
    observed = int(status.get("observedGeneration") or 0)
    if observed < int(meta.get("generation") or 1):
        return _with(base, Phase.PROGRESSING, message=f'waiting for deployment "{name}" spec update to be observed')
    failure = pod_failure(pods, spec.get("template") or {})
    if failure is not None:
        return _with(base, Phase.FAILED, reason=failure[0], message=failure[1])
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return _with(base, Phase.FAILED, reason=FailureReason.PROGRESS_DEADLINE, message=f'deployment "{name}": {condition.get("message", "exceeded its progress deadline")}')
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < desired:
        message = f'waiting for deployment "{name}" rollout to finish: {updated} out of {desired} new replicas have been updated'
    elif total > updated:
        message = f'waiting for deployment "{name}" rollout to finish: {total - updated} old replicas are pending termination'
    elif available < updated:
        message = f'waiting for deployment "{name}" rollout to finish: {available} of {updated} updated replicas are available'
    else:
        return _with(base, Phase.HEALTHY)
    return _with(base, Phase.PROGRESSING, message=message)


def _with(base: WorkloadStatus, phase: Phase, *, reason: str = "", message: str = "") -> WorkloadStatus:
    return WorkloadStatus(
        key=base.key, phase=phase, generation=base.generation, spec_hash=base.spec_hash, intent_id=base.intent_id,
        drifted=base.drifted, reason=reason, message=truncate(message), ready_replicas=base.ready_replicas,
        desired_replicas=base.desired_replicas,
    )
