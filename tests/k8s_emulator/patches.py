"""The three non-apply PATCH formats: JSON merge patch, strategic merge patch, JSON patch.

kubernetes_asyncio sends a dict body as `application/strategic-merge-patch+json` by
default and a list as `application/json-patch+json`; `kubectl edit`/`scale` style edits
arrive this way, so the emulator applies them with the semantics of the real types
(containers merge by name, ports by port number, `null` deletes, `$patch: delete`).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.k8s_emulator import errors, fields

JSON = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _merge_key(names: tuple[str, ...]) -> str | None:
    keys = fields.list_keys(names)
    if isinstance(keys, list):
        return keys[0]
    return None


def strategic_merge_patch(target: Any, patch: Any, names: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/") or k in ("$retainKeys", "$patch"):
            continue
        if v is None:
            out.pop(k, None)
            continue
        child = (*names, k)
        current = out.get(k)
        if isinstance(v, list) and isinstance(current, list):
            out[k] = _merge_list(current, v, child)
        elif isinstance(v, dict):
            out[k] = strategic_merge_patch(current, v, child)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _merge_list(current: list[Any], patch: list[Any], names: tuple[str, ...]) -> list[Any]:
    if fields.list_keys(names) == "set":
        return current + [copy.deepcopy(v) for v in patch if v not in current]
    key = _merge_key(names)
    if key is None or not all(isinstance(i, dict) for i in current + patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "delete")]
    out = copy.deepcopy(current)
    for item in patch:
        index = next((i for i, x in enumerate(out) if x.get(key) == item.get(key)), -1)
        if item.get("$patch") == "delete":
            if index >= 0:
                del out[index]
        elif index >= 0:
            out[index] = strategic_merge_patch(out[index], item, names)
        else:
            out.append(strategic_merge_patch({}, item, names))
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Any, operations: list[Any]) -> Any:
    """RFC 6902 add/remove/replace/test (move/copy are not needed by anything here)."""
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise errors.bad_request("json patch operations need op and path")
        parts = _pointer(op["path"])
        if not parts:
            raise errors.bad_request("json patch on the document root is not supported")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise errors.ApiError(422, "Invalid", f"doc is missing path: {op['path']}")
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last, fields.MISSING)
            if current != op.get("value"):
                raise errors.ApiError(422, "Invalid", f"testing value {op['path']} failed")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(copy.deepcopy(op["value"]))
                elif kind == "add":
                    parent.insert(int(last), copy.deepcopy(op["value"]))
                else:
                    parent[int(last)] = copy.deepcopy(op["value"])
            else:
                if kind == "replace" and last not in parent:
                    raise errors.ApiError(422, "Invalid", f"replace operation does not apply: doc is missing key: {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise errors.ApiError(422, "Invalid", f"remove operation does not apply: doc is missing path: {op['path']}")
        else:
            raise errors.bad_request(f"unsupported json patch operation {kind!r}")
    return doc
