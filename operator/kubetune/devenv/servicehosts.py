"""Service names for pods, from EndpointSlices, as /etc/hosts lines (CoreDNS's job on a
cluster; there is none here).

A headless Service's name resolves to its endpoints' addresses, as cluster DNS answers.
A ClusterIP Service's name resolves to one ready endpoint's address instead of the
ClusterIP, because no kube-proxy forwards ClusterIPs here; `kubernetes` resolves to
the API server. Lines carry every form a pod may use: `svc`, `svc.ns`, `svc.ns.svc`
and the cluster.local FQDN (the short one for the pod's own namespace only).
"""

from __future__ import annotations

from collections import defaultdict

from .kubeapi import KubeHttp


class ServiceHosts:
    def __init__(self, api: KubeHttp, apiserver: tuple[str, int]):
        self.api = api
        self.apiserver_ip = apiserver[0]
        self._by_service: dict[tuple[str, str], list[str]] = {}

    def refresh(self) -> None:
        services = self.api.request("GET", "/api/v1/services")["items"]
        slices = self.api.request("GET", "/apis/discovery.k8s.io/v1/endpointslices")["items"]
        addresses: dict[tuple[str, str], list[str]] = defaultdict(list)
        for item in slices:
            owner = (item["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            if not owner:
                continue
            for endpoint in item.get("endpoints") or []:
                conditions = endpoint.get("conditions") or {}
                if conditions.get("ready", True) or conditions.get("serving"):
                    addresses[(item["metadata"]["namespace"], owner)].extend(endpoint["addresses"])
        by_service = {}
        for service in services:
            key = (service["metadata"]["namespace"], service["metadata"]["name"])
            if key == ("default", "kubernetes"):
                by_service[key] = [self.apiserver_ip]
            elif addresses.get(key):
                ips = sorted(set(addresses[key]))
                headless = service["spec"].get("clusterIP") == "None"
                by_service[key] = ips if headless else ips[:1]
        self._by_service = by_service

    def for_namespace(self, namespace: str) -> str:
        lines = []
        for (ns, name), ips in sorted(self._by_service.items()):
            names = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
            if ns == namespace:
                names.insert(0, name)
            lines.extend(f"{ip} {' '.join(names)}" for ip in ips)
        return "\n".join(lines) + "\n"
