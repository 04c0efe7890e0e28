"""Defaulting and validation of the emulated types, as the apiserver does before storing.

Defaults matter because clients see them (a Deployment read back has
`progressDeadlineSeconds: 600`, containers have `imagePullPolicy` …) and because a
client that diffs live objects against what it sent must cope with them; for the same
reason resource quantities are stored in canonical form (`canonicalize`, see `quantity`).

Validation answers 422 Invalid with one cause per problem, the way the registry strategies
do, for everything a deploy tool sends here: k8s.io/kubernetes
`pkg/apis/apps/validation/validation.go` (ValidateDeployment: the name by
NameIsDNSSubdomain, a selector that matches the template's labels, replicas, the progress
deadline) and `pkg/apis/core/validation/validation.go` (ValidateObjectMeta with the kind's
name rule — ValidateNamespaceName, ValidateServiceName = NameIsDNS1035Label, NameIsDNSSubdomain
for the rest — labels and annotations; validateContainers: DNS-1123 container names, unique;
validateContainerPorts: IANA_SVC_NAME port names, unique per container, port ranges,
protocols; ValidateEnv; ValidatePortNumOrName for probes; ValidateResourceRequirements;
ValidateService / validateServicePort: DNS-1123 port names, required when several, unique, no
(port, protocol) twice, target ports). The primitives and their messages are in `rules`.
Fields it does not check are accepted as given.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from typing import Any

from tests.k8s_emulator import errors, quantity, rules
from tests.k8s_emulator.resources import ResourceType

JSON = dict[str, Any]

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


Causes = list[rules.Cause]

NAME_RULES: dict[str, Callable[[str], list[str]]] = {
    "Namespace": rules.dns1123_label,  # apimachinery validation.ValidateNamespaceName = NameIsDNSLabel
    "Service": rules.dns1035_label,  # core validation.ValidateServiceName = NameIsDNS1035Label
}
"""metadata.name rule per kind; every other kind served here uses NameIsDNSSubdomain
(core validation.ValidatePodName, ValidateConfigMapName, ValidateSecretName; apps validation
ValidateDeploymentName)."""

PROTOCOLS = ["SCTP", "TCP", "UDP"]
ANNOTATIONS_LIMIT = 256 * 1024
"""apimachinery validation.TotalAnnotationSizeLimitB."""


def _label_causes(labels: Any, path: str) -> Causes:
    """meta/v1 validation.ValidateLabels: every key a qualified name, every value a label value,
    both reported at the map's path."""
    causes: Causes = []
    for key in sorted(labels or {}):
        value = labels[key]
        causes += rules.each(path, key, rules.label_key(key))
        causes += rules.each(path, value, rules.label_value(value if isinstance(value, str) else str(value)))
    return causes


def _metadata_causes(rt: ResourceType, meta: JSON, path: str = "metadata") -> Causes:
    """ValidateObjectMetaAccessor: the name by the kind's rule, labels, annotations."""
    causes: Causes = []
    name = meta.get("name") or ""
    if not name:
        causes.append(rules.required(f"{path}.name", "name or generateName is required"))
    else:
        causes += rules.each(f"{path}.name", name, NAME_RULES.get(rt.kind, rules.dns1123_subdomain)(name))
    causes += _label_causes(meta.get("labels"), f"{path}.labels")
    causes += _annotation_causes(meta.get("annotations"), f"{path}.annotations")
    return causes


def _annotation_causes(annotations: Any, path: str) -> Causes:
    """apimachinery validation.ValidateAnnotations: keys are qualified names (case-insensitive),
    all of them together at most 256 KiB."""
    causes: Causes = []
    size = 0
    for key in sorted(annotations or {}):
        value = annotations[key]
        causes += rules.each(path, key, rules.label_key(key.lower()))
        if not isinstance(value, str):
            causes.append(rules.invalid(path, value, f"annotation {key!r} must be a string"))
            continue
        size += len(key) + len(value)
    if size > ANNOTATIONS_LIMIT:
        causes.append(rules.too_long(path, ANNOTATIONS_LIMIT))
    return causes


def _port_ref_causes(port: Any, path: str) -> Causes:
    """core validation.ValidatePortNumOrName: an int is a port number, a string a port name."""
    if isinstance(port, str):
        return rules.each(path, port, rules.port_name(port))
    return rules.each(path, port, rules.port_number(port))


