"""deploy/kubernetes/agent.yaml: the agent's Deployment and its least-privilege RBAC.

The ClusterRole must grant exactly what the Kubernetes runtime uses
(kubernetes_manifests.PERMISSIONS), with no wildcards; tests/integration/
test_kubernetes_runtime.py runs the runtime against an emulator that enforces these very
rules, so "exactly" is checked from both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.agent.runtimes.kubernetes_manifests import PERMISSIONS

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "agent.yaml"


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], frozenset[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return {k: frozenset(v) for k, v in out.items()}


def test_the_manifest_has_every_piece_in_the_agents_namespace() -> None:
    docs = documents()
    assert set(docs) == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}
    assert docs["Namespace"]["metadata"]["name"] == "convoy-system"
    for kind in ("ServiceAccount", "Deployment"):
        assert docs[kind]["metadata"]["namespace"] == "convoy-system"
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": docs["ClusterRole"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": docs["ServiceAccount"]["metadata"]["name"], "namespace": "convoy-system"}]


def test_the_cluster_role_grants_exactly_what_the_runtime_uses_and_no_wildcards() -> None:
    rules = documents()["ClusterRole"]["rules"]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames / nonResourceURLs tricks"
    assert granted(rules) == PERMISSIONS


def test_the_agent_runs_as_its_service_account_with_the_secret() -> None:
    deployment = documents()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == documents()["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["convoy", "agent", "--runtime", "$(RUNTIME)"]
    env = {e["name"]: e for e in container["env"]}
    assert "value" in env["RUNTIME"]
    assert env["CONVOY_NATS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "convoy-agent"
    credential_dir = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["credential"]
    assert env["CONVOY_AGENT_CREDENTIAL_FILE"]["value"].startswith(credential_dir + "/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["credential"]["secret"]["secretName"] == "convoy-agent"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
