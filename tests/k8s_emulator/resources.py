"""The resource types the emulator serves, and the discovery documents that announce them.

The real client never hard-codes much, but tools (and kubectl) start from discovery, and a
request for a resource the server does not serve must fail the way the apiserver fails.
Adding a type here makes the generic handlers in `server` serve it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

SERVER_VERSION: JSON = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-convoy-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True, slots=True)
class ResourceType:
    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_generation: bool = False
    """Whether metadata.generation tracks spec changes (workloads do; config objects don't)."""
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"


VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

TYPES: tuple[ResourceType, ...] = (
    ResourceType("namespaces", "Namespace", "", "v1", namespaced=False, short_names=("ns",), has_status=True),
    ResourceType("pods", "Pod", "", "v1", namespaced=True, short_names=("po",), has_status=True),
    ResourceType("services", "Service", "", "v1", namespaced=True, short_names=("svc",), has_status=True),
    ResourceType("configmaps", "ConfigMap", "", "v1", namespaced=True, short_names=("cm",)),
    ResourceType("secrets", "Secret", "", "v1", namespaced=True),
    ResourceType(
        "deployments", "Deployment", "apps", "v1", namespaced=True, short_names=("deploy",), has_generation=True,
        has_status=True,
    ),
)

BY_PATH: dict[tuple[str, str], ResourceType] = {(t.group_version_path, t.plural): t for t in TYPES}


def lookup(group_version_path: str, plural: str) -> ResourceType | None:
    return BY_PATH.get((group_version_path, plural))


def api_versions(server_address: str) -> JSON:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str) -> JSON:
    gv = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def api_group_list() -> JSON:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group("apps")]}


def api_group(name: str) -> JSON | None:
    if name != "apps":
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def api_resource_list(group_version_path: str) -> JSON | None:
    types = [t for t in TYPES if t.group_version_path == group_version_path]
    if not types:
        return None
    resources: list[JSON] = []
    for t in types:
        entry: JSON = {
            "name": t.plural,
            "singularName": t.kind.lower(),
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
        }
        if t.short_names:
            entry["shortNames"] = list(t.short_names)
        resources.append(entry)
        if t.has_status:
            resources.append(
                {
                    "name": f"{t.plural}/status",
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": types[0].api_version,
        "resources": resources,
    }