def _container_causes(container: JSON, here: str) -> Causes:
    """validateContainerCommon / validateContainerPorts / ValidateEnv / the probes' handlers
    (core validation), for one container at `here`."""
    causes: Causes = []
    if not container.get("image"):
        causes.append(rules.required(f"{here}.image"))
    seen_ports: set[str] = set()
    for j, port in enumerate(container.get("ports") or []):
        at = f"{here}.ports[{j}]"
        name = port.get("name") or ""
        if name:
            problems = rules.port_name(name)
            if problems:
                causes += rules.each(f"{at}.name", name, problems)
            elif name in seen_ports:
                causes.append(rules.duplicate(f"{at}.name", name))
            seen_ports.add(name)
        number = port.get("containerPort")
        if not number:
            causes.append(rules.required(f"{at}.containerPort"))
        else:
            causes += rules.each(f"{at}.containerPort", number, rules.port_number(number))
        if port.get("hostPort"):
            causes += rules.each(f"{at}.hostPort", port["hostPort"], rules.port_number(port["hostPort"]))
        protocol = port.get("protocol") or ""
        if not protocol:
            causes.append(rules.required(f"{at}.protocol"))
        elif protocol not in PROTOCOLS:
            causes.append(rules.not_supported(f"{at}.protocol", protocol, PROTOCOLS))
    for j, env in enumerate(container.get("env") or []):
        name = env.get("name") or ""
        if not name:
            causes.append(rules.required(f"{here}.env[{j}].name"))
        else:
            causes += rules.each(f"{here}.env[{j}].name", name, rules.env_var_name(name))
        causes += _value_from_causes(env, f"{here}.env[{j}].valueFrom")
    causes += _resource_causes(container.get("resources") or {}, f"{here}.resources")
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if not isinstance(probe, dict):
            continue
        for handler in ("httpGet", "tcpSocket"):
            if isinstance(probe.get(handler), dict):
                causes += _port_ref_causes(probe[handler].get("port"), f"{here}.{probe_name}.{handler}.port")
    return causes


_VALUE_SOURCES = ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")


def _value_from_causes(env: JSON, path: str) -> Causes:
    """validateEnvVarValueFrom / validateSecretKeySelector (core validation): exactly one
    source, no `value` next to it; a secretKeyRef names a Secret (DNS-1123 subdomain) and a
    key (IsConfigMapKey)."""
    value_from = env.get("valueFrom")
    if value_from is None:
        return []
    causes: Causes = []
    if not isinstance(value_from, dict):
        return [rules.invalid(path, value_from, "must be an object")]
    sources = [s for s in _VALUE_SOURCES if value_from.get(s) is not None]
    if not sources:
        causes.append(rules.invalid(path, "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"))
    elif env.get("value"):
        causes.append(rules.invalid(path, "", "may not be specified when `value` is not empty"))
    elif len(sources) > 1:
        causes.append(rules.invalid(path, "", "may not have more than one field specified at a time"))
    ref = value_from.get("secretKeyRef")
    if isinstance(ref, dict):
        name, key = ref.get("name") or "", ref.get("key") or ""
        if not name:
            causes.append(rules.required(f"{path}.secretKeyRef.name"))
        else:
            causes += [rules.invalid(f"{path}.secretKeyRef.name", name, m) for m in rules.dns1123_subdomain(name)]
        if not key:
            causes.append(rules.required(f"{path}.secretKeyRef.key"))
        else:
            causes += [rules.invalid(f"{path}.secretKeyRef.key", key, m) for m in rules.config_key(key)]
    return causes


def _resource_causes(resources: JSON, path: str) -> Causes:
    """ValidateResourceRequirements: quantities are not negative, a request is at most its limit."""
    causes: Causes = []
    limits = resources.get("limits") or {}
    for kind in ("limits", "requests"):
        for name in sorted(resources.get(kind) or {}):
            value = resources[kind][name]
            parsed = quantity.parse(value)
            if parsed.sign() < 0:
                causes.append(rules.invalid(f"{path}.{kind}[{name}]", str(parsed), "must be greater than or equal to 0"))
            elif kind == "requests" and name in limits and parsed.value > quantity.parse(limits[name]).value:
                causes.append(rules.invalid(
                    f"{path}.requests[{name}]", str(parsed), f"must be less than or equal to {name} limit of {limits[name]}"
                ))
    return causes


def _pod_spec_causes(spec: JSON, prefix: str) -> Causes:
    causes: Causes = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(rules.required(f"{prefix}.containers"))
    seen: set[str] = set()
    for i, container in enumerate(containers):
        here = f"{prefix}.containers[{i}]"
        name = container.get("name") or ""
        if not name:
            causes.append(rules.required(f"{here}.name"))
        else:
            causes += rules.each(f"{here}.name", name, rules.dns1123_label(name))
            if name in seen:
                causes.append(rules.duplicate(f"{here}.name", name))
        seen.add(name)
        causes += _container_causes(container, here)
    return causes


