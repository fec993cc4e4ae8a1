"""Where a reconcile reads a job's pods and their nodes: the API, or the watch caches.

`ApiView` asks the API server (one LIST of the job's pods, one GET per node), as the
operator always did. `SnapshotView` answers from a copy of the operator's watch caches
(Kopf indexes, see `watches`), taken when the reconcile starts: no request at all, but a
moment behind the API server, and pods and nodes arrive on separate streams. So a cache
is trusted for what it shows and never for what it lacks: a pod or node the snapshot
does not have may simply not have reached it yet (a pod created a moment ago, a node that
just joined). A reconcile that meets such an absence asks the API (`confirmed()`)
before it counts a lost pod or a deleted node. What the snapshot shows can only be old,
never invented: acting on an old "still running" waits, and the event that made it old
triggers another reconcile.

Both views also carry what only a watch can know, which the API no longer has once
an object is gone (`Memory`): when a Node was seen deleted, and on which node a deleted
pod ran. Pure: no Kopf here, so the service stays testable with plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from .kube import NODES, PODS, Kube

DEFAULT_GRACE_SECONDS = 30  # the API server's default terminationGracePeriodSeconds


@dataclass(frozen=True)
class Memory:
    """What the watches saw vanish. `nodes_gone`: node name -> when its deletion was
    seen. `pod_nodes`: pod name -> the node it ran on when it was deleted."""

    nodes_gone: Mapping[str, datetime] = field(default_factory=dict)
    pod_nodes: Mapping[str, str] = field(default_factory=dict)


NO_MEMORY = Memory()


class ClusterView(Protocol):
    authoritative: bool
    memory: Memory

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict]: ...

    def node(self, name: str) -> dict | None: ...

    def confirmed(self) -> ClusterView: ...


class ApiView:
    """The API server itself: what it says is the truth of this moment."""

    authoritative = True

    def __init__(self, kube: Kube, memory: Memory = NO_MEMORY):
        self.kube, self.memory = kube, memory

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict]:
        return self.kube.list(PODS, namespace, dict(labels))

    def node(self, name: str) -> dict | None:
        return self.kube.get(NODES, name)

    def confirmed(self) -> ApiView:
        return self


class SnapshotView:
    """A copy of the caches for one reconcile. `pods`: the job's pods as the pod watch
    has them; `nodes`: those pods' nodes as the node watch has them (absent = not in
    the cache). `kube` answers `confirmed()`."""

    authoritative = False

    def __init__(self, kube: Kube, pods: list[dict], nodes: Mapping[str, dict],
                 memory: Memory = NO_MEMORY):
        self.kube, self._pods, self._nodes, self.memory = kube, pods, nodes, memory

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict]:
        return [p for p in self._pods if (p.get("metadata") or {}).get("namespace") == namespace
                and has_labels(p, labels)]

    def node(self, name: str) -> dict | None:
        return self._nodes.get(name)

    def confirmed(self) -> ApiView:
        return ApiView(self.kube, self.memory)


def has_labels(obj: dict, labels: Mapping[str, str]) -> bool:
    """Label-selector equality, as the LIST the cache stands in for would apply it."""
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(key) == value for key, value in labels.items())


def stopped_by(pod: dict, node_gone_since: datetime | None,
               wait_grace: bool = False) -> datetime | None:
    """When a pod whose Node was deleted has surely stopped, or None when unknown.

    No kubelet is left to report it, and pod GC deletes such pods only after ~40-60 s.
    A Node goes away with its machine: the cloud's node lifecycle controller deletes it
    once the instance is gone, Karpenter and cluster-autoscaler once they terminated
    it. So the pod stopped when the deletion was seen (the spot profile's default,
    `deletedNodePods: Stopped`). Where Nodes are deleted while their machines still
    run (by hand, or a provider that deletes the Node first), `wait_grace` counts it
    stopped only after its grace period: a machine shutting down gives its processes
    at most that, and the trainer's SIGTERM contract (checkpoint budget plus a margin)
    fits in it. Only a watch sees the moment; without one (after an operator restart,
    or with the watches off) pod GC decides, as before.
    """
    if node_gone_since is None:
        return None
    if not wait_grace:
        return node_gone_since
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is None:
        grace = DEFAULT_GRACE_SECONDS
    pending = meta.get("deletionGracePeriodSeconds")
    if isinstance(pending, int) and pending > grace:
        grace = pending
    return node_gone_since + timedelta(seconds=max(0, int(grace)))


# --- what the caches keep ------------------------------------------------------------
# A pod's spec is large (env, volumes) and the reconcile reads little of it; nodes carry
# images and conditions the operator never reads. The caches keep only what
# classify_pod, pod_gpu_interval, progress polling and child bookkeeping read.
POD_META = ("name", "namespace", "uid", "labels", "resourceVersion", "creationTimestamp",
            "deletionTimestamp", "deletionGracePeriodSeconds")


def trim_pod(body: Mapping) -> dict:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    containers = [{"name": c.get("name"), "resources": _plain(c.get("resources") or {})}
                  for c in spec.get("containers") or []]
    trimmed_spec = {"containers": containers}
    for key in ("nodeName", "terminationGracePeriodSeconds"):
        if spec.get(key) is not None:
            trimmed_spec[key] = spec[key]
    return {"metadata": {k: _plain(meta[k]) for k in POD_META if meta.get(k) is not None},
            "spec": trimmed_spec, "status": _plain(body.get("status") or {})}


def trim_node(body: Mapping) -> dict:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return {"metadata": {k: _plain(meta[k]) for k in ("name", "uid", "labels") if meta.get(k)},
            "spec": {"taints": _plain(spec.get("taints") or [])}}


def pod_signature(pod: Mapping) -> tuple:
    """What about a pod can change a decision: phase, node, deletion, conditions,
    container states. Events that change none of these (an IP, a label, a resync)
    trigger no reconcile."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    conditions = tuple(sorted((c.get("type"), c.get("status"), c.get("reason"))
                              for c in status.get("conditions") or []))
    containers = tuple(sorted(
        (c.get("name"), tuple(sorted((c.get("state") or {}).keys())),
         ((c.get("state") or {}).get("terminated") or {}).get("exitCode"),
         ((c.get("state") or {}).get("waiting") or {}).get("reason"))
        for c in status.get("containerStatuses") or []))
    return (status.get("phase"), status.get("reason"), (pod.get("spec") or {}).get("nodeName"),
            meta.get("deletionTimestamp") is not None, conditions, containers)


def node_signature(node: Mapping) -> tuple:
    """A node's taints: the only thing about a node a decision reads (besides its
    existence)."""
    taints = (node.get("spec") or {}).get("taints") or []
    return tuple(sorted((t.get("key"), t.get("value"), t.get("effect")) for t in taints))


def _plain(value):
    """Plain nested dicts and lists (Kopf hands out read-only views of its bodies)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
