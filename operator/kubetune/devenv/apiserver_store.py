"""The emulated API server's storage: an in-memory etcd with the API server's write rules.

Pure, synchronous logic (no HTTP, no asyncio): the server calls it from its one event-loop
thread, so no locks are needed and every write is atomic with respect to watchers.

The write rules the operator relies on, as a real API server applies them:
- one global `resourceVersion` counter, bumped on every effective write and stored on the
  object; a write whose body carries a stale `metadata.resourceVersion` is a 409 Conflict;
  a write that changes nothing (a no-op patch) is not a write: no bump, no watch event;
- `metadata.generation` starts at 1 and bumps only when non-metadata, non-status content
  changes; `uid` and `creationTimestamp` are set on create and never change;
- with a `status` subresource, main-resource writes keep the stored status and status
  writes keep everything but the status (metadata included);
- DELETE of an object with finalizers only sets `deletionTimestamp`; the object goes when
  an update removes the last finalizer; deleting an owner garbage-collects its dependents
  (background propagation, run after the owner's response; `Orphan` skips it).
"""

from __future__ import annotations

import collections
import datetime
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from kubetune.devenv import apiserver_errors as errors
from kubetune.devenv.apiserver_patch import APPLY_PATCH, JSON_PATCH, apply_patch
from kubetune.devenv.apiserver_registry import ResourceType
from kubetune.devenv.apiserver_schema import prune

Obj = dict[str, Any]
Admit = Callable[[ResourceType, Obj, "Obj | None"], Obj]
ObjKey = tuple[str, str]  # (namespace or "", name)
SYSTEM_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "generation",
                   "resourceVersion", "managedFields", "selfLink")


def clone(obj: Any) -> Any:
    """JSON round-trip copy: stored objects are pure JSON and this is faster than deepcopy."""
    return json.loads(json.dumps(obj))


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    storage_key: tuple[str, str]
    obj: Obj
    old: Obj | None  # the previous state, so selector watches can see objects leave


