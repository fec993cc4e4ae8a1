"""The operator's one door to the Kubernetes API: get / list / create / patch / delete.

Plain REST calls over one `kubeconn.Connection` (Kopf's credentials, urllib3's pool), so
every kind — core objects and our custom resources — goes through the same five verbs,
and the request count a benchmark reads is the real one. A 409 on create means "already
exists" (names are deterministic); patches are only sent when the object differs from
what we want.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlencode

from kubetune.api import FINETUNEJOB

from .kubeconn import Connection


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        path = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        if name:
            path += f"/{name}"
        return path + (f"/{sub}" if sub else "")


PODS = Kind("", "v1", "pods")
SERVICES = Kind("", "v1", "services")
CONFIGMAPS = Kind("", "v1", "configmaps")
EVENTS = Kind("", "v1", "events")
NODES = Kind("", "v1", "nodes", namespaced=False)
FINETUNEJOBS = Kind(FINETUNEJOB.group, FINETUNEJOB.version, FINETUNEJOB.plural)
KINDS_BY_OBJECT = {"Pod": PODS, "Service": SERVICES, "ConfigMap": CONFIGMAPS, "Event": EVENTS,
                   "Node": NODES, FINETUNEJOB.kind: FINETUNEJOBS}


class KubeError(RuntimeError):
    """A non-2xx answer: `status` is the HTTP code, the message the API server's.
    `reason` and `details` come from its Status body (`details.causes[].field` names
    the refused field), for `api_errors.classify`; empty when the body was not a Status."""

    def __init__(self, status: int, message: str, reason: str = "",
                 details: dict | None = None):
        self.status = status
        self.message = message
        self.reason = reason
        self.details = details or {}
        super().__init__(f"HTTP {status}: {message}")


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def is_subset(wanted, actual) -> bool:
    """True when every field of `wanted` is present and equal in `actual` (the API server
    adds defaults we never set; those are not a difference)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            is_subset(value, actual.get(key)) for key, value in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(wanted) == len(actual)
                and all(is_subset(w, a) for w, a in zip(wanted, actual)))
    return wanted == actual


# Fields we own and may change on a live object, per kind (a pod's spec is immutable).
PATCHABLE = {"ConfigMap": (("metadata", "labels"), ("data",)),
             "Service": (("metadata", "labels"), ("spec", "selector"), ("spec", "ports")),
             "Pod": (("metadata", "labels"),)}


def drift_patch(desired: dict, actual: dict) -> dict | None:
    """A merge patch putting our fields of `desired` onto `actual`, or None if in sync."""
    patch: dict = {}
    for path in PATCHABLE.get(desired.get("kind"), ()):
        wanted, have = desired, actual
        for key in path:
            wanted, have = (wanted or {}).get(key), (have or {}).get(key)
        if wanted is not None and not is_subset(wanted, have):
            target = patch
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = wanted
    return patch or None


class Kube:
    """Thread-safe (the connection's pool is); counts requests per verb for metrics."""

    def __init__(self, connection: Connection | None = None):
        self.connection = connection if connection is not None else Connection()
        self.requests: Counter = Counter()
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body=None, query: dict | None = None,
              content_type: str = "application/json"):
        with self._lock:
            self.requests[method] += 1
        url = path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        status, raw = self.connection.request(method, url, data, headers)
        if not 200 <= status < 300:
            raise KubeError(status, *_status_body(raw))
        return json.loads(raw) if raw else {}

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return self._call("GET", kind.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: Kind, namespace: str | None, labels: dict[str, str]) -> list[dict]:
        query = {"labelSelector": selector(labels)} if labels else None
        return self._call("GET", kind.path(namespace), query=query).get("items") or []

    def create(self, kind: Kind, body: dict, dry_run: bool = False) -> bool:
        """True when created, False when an object of that name already existed (409).
        `dry_run`: the API server validates and admits it (quota, ServiceAccount, Pod
        Security) but stores nothing; a refusal raises as it would for real."""
        namespace = body["metadata"].get("namespace")
        try:
            self._call("POST", kind.path(namespace), body,
                       query={"dryRun": "All"} if dry_run else None)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def patch(self, kind: Kind, name: str, namespace: str | None, patch: dict,
              subresource: str = "") -> dict:
        """JSON merge patch; a `metadata.resourceVersion` in it makes the write conditional."""
        return self._call("PATCH", kind.path(namespace, name, subresource), patch,
                          content_type="application/merge-patch+json")

    def delete(self, kind: Kind, name: str, namespace: str | None = None,
               uid: str | None = None, grace_seconds: int | None = None) -> bool:
        """True when a delete was issued, False when it was already gone. `uid`: only
        that object (a newer one of the same name answers 409, and stays). `grace_seconds`:
        0 removes a pod at once, without waiting for a kubelet to confirm it stopped."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            self._call("DELETE", kind.path(namespace, name), options)
        except KubeError as exc:
            if exc.status == 404 or (uid and exc.status == 409):
                return False
            raise
        return True

    def ensure(self, desired: dict, likely_exists: bool = False) -> str:
        """Create `desired`, or patch our fields of the existing object only if they
        drifted (pod specs are immutable: pods get labels at most). `likely_exists`
        picks the cheaper order: GET first, else POST first (409 = already there).
        Returns what happened: created / patched / unchanged."""
        kind = KINDS_BY_OBJECT[desired["kind"]]
        meta = desired["metadata"]
        actual = self.get(kind, meta["name"], meta.get("namespace")) if likely_exists else None
        if actual is None:
            if self.create(kind, desired):
                return "created"
            actual = self.get(kind, meta["name"], meta.get("namespace"))
            if actual is None:  # deleted in between: the next reconcile creates it
                return "unchanged"
        patch = drift_patch(desired, actual)
        if patch is None:
            return "unchanged"
        self.patch(kind, meta["name"], meta.get("namespace"), patch)
        return "patched"


def _status_body(body: bytes) -> tuple[str, str, dict]:
    """(message, reason, details) of an error answer: a metav1.Status, or any text."""
    text = body.decode(errors="replace")
    try:
        status = json.loads(text)
    except ValueError:
        return text[:500], "", {}
    if not isinstance(status, dict):
        return text[:500], "", {}
    details = status.get("details")
    return (status.get("message") or text[:500], status.get("reason") or "",
            details if isinstance(details, dict) else {})
