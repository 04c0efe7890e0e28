"""The emulator's etcd and its registry logic: objects, resourceVersions, managedFields, events.

Every write goes through `_commit`, which is where the apiserver's invariants live: one
global resourceVersion counter (bumped only when something changed, so a no-op apply
leaves it alone), `metadata.generation` bumped on spec changes only, optimistic
concurrency on a stale resourceVersion, field ownership per manager, and one event per
change fanned out to watchers and kept in a bounded history for resumed watches (older
resumes get 410 Expired). All methods are synchronous: under asyncio nothing interleaves
inside one call, which is what makes a change and its event atomic.

A client's write carries `WriteOptions`: `dry_run` (`?dryRun=All`) runs the whole write —
admission of the namespace, conflicts, defaulting, validation — and answers with the result
without storing it, bumping the resourceVersion or telling watchers, as the apiserver's
DryRunnableStorage does (k8s.io/apiserver `pkg/registry/generic/registry/dryrun.go`: a dry-run
create answers without a resourceVersion). `field_validation` says what an unknown field does
(see `openapi`); the warnings it produces are collected in the options for the response.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.k8s_emulator import errors, fields, openapi, patches, schema
from tests.k8s_emulator.resources import TYPES, ResourceType
from tests.k8s_emulator.selectors import Matcher

JSON = dict[str, Any]
EntryKey = tuple[str, str, str]
"""(manager, operation, subresource) — one managedFields entry."""

NAMESPACES = next(t for t in TYPES if t.plural == "namespaces")


@dataclass
class WriteOptions:
    """A client's CreateOptions / UpdateOptions / PatchOptions / DeleteOptions that matter here."""

    dry_run: bool = False
    field_validation: str = "Warn"
    """Strict | Warn | Ignore ("" is Warn, the default since v1.23)."""
    warnings: list[str] = field(default_factory=list)
    """Filled by the write: what goes out in `Warning: 299` headers."""


def _decoded(rt: ResourceType, body: JSON, options: WriteOptions | None, *, patched: bool) -> JSON:
    """`body` as the strict or lenient decoder leaves it: unknown fields fail the request
    (Strict), or are dropped with a warning (Warn) or silently (Ignore)."""
    if options is None:
        return body
    unknown, cleaned = openapi.unknown_fields(rt, body)
    if not unknown:
        return body
    problems = [f'unknown field "{path}"' for path in unknown]
    if options.field_validation == "Strict":
        message = "strict decoding error: " + ", ".join(problems)
        if not patched:  # create.go / update.go: transformDecodeError
            message = f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {message}'
        raise errors.bad_request(message)
    if options.field_validation != "Ignore":
        options.warnings.extend(problems)
    return cleaned


class Clock:
    """The emulator's time: starts at the wall clock, moves only when the emulator ticks."""

    def __init__(self) -> None:
        self._now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)

    def stamp(self) -> str:
        return self._now.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Event:
    rv: int
    type: str
    rt: ResourceType
    obj: JSON
    old: JSON | None


