"""What a node agent registers: a Node's labels, taints, capacity and the status a
kubelet posts when it registers (Ready, addresses, the kubelet endpoint, node info)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from .cpbuild import KUBERNETES_VERSION as KUBELET_VERSION
from .podruntime import now


def micro_now() -> str:
    """MicroTime, as Leases carry it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class NodeTemplate:
    """A node to register: name, labels, taints and capacity."""

    name: str
    labels: dict = field(default_factory=dict)
    taints: list = field(default_factory=list)
    capacity: dict = field(default_factory=lambda: {"cpu": "8", "memory": "32Gi", "pods": "110",
                                                    "nvidia.com/gpu": "8"})

    def body(self, address: str, port: int) -> dict:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", **self.labels}
        stamp = now()
        conditions = [{"type": kind, "status": "False", "reason": f"KubeletHas{reason}",
                       "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                      for kind, reason in (("MemoryPressure", "SufficientMemory"),
                                           ("DiskPressure", "NoDiskPressure"),
                                           ("PIDPressure", "SufficientPID"))]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "kubetune node agent is posting ready status",
                           "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": list(self.taints)} if self.taints else {},
            "status": {
                "capacity": dict(self.capacity), "allocatable": dict(self.capacity),
                "conditions": conditions,
                "addresses": [{"type": "InternalIP", "address": address},
                              {"type": "Hostname", "address": self.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                             "operatingSystem": "linux", "architecture": "amd64",
                             "containerRuntimeVersion": "kubetune-nodeagent://1",
                             "osImage": "kubetune devenv", "kernelVersion": "",
                             "machineID": self.name, "systemUUID": self.name, "bootID": self.name},
            },
        }
