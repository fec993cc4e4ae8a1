"""Spot interruptions the way a cloud delivers them, through the API only; the real
components then do the rest, as on a cluster:

- `evict`: an Eviction (what a node-termination handler or Karpenter does on the
  notice); the API server sets the pod's DisruptionTarget condition and deletes it with
  its grace period, the node agent sends SIGTERM.
- `taint_no_execute`: a NoExecute taint on the node; the controller manager's taint
  eviction sets DisruptionTarget and deletes the pods that do not tolerate it.
- `delete_node`: the Node object deleted (the machine is gone); the node agent stops
  the pods as a machine shutting down would, pod GC marks and deletes them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .kubeapi import KubeHttp


def evict(api: KubeHttp, namespace: str, pod: str) -> None:
    api.request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
                {"apiVersion": "policy/v1", "kind": "Eviction",
                 "metadata": {"name": pod, "namespace": namespace}})


def taint_no_execute(api: KubeHttp, node: str, key: str = "aws-node-termination-handler/spot-itn",
                     value: str = "true") -> None:
    current = api.get_path(f"/api/v1/nodes/{node}") or {}
    taints = list((current.get("spec") or {}).get("taints") or [])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    taints.append({"key": key, "value": value, "effect": "NoExecute", "timeAdded": stamp})
    api.request("PATCH", f"/api/v1/nodes/{node}", {"spec": {"taints": taints}},
                content_type="application/merge-patch+json")


def delete_node(api: KubeHttp, node: str) -> None:
    api.delete_path(f"/api/v1/nodes/{node}")
