"""Watches on the pods FineTuneJobs own and on the nodes they run on, as Kopf indexes
plus event handlers that route each relevant change to the owning job's reconcile.

- Index `finetunejob_pods`: pods labelled `kubetune.dev/finetunejob`, keyed by
  (namespace, that label) — the same key as the job's (see handlers) — trimmed to what
  a reconcile reads (`cluster_view.trim_pod`).
- Index `finetunejob_nodes`: every node by name, trimmed to its taints.
- A pod event whose decision-relevant fields changed (`pod_signature`: phase,
  conditions such as DisruptionTarget, container states, deletion) pokes the pod's job;
  a node event whose taints changed, or a node's deletion, pokes every job with a pod on
  it. Nothing else (IPs, resyncs, node heartbeats) does.
- What only a watch can know once an object is gone is kept in `Memory`: when each
  Node was seen deleted, and which node each deleted pod ran on.

A reconcile then reads a `snapshot` of these instead of LISTing pods and GETting nodes
(`cluster_view.SnapshotView`), so an idle timer tick costs no request. Pods are watched
in the operator's namespaces (Kopf has no server-side label selector: every pod there
streams in, only labelled ones are kept); nodes are cluster-scoped, so Kopf watches them
cluster-wide even under `--namespace` (the chart's ClusterRole grants nodes
get/list/watch in both modes). Kopf runs these async handlers in its event loop, the
only thread that touches the indexes and the memory; snapshots are plain copies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime, timezone

import kopf

from .cluster_view import Memory, SnapshotView, node_signature, pod_signature, trim_node, trim_pod
from .kube import Kube
from .naming import LABEL_ATTEMPT, LABEL_JOB

POD_INDEX = "finetunejob_pods"
NODE_INDEX = "finetunejob_nodes"
MEMORY_LIMIT = 4096  # deleted nodes / pods remembered (oldest forgotten first)
# Signatures only spare reconciles; should deletions be missed (a watch gap), forgetting
# them all costs one reconcile per pod at its next event.
SIGNATURE_LIMIT = 100_000
GONE = ("<deleted>",)

Poke = Callable[[Hashable], None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Watches:
    """The indexes (handed over by Kopf at start-up), signatures seen last, and memory."""

    def __init__(self, poke: Poke, now: Callable[[], datetime] = _now):
        self.poke, self.now = poke, now
        self.pods_index = None
        self.nodes_index = None
        self.pod_signatures: dict[str, tuple] = {}
        self.node_signatures: dict[str, tuple] = {}
        self.nodes_gone: OrderedDict[str, datetime] = OrderedDict()
        self.pod_nodes: OrderedDict[tuple, str] = OrderedDict()  # (ns, job, pod, attempt)
        self.routed = 0

    # --- pods ---------------------------------------------------------------------------
    def pod_event(self, kind: str | None, body) -> bool:
        """Record a pod event; True when it was routed to its job's reconcile."""
        meta = body.get("metadata") or {}
        uid, labels = meta.get("uid"), meta.get("labels") or {}
        key = (meta.get("namespace"), labels.get(LABEL_JOB))
        if kind == "DELETED":
            self.pod_signatures.pop(uid, None)
            node = (body.get("spec") or {}).get("nodeName")
            if node and labels.get(LABEL_ATTEMPT, "").isdigit():
                _remember(self.pod_nodes, (*key, meta.get("name"), int(labels[LABEL_ATTEMPT])),
                          node)
        else:
            signature = pod_signature(body)
            if self.pod_signatures.get(uid) == signature:
                return False
            if len(self.pod_signatures) >= SIGNATURE_LIMIT:
                self.pod_signatures.clear()
            self.pod_signatures[uid] = signature
        if kind is None:
            return False  # the initial listing: every job is reconciled on start anyway
        self.routed += 1
        self.poke(key)
        return True

    # --- nodes --------------------------------------------------------------------------
    def node_event(self, kind: str | None, body) -> int:
        """Record a node event; returns how many jobs it was routed to."""
        name = (body.get("metadata") or {}).get("name")
        if kind == "DELETED":
            signature = GONE
            _remember(self.nodes_gone, name, self.now())
        else:
            signature = node_signature(body)
            self.nodes_gone.pop(name, None)
        if self.node_signatures.get(name) == signature:
            return 0
        self.node_signatures[name] = signature
        if kind is None:
            return 0
        if kind == "DELETED":
            self.node_signatures.pop(name, None)
        jobs = self.jobs_on(name)
        for key in jobs:
            self.poke(key)
        self.routed += len(jobs)
        return len(jobs)

    def jobs_on(self, node: str) -> list[tuple]:
        """The jobs with a pod on `node` (a scan of the pod index: node events that
        matter are rare, and a job has a handful of pods)."""
        found = []
        for key, store in (self.pods_index or {}).items():
            if any((pod.get("spec") or {}).get("nodeName") == node for pod in store):
                found.append(key)
        return found

    # --- reads --------------------------------------------------------------------------
    def snapshot(self, kube: Kube, key: tuple) -> SnapshotView:
        """A copy of the job's pods, their nodes and the memory about them, for one
        reconcile (taken in the event loop, read in a worker thread)."""
        namespace, job = key
        pods = [dict(p) for p in (self.pods_index or {}).get(key, ())]
        nodes = {}
        for pod in pods:
            name = pod["spec"].get("nodeName")
            if name and name not in nodes:
                found = list((self.nodes_index or {}).get(name, ()))
                if found:
                    nodes[name] = found[0]
        gone = {name: self.nodes_gone[name] for name in
                {p["spec"].get("nodeName") for p in pods} | self._remembered_nodes(key)
                if name in self.nodes_gone}
        pod_nodes = {(pod, attempt): node for (ns, j, pod, attempt), node in self.pod_nodes.items()
                     if (ns, j) == key}
        return SnapshotView(kube, pods, nodes, Memory(nodes_gone=gone, pod_nodes=pod_nodes))

    def _remembered_nodes(self, key: tuple) -> set[str]:
        return {node for (ns, j, _, _), node in self.pod_nodes.items() if (ns, j) == key}

    def forget_job(self, key: tuple) -> None:
        for entry in [k for k in self.pod_nodes if k[:2] == key]:
            del self.pod_nodes[entry]


def _remember(store: OrderedDict, key, value) -> None:
    store.pop(key, None)
    store[key] = value
    while len(store) > MEMORY_LIMIT:
        store.popitem(last=False)


def register(registry: kopf.OperatorRegistry, watches: Watches) -> None:
    """Add the pod and node indexes and event handlers to `registry`."""

    @kopf.index("v1", "pods", id=POD_INDEX, labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def finetunejob_pods(namespace, labels, body, **_) -> dict:
        return {(namespace, labels[LABEL_JOB]): trim_pod(body)}

    @kopf.index("v1", "nodes", id=NODE_INDEX, registry=registry)
    async def finetunejob_nodes(name, body, **_) -> dict:
        return {name: trim_node(body)}

    @kopf.on.event("v1", "pods", id="finetunejob-pod-changed", labels={LABEL_JOB: kopf.PRESENT},
                   registry=registry)
    async def pod_changed(type, body, **_) -> None:  # noqa: A002 (Kopf's kwarg name)
        watches.pod_event(type, body)

    @kopf.on.event("v1", "nodes", id="finetunejob-node-changed", registry=registry)
    async def node_changed(type, body, **_) -> None:  # noqa: A002
        watches.node_event(type, body)
