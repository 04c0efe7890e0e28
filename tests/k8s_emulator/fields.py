"""Field paths and field sets: the vocabulary of server-side apply's field ownership.

A field set is the set of leaf paths (and associative-list items) an object sets. Apply
merges a config into the live object, records which manager owns which paths
(`metadata.managedFields[].fieldsV1`), detects conflicts path by path, and removes what a
manager stopped applying. Lists are merged the way the built-in types declare them
(`x-kubernetes-list-type: map` with their keys, `set`, or atomic); the few lists the
emulated types have are listed in `list_keys`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

JSON = dict[str, Any]
Element = tuple[str, str]
"""("f", field name) | ("k", JSON of the item's keys) | ("v", JSON of a set value)."""
Path = tuple[Element, ...]

MISSING: Any = object()

METADATA_TRACKED = ("labels", "annotations", "ownerReferences", "finalizers")
"""The metadata fields managers own; name, uid, resourceVersion … belong to the server."""


def list_keys(names: tuple[str, ...]) -> list[str] | str | None:
    """Keys of the associative list at `names` (field names from the root), "set", or None (atomic)."""
    name = names[-1] if names else ""
    if name in ("containers", "initContainers", "ephemeralContainers", "env", "volumes", "imagePullSecrets"):
        return ["name"]
    if name == "ports":
        return ["containerPort", "protocol"] if "containers" in names or "initContainers" in names else ["port", "protocol"]
    if name == "volumeMounts":
        return ["mountPath"]
    if name == "conditions":
        return ["type"]
    if name == "ownerReferences":
        return ["uid"]
    if name == "finalizers":
        return "set"
    return None


def item_key(item: Any, keys: list[str]) -> str:
    values: JSON = {}
    for k in keys:
        value = item.get(k) if isinstance(item, dict) else None
        if value is None and k == "protocol":
            value = "TCP"
        values[k] = value
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def trackable(obj: JSON) -> JSON:
    """The part of an object managers can own: metadata's tracked fields plus everything
    but status (apiVersion/kind/name belong to the request, status to its subresource)."""
    out: JSON = {}
    meta = obj.get("metadata") or {}
    tracked = {k: meta[k] for k in METADATA_TRACKED if k in meta}
    if tracked:
        out["metadata"] = tracked
    for k, v in obj.items():
        if k not in ("apiVersion", "kind", "metadata", "status"):
            out[k] = v
    return out


def field_set(value: Any, path: Path = (), names: tuple[str, ...] = ()) -> set[Path]:
    out: set[Path] = set()
    if isinstance(value, dict):
        if not value and path:
            out.add(path)
        for k, v in value.items():
            out |= field_set(v, (*path, ("f", k)), (*names, k))
    elif isinstance(value, list):
        keys = list_keys(names)
        if keys == "set":
            for v in value:
                out.add((*path, ("v", json.dumps(v, separators=(",", ":")))))
        elif isinstance(keys, list) and all(isinstance(i, dict) for i in value):
            for item in value:
                item_path = (*path, ("k", item_key(item, keys)))
                out.add(item_path)
                out |= field_set(item, item_path, names)
        else:
            out.add(path)
    elif path:
        out.add(path)
    return out


def _find_item(items: list[Any], element: Element, names: tuple[str, ...]) -> int:
    keys = list_keys(names)
    for i, item in enumerate(items):
        if element[0] == "k" and isinstance(keys, list) and item_key(item, keys) == element[1]:
            return i
        if element[0] == "v" and json.dumps(item, separators=(",", ":")) == element[1]:
            return i
    return -1


def value_at(obj: Any, path: Path) -> Any:
    node = obj
    names: tuple[str, ...] = ()
    for element in path:
        if element[0] == "f":
            if not isinstance(node, dict) or element[1] not in node:
                return MISSING
            node = node[element[1]]
            names = (*names, element[1])
        else:
            if not isinstance(node, list):
                return MISSING
            index = _find_item(node, element, names)
            if index < 0:
                return MISSING
            node = node[index]
    return node


def remove_path(obj: Any, path: Path) -> None:
    """Delete the field or list item at `path` (nothing when it is absent)."""
    if not path:
        return
    parent = value_at(obj, path[:-1])
    names = tuple(e[1] for e in path[:-1] if e[0] == "f")
    last = path[-1]
    if last[0] == "f":
        if isinstance(parent, dict):
            parent.pop(last[1], None)
    elif isinstance(parent, list):
        index = _find_item(parent, last, names)
        if index >= 0:
            del parent[index]


def merge(live: Any, config: Any, names: tuple[str, ...] = ()) -> Any:
    """Apply's merge: maps merge key by key, associative lists item by item, the rest is replaced."""
    if isinstance(live, dict) and isinstance(config, dict):
        out = copy.deepcopy(live)
        for k, v in config.items():
            out[k] = merge(live[k], v, (*names, k)) if k in live else copy.deepcopy(v)
        return out
    if isinstance(live, list) and isinstance(config, list):
        keys = list_keys(names)
        if keys == "set":
            out_list = copy.deepcopy(live)
            out_list.extend(copy.deepcopy(v) for v in config if v not in live)
            return out_list
        if isinstance(keys, list) and all(isinstance(i, dict) for i in live + config):
            out_list = copy.deepcopy(live)
            for item in config:
                key = item_key(item, keys)
                index = next((i for i, x in enumerate(out_list) if item_key(x, keys) == key), -1)
                if index >= 0:
                    out_list[index] = merge(out_list[index], item, names)
                else:
                    out_list.append(copy.deepcopy(item))
            return out_list
    return copy.deepcopy(config)


def path_string(path: Path) -> str:
    """How conflict messages print a path: `.spec.template.spec.containers[name="web"].image`."""
    parts: list[str] = []
    for kind, text in path:
        if kind == "f":
            parts.append(f".{text}")
        elif kind == "k":
            keys = json.loads(text)
            parts.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]")
        else:
            parts.append(f"[={text}]")
    return "".join(parts)


def encode(paths: set[Path]) -> JSON:
    """A field set as `fieldsV1` (`{"f:spec": {"f:replicas": {}}}`; list items carry ".")."""
    root: JSON = {}
    for path in sorted(paths):
        node = root
        for kind, text in path:
            node = node.setdefault(f"{kind}:{text}", {})
        if path[-1][0] == "k":
            node["."] = {}
    return root


def decode(fields: JSON, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, child in fields.items():
        if key == ".":
            out.add(prefix)
            continue
        kind, _, text = key.partition(":")
        path = (*prefix, (kind, text))
        if not child:
            out.add(path)
        else:
            out |= decode(child, path)
    return out