def _spec_content(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _without_rv(obj: Obj) -> Obj:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


class ObjectStore:
    def __init__(self, admit: Admit | None = None, history_size: int = 50_000) -> None:
        self._objects: dict[tuple[str, str], dict[ObjKey, Obj]] = collections.defaultdict(dict)
        self._by_uid: dict[str, tuple[tuple[str, str], ObjKey]] = {}
        self._types_by_key: dict[tuple[str, str], ResourceType] = {}
        self._rv = 1000
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=history_size)
        self._subscribers: list[Callable[[WatchEvent], None]] = []
        self._gc_pending: list[str] = []
        self._admit = admit
        # Per-request settings, set by the HTTP layer before each write (single-threaded).
        self.field_validation = "Warn"
        self.warnings: list[str] = []

    # --- reading --------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        stored = self._objects[rtype.storage_key].get((namespace or "", name))
        if stored is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return self._present(rtype, stored)

    def exists(self, rtype: ResourceType, namespace: str | None, name: str) -> bool:
        return (namespace or "", name) in self._objects[rtype.storage_key]

    def list(self, rtype: ResourceType, namespace: str | None,
             predicate: Callable[[Obj], bool]) -> list[Obj]:
        items = [obj for (ns, _), obj in sorted(self._objects[rtype.storage_key].items())
                 if (not namespace or ns == namespace) and predicate(obj)]
        return [self._present(rtype, obj) for obj in items]

    def _present(self, rtype: ResourceType, stored: Obj) -> Obj:
        obj = clone(stored)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        return obj

    # --- watching -------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[WatchEvent], None]) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def events_since(self, rtype: ResourceType, rv: int) -> list[WatchEvent]:
        """Events after `rv`, for `?watch=true&resourceVersion=rv`; 410 if already forgotten."""
        if self._history and len(self._history) == self._history.maxlen \
                and rv < self._history[0].rv - 1:
            raise errors.gone(f"too old resource version: {rv} ({self._history[0].rv})")
        return [e for e in self._history if e.rv > rv and e.storage_key == rtype.storage_key]

    def _emit(self, kind: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
        event = WatchEvent(self._rv, kind, rtype.storage_key, obj, old)
        self._history.append(event)
        for callback in list(self._subscribers):
            callback(event)

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    # --- writing --------------------------------------------------------------------------

    def create(self, rtype: ResourceType, namespace: str | None, body: Any) -> Obj:
        obj = self._checked_body(rtype, namespace, None, body)
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(rtype.kind, rtype.group, "", [
                    {"field": "metadata.name", "reason": "FieldValueRequired",
                     "message": "Required value: name or generateName is required"}])
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (meta.get("namespace", ""), meta["name"])
        if key in self._objects[rtype.storage_key]:
            raise errors.already_exists(rtype.plural, rtype.group, meta["name"])
        for field in SYSTEM_METADATA:
            meta.pop(field, None)
        if rtype.has_status:
            obj.pop("status", None)
        obj = self._admitted(rtype, obj, None)
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1,
                    resourceVersion=self._bump())
        self._store(rtype, key, obj)
        self._emit("ADDED", rtype, obj, None)
        return self._present(rtype, obj)

    def replace(self, rtype: ResourceType, namespace: str | None, name: str, body: Any,
                subresource: str | None = None) -> Obj:
        """PUT: the body is the whole new object (or, for /status, the carrier of status)."""
        old = self._stored(rtype, namespace, name)
        new = self._checked_body(rtype, namespace, name, body)
        self._check_precondition(rtype, name, new, old)
        return self._update(rtype, old, new, subresource)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, content_type: str,
              body: Any, subresource: str | None = None) -> Obj:
        key = (namespace or "", name) if rtype.namespaced else ("", name)
        old = self._objects[rtype.storage_key].get(key)
        if old is None and content_type == APPLY_PATCH and subresource is None:
            return self.create(rtype, namespace, {**body, "metadata": {
                **(body.get("metadata") or {}), "name": name}})
        if old is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        if content_type != JSON_PATCH and isinstance(body, dict):
            self._check_precondition(rtype, name, body, old)
        new = apply_patch(content_type, clone(old), body)
        new = self._checked_body(rtype, namespace, name, new)
        return self._update(rtype, old, new, subresource)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str,
               options: Obj | None = None) -> Obj:
        options = options or {}
        old = self._stored(rtype, namespace, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, old["metadata"]["uid"]) or \
                preconditions.get("resourceVersion") not in (
                    None, old["metadata"]["resourceVersion"]):
            raise errors.conflict(rtype.plural, rtype.group, name)
        orphan = options.get("propagationPolicy") == "Orphan"
        if old["metadata"].get("deletionTimestamp"):
            return self._present(rtype, old)
        if old["metadata"].get("finalizers"):
            new = clone(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["resourceVersion"] = self._bump()
            self._store(rtype, self._key_of(new), new)
            self._emit("MODIFIED", rtype, new, old)
            return self._present(rtype, new)
        return self._remove(rtype, old, collect=not orphan)

    # --- garbage collection ---------------------------------------------------------------

    def collect_garbage(self) -> int:
        """Delete dependents whose owners are all gone; drop refs to gone owners otherwise.

        Run by the server after the owner's DELETE has been answered (background
        propagation). Returns how many dependents were deleted.
        """
        deleted = 0
        while self._gc_pending:
            gone_uid = self._gc_pending.pop(0)
            for storage_key, objects in list(self._objects.items()):
                rtype = self._types_by_key.get(storage_key)
                if rtype is None:  # an empty bucket a read created; nothing to collect there
                    continue
                for obj in list(objects.values()):
                    refs = obj["metadata"].get("ownerReferences") or []
                    if not any(ref.get("uid") == gone_uid for ref in refs):
                        continue
                    alive = [ref for ref in refs if ref.get("uid") in self._by_uid]
                    if alive:
                        new = clone(obj)
                        new["metadata"]["ownerReferences"] = alive
                        self._update(rtype, obj, new, None)
                    else:
                        self.delete(rtype, obj["metadata"].get("namespace"),
                                    obj["metadata"]["name"])
                        deleted += 1
        return deleted

    @property
    def has_garbage(self) -> bool:
        return bool(self._gc_pending)

    # --- internals ------------------------------------------------------------------------

    def _key_of(self, obj: Obj) -> ObjKey:
        return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    def _stored(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        stored = self._objects[rtype.storage_key].get((namespace or "", name))
        if stored is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return stored

    def _store(self, rtype: ResourceType, key: ObjKey, obj: Obj) -> None:
        self._types_by_key.setdefault(rtype.storage_key, rtype)
        self._objects[rtype.storage_key][key] = obj
        self._by_uid[obj["metadata"]["uid"]] = (rtype.storage_key, key)

    def _remove(self, rtype: ResourceType, old: Obj, collect: bool = True) -> Obj:
        key = self._key_of(old)
        del self._objects[rtype.storage_key][key]
        self._by_uid.pop(old["metadata"]["uid"], None)
        gone = clone(old)
        gone["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", rtype, gone, old)
        if collect:
            self._gc_pending.append(old["metadata"]["uid"])
        return self._present(rtype, gone)

    def _checked_body(self, rtype: ResourceType, namespace: str | None, name: str | None,
                      body: Any) -> Obj:
        """Validate identity fields and normalise namespace and apiVersion/kind."""
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of a {rtype.kind} must be a JSON object")
        obj = clone(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata: must be an object")
        if name is not None and meta.get("name", name) != name:
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not"
                                     f" match the name on the URL ({name})")
        if name is not None:
            meta["name"] = name
        if rtype.namespaced:
            body_ns = meta.get("namespace") or namespace
            if namespace and body_ns != namespace:
                raise errors.bad_request("the namespace of the provided object does not match"
                                         " the namespace sent on the request")
            if not body_ns:
                raise errors.bad_request(f"{rtype.kind}: metadata.namespace: Required value")
            meta["namespace"] = body_ns
        else:
            meta.pop("namespace", None)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        return obj

    def _check_precondition(self, rtype: ResourceType, name: str, body: Obj, old: Obj) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted not in (None, "") and str(wanted) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rtype.plural, rtype.group, name)

    def _admitted(self, rtype: ResourceType, new: Obj, old: Obj | None) -> Obj:
        """Prune undeclared fields (or refuse them under Strict), then call admission."""
        if not rtype.custom:
            return new
        new, unknown = prune(new, rtype.schema)
        if unknown and self.field_validation == "Strict":
            raise errors.bad_request(
                f"{rtype.kind} in version \"{rtype.version}\" cannot be handled as a"
                f" {rtype.kind}: strict decoding error: "
                + ", ".join(f'unknown field "{path}"' for path in unknown))
        if unknown and self.field_validation == "Warn":
            self.warnings.extend(f'unknown field "{path}"' for path in unknown)
        if self._admit is None:
            return new
        return self._admit(rtype, new, clone(old) if old is not None else None)

    def _merge_for_write(self, rtype: ResourceType, old: Obj, new: Obj,
                         subresource: str | None) -> Obj:
        """Apply the subresource split and keep the fields clients may not change."""
        if subresource == "status":
            merged = clone(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            return merged
        if subresource is not None:
            raise errors.method_not_allowed(f"subresource {subresource!r} cannot be written")
        if rtype.has_status:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        meta, old_meta = new["metadata"], old["metadata"]
        for field in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(rtype.kind, rtype.group, old_meta["name"], [{
                    "field": "metadata.finalizers", "reason": "FieldValueForbidden",
                    "message": "Forbidden: no new finalizers can be added if the object is"
                               " being deleted"}])
        return new

    def _update(self, rtype: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        new = self._merge_for_write(rtype, old, new, subresource)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new = self._admitted(rtype, new, old)
        if _spec_content(new) != _spec_content(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if _without_rv(new) == _without_rv(old):
            return self._present(rtype, old)  # a no-op is not a write
        new["metadata"]["resourceVersion"] = self._bump()
        self._store(rtype, self._key_of(new), new)
        self._emit("MODIFIED", rtype, new, old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(rtype, new)
        return self._present(rtype, new)
