"""Defaulting and validation of the emulated types, as the apiserver does before storing.

Defaults matter because clients see them (a Deployment read back has
`progressDeadlineSeconds: 600`, containers have `imagePullPolicy` …) and because a
client that diffs live objects against what it sent must cope with them. Validation
covers what a deploy tool can get wrong (names, empty images, selectors that do not
match the template, port ranges) and answers 422 Invalid with causes.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from typing import Any

from tests.k8s_emulator import errors
from tests.k8s_emulator.resources import ResourceType

JSON = dict[str, Any]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_cluster_ips = (str(ipaddress.IPv4Address("10.96.0.10") + i) for i in itertools.count(1))


def _container_defaults(container: JSON) -> None:
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = ":" not in tag or tag.endswith(":latest")
    container.setdefault("imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if isinstance(probe, dict):
            probe.setdefault("timeoutSeconds", 1)
            probe.setdefault("periodSeconds", 10)
            probe.setdefault("successThreshold", 1)
            probe.setdefault("failureThreshold", 3)
            if isinstance(probe.get("httpGet"), dict):
                probe["httpGet"].setdefault("scheme", "HTTP")


def _pod_spec_defaults(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers") or []:
        if isinstance(container, dict):
            _container_defaults(container)


def apply_defaults(rt: ResourceType, obj: JSON) -> None:
    if rt.kind == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy.setdefault("type", "RollingUpdate")
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {})
        _pod_spec_defaults(template.setdefault("spec", {}))
    elif rt.kind == "Pod":
        _pod_spec_defaults(obj.setdefault("spec", {}))
    elif rt.kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if "clusterIP" not in spec:
            spec["clusterIP"] = next(_cluster_ips)
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif rt.kind == "Namespace":
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    elif rt.kind == "Secret":
        obj.setdefault("type", "Opaque")


Causes = list[tuple[str, str, str]]


def _metadata_causes(rt: ResourceType, meta: JSON) -> Causes:
    causes: Causes = []
    name = meta.get("name") or ""
    pattern = DNS_LABEL if rt.kind in ("Namespace", "Service") else DNS_SUBDOMAIN
    limit = 63 if pattern is DNS_LABEL else 253
    if not name:
        causes.append(("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"))
    elif not pattern.match(name) or len(name) > limit:
        what = "RFC 1123 label" if pattern is DNS_LABEL else "RFC 1123 subdomain"
        causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase {what} must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character'))
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append((f"metadata.labels", "FieldValueInvalid", f'Invalid value: "{value}": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\', and must start and end with an alphanumeric character'))
        if not QUALIFIED_NAME.match(key.rsplit("/", 1)[-1]):
            causes.append((f"metadata.labels", "FieldValueInvalid", f'Invalid value: "{key}": name part must consist of alphanumeric characters, \'-\', \'_\' or \'.\''))
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            causes.append(("metadata.annotations", "FieldValueInvalid", f"Invalid value: annotation {key!r} must be a string"))
    return causes


def _pod_spec_causes(spec: JSON, prefix: str) -> Causes:
    causes: Causes = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append((f"{prefix}.containers", "FieldValueRequired", "Required value"))
    seen: set[str] = set()
    for i, container in enumerate(containers):
        here = f"{prefix}.containers[{i}]"
        name = container.get("name") or ""
        if not name:
            causes.append((f"{here}.name", "FieldValueRequired", "Required value"))
        elif not DNS_LABEL.match(name):
            causes.append((f"{here}.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \'-\''))
        elif name in seen:
            causes.append((f"{here}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        seen.add(name)
        if not container.get("image"):
            causes.append((f"{here}.image", "FieldValueRequired", "Required value"))
        for j, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 0 < number < 65536:
                causes.append((f"{here}.ports[{j}].containerPort", "FieldValueInvalid", f"Invalid value: {number}: must be between 1 and 65535, inclusive"))
    return causes


def validate(rt: ResourceType, obj: JSON) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    causes = _metadata_causes(rt, meta)
    spec = obj.get("spec") or {}
    if rt.kind == "Deployment":
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            causes.append(("spec.replicas", "FieldValueInvalid", f"Invalid value: {replicas}: must be greater than or equal to 0"))
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector:
            causes.append(("spec.selector", "FieldValueRequired", "Required value"))
        elif any(labels.get(k) != v for k, v in selector.items()):
            causes.append(("spec.template.metadata.labels", "FieldValueInvalid", f"Invalid value: {labels!r}: `selector` does not match template `labels`"))
        deadline = spec.get("progressDeadlineSeconds")
        if isinstance(deadline, int) and deadline <= 0:
            causes.append(("spec.progressDeadlineSeconds", "FieldValueInvalid", f"Invalid value: {deadline}: must be greater than minReadySeconds"))
        causes += _pod_spec_causes((spec.get("template") or {}).get("spec") or {}, "spec.template.spec")
    elif rt.kind == "Pod":
        causes += _pod_spec_causes(spec, "spec")
    elif rt.kind == "Service":
        for i, port in enumerate(spec.get("ports") or []):
            number = port.get("port")
            if not isinstance(number, int) or not 0 < number < 65536:
                causes.append((f"spec.ports[{i}].port", "FieldValueInvalid", f"Invalid value: {number}: must be between 1 and 65535, inclusive"))
        if not spec.get("ports") and spec.get("clusterIP") != "None":
            causes.append(("spec.ports", "FieldValueRequired", "Required value"))
    if causes:
        raise errors.invalid(rt.kind, rt.group, name, causes)


def immutable_causes(rt: ResourceType, old: JSON, new: JSON) -> None:
    """Fields that cannot change after creation (a Deployment's selector)."""
    if rt.kind == "Deployment":
        before = (old.get("spec") or {}).get("selector")
        after = (new.get("spec") or {}).get("selector")
        if before != after:
            name = new["metadata"]["name"]
            raise errors.invalid(rt.kind, rt.group, name, [("spec.selector", "FieldValueInvalid", f"Invalid value: {after!r}: field is immutable")])