def _service_causes(spec: JSON) -> Causes:
    """core validation.ValidateService / validateServicePort: port names are DNS-1123 labels
    (required when there are several), unique, and so is each (port, protocol) pair; a target
    port is a port number or an IANA port name; the selector is a label map."""
    causes: Causes = []
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        causes.append(rules.required("spec.ports"))
    names: set[str] = set()
    pairs: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        at = f"spec.ports[{i}]"
        name = port.get("name") or ""
        if not name and len(ports) > 1:
            causes.append(rules.required(f"{at}.name"))
        elif name:
            causes += rules.each(f"{at}.name", name, rules.dns1123_label(name))
            if name in names:
                causes.append(rules.duplicate(f"{at}.name", name))
            names.add(name)
        causes += rules.each(f"{at}.port", port.get("port"), rules.port_number(port.get("port")))
        protocol = port.get("protocol") or ""
        if not protocol:
            causes.append(rules.required(f"{at}.protocol"))
        elif protocol not in PROTOCOLS:
            causes.append(rules.not_supported(f"{at}.protocol", protocol, PROTOCOLS))
        causes += _port_ref_causes(port.get("targetPort"), f"{at}.targetPort")
    for i, port in enumerate(ports):
        pair = (port.get("port"), port.get("protocol"))
        if pair in pairs:
            key = {"Name": "", "Protocol": pair[1], "AppProtocol": None, "Port": pair[0], "TargetPort": 0, "NodePort": 0}
            causes.append(rules.duplicate(f"spec.ports[{i}]", key))
        pairs.add(pair)
    causes += _label_causes(spec.get("selector"), "spec.selector")
    return causes


def validate(rt: ResourceType, obj: JSON) -> None:
    """What the kind's registry strategy validates on create and update, as a 422 Invalid
    whose causes name the fields."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    causes = _metadata_causes(rt, meta)
    spec = obj.get("spec") or {}
    if rt.kind == "Deployment":
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            causes.append(rules.invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector:
            causes.append(rules.required("spec.selector"))
        else:
            causes += _label_causes(selector, "spec.selector.matchLabels")
            if any(labels.get(k) != v for k, v in selector.items()):
                causes.append(rules.invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`"))
        causes += _label_causes(labels, "spec.template.metadata.labels")
        causes += _annotation_causes((template.get("metadata") or {}).get("annotations"), "spec.template.metadata.annotations")
        deadline = spec.get("progressDeadlineSeconds")
        if isinstance(deadline, int) and deadline <= 0:
            causes.append(rules.invalid("spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"))
        causes += _pod_spec_causes(template.get("spec") or {}, "spec.template.spec")
    elif rt.kind == "Pod":
        causes += _pod_spec_causes(spec, "spec")
    elif rt.kind == "Service":
        causes += _service_causes(spec)
    if causes:
        raise errors.invalid(rt.kind, rt.group, name, causes)


def _containers(rt: ResourceType, obj: JSON) -> list[JSON]:
    if rt.kind == "Deployment":
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    elif rt.kind == "Pod":
        spec = obj.get("spec") or {}
    else:
        return []
    return [c for key in ("initContainers", "containers") for c in spec.get(key) or [] if isinstance(c, dict)]


def canonicalize(rt: ResourceType, obj: JSON) -> None:
    """Decode the quantities (resources' requests and limits) and write them back in canonical
    form, as decoding into resource.Quantity and encoding again does. A value that is no quantity
    fails the request the way a decode failure does (400 "… cannot be handled as a …")."""
    for container in _containers(rt, obj):
        resources = container.get("resources")
        if not isinstance(resources, dict):
            continue
        for kind in ("limits", "requests"):
            values = resources.get(kind)
            if not isinstance(values, dict):
                continue
            for name, value in values.items():
                try:
                    values[name] = quantity.canonical(value if isinstance(value, str) else str(value))
                except quantity.QuantityError as error:
                    raise errors.bad_request(
                        f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {error}'
                    ) from None


def immutable_causes(rt: ResourceType, old: JSON, new: JSON) -> None:
    """Fields that cannot change after creation (a Deployment's selector)."""
    if rt.kind == "Deployment":
        before = (old.get("spec") or {}).get("selector")
        after = (new.get("spec") or {}).get("selector")
        if before != after:
            name = new["metadata"]["name"]
            raise errors.invalid(rt.kind, rt.group, name, [("spec.selector", "FieldValueInvalid", f"Invalid value: {after!r}: field is immutable")])
