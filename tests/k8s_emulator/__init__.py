"""A Kubernetes API emulator for tests: the subset of kube-apiserver (plus the Deployment
controller and a kubelet) that Convoy's Kubernetes runtime uses, over real HTTP.

No kube-apiserver can be installed on the machines Convoy is built on, and mocking the
client would test nothing, so tests run the real kubernetes_asyncio client against this
server. It is as strict as a kube-apiserver on everything a deploy tool sends (names per
kind, port and label names, unknown fields, quantities, dry runs), so a client that passes
here is not refused by a real cluster. Modules: `store` (objects, resourceVersions,
managedFields, events, dry runs), `fields` (server-side apply's field sets), `patches`
(merge/strategic/JSON patch), `schema` (defaults and validation), `rules` (apimachinery's
validation primitives and messages), `quantity` (resource quantities in canonical form),
`openapi` (known fields, unknown-field handling, the documents kubectl reads), `controller`
(Deployments → Pods, status, failure injection),
`server` (URLs and verbs, watch streams), `authz` (optional RBAC), `emulator` (lifecycle),
`fixtures` (pytest). Failure-injection image markers are documented in `controller`.
"""

from tests.k8s_emulator.controller import FAIL_CRASH_LOOP, FAIL_IMAGE_PULL, FAIL_NEVER_READY
from tests.k8s_emulator.emulator import Emulator

__all__ = ["FAIL_CRASH_LOOP", "FAIL_IMAGE_PULL", "FAIL_NEVER_READY", "Emulator"]