@dataclass(eq=False)
class Watcher:
    rt: ResourceType
    namespace: str | None
    matches: Matcher
    queue: asyncio.Queue[JSON | None] = field(default_factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        line = self.translate(event)
        if line is not None:
            self.queue.put_nowait(line)

    def translate(self, event: Event) -> JSON | None:
        """The event as this watcher sees it: an object leaving its selector is DELETED for it."""
        if event.rt is not self.rt:
            return None
        if self.namespace is not None and event.obj["metadata"].get("namespace") != self.namespace:
            return None
        now = self.matches(event.obj)
        before = event.old is not None and self.matches(event.old)
        if event.type == "DELETED":
            kind = "DELETED" if now else None
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            kind = None
        return None if kind is None else {"type": kind, "object": event.obj}


def _entries(obj: JSON | None) -> dict[EntryKey, tuple[set[fields.Path], str, str]]:
    """managedFields as {(manager, operation, subresource): (paths, apiVersion, time)}."""
    out: dict[EntryKey, tuple[set[fields.Path], str, str]] = {}
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        key = (entry.get("manager", ""), entry.get("operation", "Update"), entry.get("subresource", ""))
        out[key] = (fields.decode(entry.get("fieldsV1") or {}), entry.get("apiVersion", ""), entry.get("time", ""))
    return out


def describe_manager(key: EntryKey, api_version: str, time: str) -> str:
    """How conflict messages name a manager (the apiserver's printManager)."""
    text = json.dumps(key[0])
    if key[2]:
        text += f" with subresource {json.dumps(key[2])}"
    if key[1] == "Update" and time:
        return f"{text} using {api_version} at {time}"
    return f"{text} using {api_version}"


class Store:
    def __init__(self, clock: Clock, *, history_limit: int = 1000) -> None:
        self.clock = clock
        self.rv = 100
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.history: deque[Event] = deque()
        self.history_limit = history_limit
        self.horizon = self.rv
        """Watches may resume from any resourceVersion >= horizon; older ones are 410 Expired."""
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[Event], None]] = []
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(NAMESPACES, "", {"metadata": {"name": name}}, manager="kube-apiserver")
        self.horizon = self.rv

    # ---- reads -----------------------------------------------------------------------------

    def find(self, rt: ResourceType, namespace: str, name: str) -> JSON | None:
        return self.objects.get((rt.plural, namespace if rt.namespaced else "", name))

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        obj = self.find(rt, namespace, name)
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return copy.deepcopy(obj)

    def list(self, rt: ResourceType, namespace: str | None, matches: Matcher) -> tuple[list[JSON], int]:
        items = [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(self.objects.items())
            if plural == rt.plural and (namespace is None or ns == namespace) and matches(obj)
        ]
        return items, self.rv

    def watch(self, rt: ResourceType, namespace: str | None, matches: Matcher, since: int | None) -> tuple[Watcher, list[JSON]]:
        """Register a watcher and return the events it starts with: every current object as
        ADDED (no resourceVersion, or "0"), or the history after `since`."""
        if since is not None and since < self.horizon:
            raise errors.expired(f"too old resource version: {since} ({self.horizon})")
        watcher = Watcher(rt, namespace, matches)
        if since is None:
            items, _ = self.list(rt, namespace, matches)
            initial = [{"type": "ADDED", "object": obj} for obj in sorted(items, key=lambda o: int(o["metadata"]["resourceVersion"]))]
        else:
            initial = [line for e in self.history if e.rv > since if (line := watcher.translate(e)) is not None]
        self.watchers.add(watcher)
        return watcher, initial

    def compact(self) -> None:
        """Forget the event history (as etcd compaction does): older watch resumes get 410."""
        self.history.clear()
        self.horizon = self.rv

    # ---- namespaces ------------------------------------------------------------------------

    def _check_namespace(self, rt: ResourceType, namespace: str, name: str, creating: bool) -> None:
        if not rt.namespaced:
            return
        ns = self.find(NAMESPACES, "", namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if creating and ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                f'{errors.qualified(rt.plural, rt.group)} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated",
                rt.plural, rt.group, name,
            )

    # ---- writes ----------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: JSON, *, manager: str, options: WriteOptions | None = None) -> JSON:
        body = _decoded(rt, copy.deepcopy(body), options, patched=False)
        meta = body.setdefault("metadata", {})
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        self._check_namespace(rt, namespace, name, creating=True)
        if self.find(rt, namespace, name) is not None:
            raise errors.already_exists(rt.plural, rt.group, name)
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        return self._commit(rt, namespace, None, body, update_manager=manager, dry_run=bool(options and options.dry_run))

    def replace(
        self, rt: ResourceType, namespace: str, name: str, body: JSON, *, manager: str, subresource: str = "",
        options: WriteOptions | None = None,
    ) -> JSON:
        body = _decoded(rt, body, options, patched=False)
        old = self.find(rt, namespace, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise errors.stale_conflict(rt.plural, rt.group, name)
        if (body.get("metadata") or {}).get("name", name) != name:
            raise errors.bad_request(f"the name of the object ({body['metadata']['name']}) does not match the name on the URL ({name})")
        return self._commit(
            rt, namespace, old, copy.deepcopy(body), update_manager=manager, subresource=subresource,
            dry_run=bool(options and options.dry_run),
        )

    def patch(
        self, rt: ResourceType, namespace: str, name: str, raw: bytes, content_type: str, *,
        manager: str | None, force: bool, subresource: str = "", options: WriteOptions | None = None,
    ) -> tuple[JSON, bool]:
        """PATCH in any of the four formats; returns (object, created)."""
        if content_type == "application/apply-patch+yaml":
            if not manager:
                raise errors.bad_request("PATCH, PUT, and POST requests with server-side apply require a fieldManager")
            try:
                config = yaml.safe_load(raw.decode() or "{}")
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"error decoding YAML: {exc}") from None
            if not isinstance(config, dict):
                raise errors.bad_request("apply configuration must be an object")
            return self.apply(rt, namespace, name, config, manager=manager, force=force, options=options)
        if force:
            raise errors.bad_request("force may not be specified for non-apply patch")
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"error decoding patch: {exc}") from None
        old = self.find(rt, namespace, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        if content_type == "application/merge-patch+json":
            new = patches.merge_patch(old, body)
        elif content_type == "application/strategic-merge-patch+json":
            new = patches.strategic_merge_patch(old, body)
        elif content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise errors.bad_request("json patch must be a list of operations")
            new = patches.json_patch(old, body)
        else:
            raise errors.unsupported_media_type(content_type)
        wanted = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise errors.stale_conflict(rt.plural, rt.group, name)
        new = _decoded(rt, new, options, patched=True)
        new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        committed = self._commit(
            rt, namespace, old, new, update_manager=manager or "unknown", subresource=subresource,
            dry_run=bool(options and options.dry_run),
        )
        return committed, False

    def apply(
        self, rt: ResourceType, namespace: str, name: str, config: JSON, *, manager: str, force: bool,
        options: WriteOptions | None = None,
    ) -> tuple[JSON, bool]:
        """Server-side apply: merge `config`, own its fields, refuse to take others' fields
        unless forced, drop what this manager applied before and no longer applies. The
        configuration must fit the schema (no unknown fields, no list item twice): a 500, as
        the apiserver answers (see `openapi`)."""
        if config.get("apiVersion") != rt.api_version or config.get("kind") != rt.kind:
            raise errors.bad_request(
                f"apply configuration must have apiVersion {rt.api_version!r} and kind {rt.kind!r}, "
                f"not {config.get('apiVersion')!r} and {config.get('kind')!r}"
            )
        config_name = (config.get("metadata") or {}).get("name")
        if config_name != name:
            raise errors.bad_request(f"the name of the object ({config_name}) does not match the name on the URL ({name})")
        problems = openapi.apply_problems(rt, config)
        if problems:
            raise errors.internal(openapi.typed_patch_error(rt, namespace, name, problems))
        old = self.find(rt, namespace, name)
        if old is None:
            self._check_namespace(rt, namespace, name, creating=True)
        applied = fields.trackable(config)
        applied_paths = fields.field_set(applied)
        entries = _entries(old)
        me: EntryKey = (manager, "Apply", "")
        if old is not None:
            conflicts: list[tuple[EntryKey, fields.Path]] = []
            for key, (owned, _, _) in entries.items():
                if key == me or key[2]:
                    continue
                for path in sorted(owned & applied_paths):
                    if path[-1][0] in ("k", "v"):
                        continue
                    if fields.value_at(old, path) != fields.value_at(applied, path):
                        conflicts.append((key, path))
            if conflicts and not force:
                raise errors.apply_conflict(
                    [(describe_manager(k, entries[k][1], entries[k][2]), fields.path_string(p)) for k, p in conflicts]
                )
            for key, path in conflicts:
                entries[key][0].discard(path)
        base = copy.deepcopy(old) if old is not None else {"metadata": {"name": name}}
        merged = fields.merge(fields.trackable(base), applied)
        previous = entries.get(me, (set(), "", ""))[0]
        kept_by_others = set().union(*(owned for key, (owned, _, _) in entries.items() if key != me))
        # Items before their fields: an item is found by its key fields, which must still be there.
        removed = sorted(previous - applied_paths - kept_by_others, key=len)
        for path in removed:
            fields.remove_path(merged, path)
        # Maps and lists left empty by the removal go too (a dropped probe leaves no `{}`).
        owned_now = applied_paths | kept_by_others
        for path in sorted({p[:i] for p in removed for i in range(1, len(p))}, key=len, reverse=True):
            if path not in owned_now and fields.value_at(merged, path) in ({}, []):
                fields.remove_path(merged, path)
        entries[me] = (applied_paths, rt.api_version, entries.get(me, (set(), "", ""))[2] if previous == applied_paths else "")
        new: JSON = {"apiVersion": rt.api_version, "kind": rt.kind, **{k: v for k, v in merged.items() if k != "metadata"}}
        meta = {k: v for k, v in base["metadata"].items() if k not in fields.METADATA_TRACKED}
        meta.update(merged.get("metadata") or {})
        new["metadata"] = meta
        if old is not None and "status" in old:
            new["status"] = old["status"]
        result = self._commit(rt, namespace, old, new, entries=entries, dry_run=bool(options and options.dry_run))
        return result, old is None

    def write_status(self, rt: ResourceType, namespace: str, name: str, status: JSON, *, manager: str) -> JSON:
        """The controllers' and kubelet's status writes (the /status subresource)."""
        old = self.find(rt, namespace, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        new = copy.deepcopy(old)
        new["status"] = status
        return self._commit(rt, namespace, old, new, update_manager=manager, subresource="status")

    def delete(
        self, rt: ResourceType, namespace: str, name: str, preconditions: JSON | None = None, *, dry_run: bool = False,
    ) -> JSON:
        old = self.find(rt, namespace, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        for field_name, meta_name in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = (preconditions or {}).get(field_name)
            if wanted and wanted != old["metadata"].get(field_name):
                raise errors.ApiError(
                    409, "Conflict",
                    f"Precondition failed: {meta_name} in precondition: {wanted}, {meta_name} in object meta: {old['metadata'].get(field_name)}",
                    {"name": name, **({"group": rt.group} if rt.group else {}), "kind": rt.plural},
                )
        if rt is NAMESPACES:
            if old["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(old)
            terminating = copy.deepcopy(old)
            terminating["metadata"]["deletionTimestamp"] = self.clock.stamp()
            terminating["status"] = {"phase": "Terminating"}
            return self._commit(rt, namespace, old, terminating, internal=True, dry_run=dry_run)
        if dry_run:
            return copy.deepcopy(old)
        del self.objects[(rt.plural, namespace if rt.namespaced else "", name)]
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(Event(self.rv, "DELETED", rt, gone, None))
        return copy.deepcopy(gone)

    def finalize_namespaces(self) -> None:
        """The namespace controller: empty terminating namespaces, then remove them."""
        for (plural, _, name), ns in list(self.objects.items()):
            if plural != "namespaces" or not ns["metadata"].get("deletionTimestamp"):
                continue
            for rt in TYPES:
                if rt.namespaced:
                    for (p, obj_ns, obj_name) in list(self.objects):
                        if p == rt.plural and obj_ns == name:
                            self.delete(rt, obj_ns, obj_name)
            del self.objects[("namespaces", "", name)]
            self.rv += 1
            gone = copy.deepcopy(ns)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._emit(Event(self.rv, "DELETED", NAMESPACES, gone, None))

    # ---- the one place objects change --------------------------------------------------------

    def _commit(
        self, rt: ResourceType, namespace: str, old: JSON | None, new: JSON, *,
        update_manager: str | None = None, subresource: str = "",
        entries: dict[EntryKey, tuple[set[fields.Path], str, str]] | None = None, internal: bool = False,
        dry_run: bool = False,
    ) -> JSON:
        meta = new.setdefault("metadata", {})
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if old is not None:
            for server_field in ("name", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if internal and server_field == "deletionTimestamp":
                    continue
                if server_field in old["metadata"]:
                    meta[server_field] = old["metadata"][server_field]
                else:
                    meta.pop(server_field, None)
            if not internal and subresource != "status" and "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            if subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status", {})}
                meta = new["metadata"]
        else:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = self.clock.stamp()
            if rt is NAMESPACES:
                new["status"] = {"phase": "Active"}
            elif rt.kind == "Service":
                new["status"] = {"loadBalancer": {}}
            elif rt.has_status:
                new["status"] = {}
            else:
                new.pop("status", None)
            if rt.has_generation:
                meta["generation"] = 1
        schema.canonicalize(rt, new)
        schema.apply_defaults(rt, new)
        schema.validate(rt, new)
        if old is not None:
            schema.immutable_causes(rt, old, new)
            if rt.has_generation and old.get("spec") != new.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if entries is None:
            entries = _entries(old)
            if update_manager is not None and not internal:
                self._take_ownership(rt, entries, old, new, (update_manager, "Update", subresource))
        meta["managedFields"] = self._encode_entries(entries)
        if not meta["managedFields"]:
            del meta["managedFields"]
        if old is not None:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return copy.deepcopy(old)
        if dry_run:  # validated and complete, but neither stored nor announced
            if old is None:
                meta.pop("resourceVersion", None)
            return copy.deepcopy(new)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[(rt.plural, namespace if rt.namespaced else "", meta["name"])] = new
        self._emit(Event(self.rv, "ADDED" if old is None else "MODIFIED", rt, copy.deepcopy(new), copy.deepcopy(old) if old else None))
        return copy.deepcopy(new)

    def _take_ownership(
        self, rt: ResourceType, entries: dict[EntryKey, tuple[set[fields.Path], str, str]],
        old: JSON | None, new: JSON, me: EntryKey,
    ) -> None:
        """An update owns the fields it changed; other managers lose them."""
        def view(obj: JSON | None) -> JSON:
            if obj is None:
                return {}
            return {"status": obj.get("status", {})} if me[2] == "status" else fields.trackable(obj)
        before, after = view(old), view(new)
        changed = {
            p for p in fields.field_set(after)
            if (fields.value_at(before, p) is fields.MISSING if p[-1][0] in ("k", "v") else fields.value_at(before, p) != fields.value_at(after, p))
        }
        removed = {p for p in fields.field_set(before) if fields.value_at(after, p) is fields.MISSING}
        for key, (owned, _, _) in entries.items():
            if key != me:
                owned -= changed | removed
        mine = entries.get(me, (set(), rt.api_version, ""))[0]
        updated = (mine - removed) | changed
        entries[me] = (updated, rt.api_version, "" if updated != mine else entries.get(me, (set(), "", ""))[2])

    def _encode_entries(self, entries: dict[EntryKey, tuple[set[fields.Path], str, str]]) -> list[JSON]:
        out: list[JSON] = []
        for (manager, operation, subresource), (paths, api_version, time) in entries.items():
            if not paths:
                continue
            entry: JSON = {
                "manager": manager,
                "operation": operation,
                "apiVersion": api_version,
                "time": time or self.clock.stamp(),
                "fieldsType": "FieldsV1",
                "fieldsV1": fields.encode(paths),
            }
            if subresource:
                entry["subresource"] = subresource
            out.append(entry)
        return out

    def _emit(self, event: Event) -> None:
        self.history.append(event)
        while len(self.history) > self.history_limit:
            self.horizon = self.history.popleft().rv
        for watcher in list(self.watchers):
            watcher.offer(event)
        for listener in list(self.listeners):
            listener(event)
