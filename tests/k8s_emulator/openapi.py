"""The served types' schemas: which fields exist, and the OpenAPI v3 documents kubectl reads.

The apiserver knows every field of a built-in type from its OpenAPI schema, and refuses or
drops the rest. The emulator takes the schema from kubernetes_asyncio's generated models
(`openapi_types` / `attribute_map`), which are generated from that same OpenAPI document, so
"known" here means what a real server of the client's version knows.

Unknown fields are handled the way the apiserver does:

- create, update and the JSON/merge/strategic patches decode the object, and what the
  decoder cannot place is an unknown field, reported with its path the way sigs.k8s.io/json
  reports it (`unknown field "spec.template.spec.containers[0].bogus"`). The request's
  `fieldValidation` decides (k8s.io/apiserver `pkg/endpoints/handlers/create.go`, `update.go`,
  `patch.go`; KEP-2885): `Strict` fails it with 400 BadRequest, `Warn` (the default) drops them
  and says so in `Warning: 299` headers, `Ignore` drops them silently. `unknown_fields`.
- server-side apply converts the apply configuration to a typed value first
  (k8s.io/apimachinery `pkg/util/managedfields/internal/structuredmerge.go`, `Apply`): an
  unknown field is always an error there, whatever `fieldValidation` says (KEP-2885: "for
  apply patch, server side schema validation already occurs and is not optional"), and so is a
  list item given twice. The apiserver answers that with HTTP 500 "failed to create typed patch
  object (…): .spec.foo: field not declared in schema" (the error is not a Status: kubernetes
  issues #122480 and #139253), and the emulator does the same. `apply_problems`.

kubectl decides whether the server validates fields itself by reading `/openapi/v3` (cli-runtime
`QueryParamVerifierV3`: the PATCH operation of the kind must take a `fieldValidation` query
parameter); `document` serves just enough of that document.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from kubernetes_asyncio import client as models

from tests.k8s_emulator import fields
from tests.k8s_emulator.resources import TYPES, ResourceType

JSON = dict[str, Any]

_ROOTS = {
    "Namespace": "V1Namespace",
    "Pod": "V1Pod",
    "Service": "V1Service",
    "ConfigMap": "V1ConfigMap",
    "Secret": "V1Secret",
    "Deployment": "V1Deployment",
}
_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(str, (.+)\)$")


@functools.cache
def _known(model: str) -> dict[str, str]:
    """JSON field name → type string of a generated model ("str", "list[V1Container]" …)."""
    cls = getattr(models, model)
    return {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}


def _is_model(kind: str) -> bool:
    return hasattr(models, kind) and hasattr(getattr(models, kind), "openapi_types")


def _walk(value: Any, kind: str, path: tuple[str, ...], found: list[tuple[str, ...]], *, drop: bool) -> Any:
    """Collect the paths of unknown fields under `value` (of type `kind`); with `drop`, return
    `value` without them."""
    if (match := _LIST.match(kind)) and isinstance(value, list):
        return [_walk(item, match.group(1), (*path, f"[{i}]"), found, drop=drop) for i, item in enumerate(value)]
    if (match := _DICT.match(kind)) and isinstance(value, dict):
        return {k: _walk(v, match.group(1), (*path, f".{k}"), found, drop=drop) for k, v in value.items()}
    if not _is_model(kind) or not isinstance(value, dict):
        return value
    known = _known(kind)
    out: JSON = {}
    for key, item in value.items():
        here = (*path, f".{key}" if path else key)
        if key not in known:
            found.append(here)
            if drop:
                continue
            out[key] = item
        else:
            out[key] = _walk(item, known[key], here, found, drop=drop)
    return out


def unknown_fields(rt: ResourceType, obj: JSON) -> tuple[list[str], JSON]:
    """(the unknown fields' paths as the decoder names them, `obj` without them)."""
    found: list[tuple[str, ...]] = []
    cleaned = _walk(obj, _ROOTS[rt.kind], (), found, drop=True)
    return ["".join(p) for p in found], cleaned


def _apply_walk(value: Any, kind: str, names: tuple[str, ...], path: fields.Path, problems: list[str]) -> None:
    if (match := _LIST.match(kind)) and isinstance(value, list):
        keys = fields.list_keys(names)
        seen: set[str] = set()
        for i, item in enumerate(value):
            if isinstance(keys, list) and isinstance(item, dict):
                key = fields.item_key(item, keys)
                if key in seen:
                    problems.append(f"{_smd_path(path)}: duplicate entries for key {fields.path_string((('k', key),))}")
                seen.add(key)
                element: fields.Element = ("k", key)
            else:
                element = ("i", str(i))
            _apply_walk(item, match.group(1), names, (*path, element), problems)
        return
    if (match := _DICT.match(kind)) and isinstance(value, dict):
        for k, v in value.items():
            _apply_walk(v, match.group(1), (*names, k), (*path, ("f", k)), problems)
        return
    if not _is_model(kind) or not isinstance(value, dict):
        return
    known = _known(kind)
    for key, item in value.items():
        here = (*path, ("f", key))
        if key not in known:
            problems.append(f"{_smd_path(here)}: field not declared in schema")
        else:
            _apply_walk(item, known[key], (*names, key), here, problems)


def _smd_path(path: fields.Path) -> str:
    return "".join(f"[{text}]" if kind == "i" else fields.path_string(((kind, text),)) for kind, text in path)


def apply_problems(rt: ResourceType, config: JSON) -> list[str]:
    """What structured-merge-diff refuses in an apply configuration: unknown fields, duplicate
    list entries (`.spec.foo: field not declared in schema`)."""
    problems: list[str] = []
    _apply_walk(config, _ROOTS[rt.kind], (), (), problems)
    return problems


def typed_patch_error(rt: ResourceType, namespace: str, name: str, problems: list[str]) -> str:
    """The message of the apiserver's 500 for them (structuredmerge.go, smd ValidationErrors.Error)."""
    gvk = f"{rt.group}/{rt.version}, Kind={rt.kind}"
    where = f"{namespace}/{name}; {gvk}" if rt.namespaced else f"/{name}; {gvk}"
    detail = problems[0] if len(problems) == 1 else "\n".join(["errors:", *("  " + p for p in problems)])
    return f"failed to create typed patch object ({where}): {detail}"


# ---- /openapi/v3 ------------------------------------------------------------------------------

_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def root(address: str) -> JSON:
    """`GET /openapi/v3`: where each group-version's document is."""
    del address
    paths = {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={_hash(gv)}"} for gv in sorted({t.group_version_path for t in TYPES})}
    return {"paths": paths}


def _hash(group_version_path: str) -> str:
    text = json.dumps(document(group_version_path) or {}, sort_keys=True)
    return hashlib.sha512(text.encode()).hexdigest()[:128].upper()


@functools.cache
def document(group_version_path: str) -> JSON | None:
    """`GET /openapi/v3/<group-version>`: the write operations of each kind, with their query parameters."""
    types = [t for t in TYPES if t.group_version_path == group_version_path]
    if not types:
        return None
    paths: JSON = {}
    for t in types:
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        base = f"/{t.group_version_path}/namespaces/{{namespace}}/{t.plural}" if t.namespaced else f"/{t.group_version_path}/{t.plural}"
        params = [{"name": p, "in": "query", "schema": {"type": "string"}} for p in _PARAMETERS]
        operation = {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "", "responses": {"200": {"description": "OK"}}}
        paths[base] = {"post": {**operation, "x-kubernetes-action": "post", "parameters": [p for p in params if p["name"] != "force"]}}
        paths[f"{base}/{{name}}"] = {
            "put": {**operation, "x-kubernetes-action": "put", "parameters": [p for p in params if p["name"] != "force"]},
            "patch": {**operation, "x-kubernetes-action": "patch", "parameters": params},
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.31.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }
