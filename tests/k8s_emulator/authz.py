"""Optional RBAC: bearer tokens mapped to ClusterRole rules, checked like the apiserver.

With no tokens configured every request is allowed (an admin kubeconfig). With tokens,
a request must carry one (else 401) and its verb/group/resource must be granted by that
token's rules (else 403 with the apiserver's message). Tests use it to prove that the
agent's ClusterRole in deploy/kubernetes/agent.yaml is enough for the runtime — and that
nothing wider is needed. Discovery and /version are open, as `system:discovery` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.k8s_emulator import errors

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Subject:
    user: str
    rules: tuple[JSON, ...]


def _allows(rule: JSON, verb: str, group: str, resource: str) -> bool:
    return (
        (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
        and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
        and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
    )


class Authorizer:
    def __init__(self, tokens: dict[str, Subject] | None = None) -> None:
        self.tokens = dict(tokens or {})

    def check(self, authorization: str | None, verb: str, group: str, resource: str, namespace: str, name: str) -> None:
        if not self.tokens:
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        subject = self.tokens.get(token)
        if subject is None:
            raise errors.ApiError(401, "Unauthorized", "Unauthorized")
        if any(_allows(rule, verb, group, resource) for rule in subject.rules):
            return
        target = errors.qualified(resource, group) + (f' "{name}"' if name else "")
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        raise errors.forbidden(
            f'{target} is forbidden: User "{subject.user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}',
            resource, group, name,
        )
