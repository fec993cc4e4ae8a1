"""A whole cluster minus the machines: the pod network, the real control plane, the
project's CRDs installed and Established, and namespaces made as a platform team would
(labelled for Pod Security `restricted`).

One per test session (the `cluster` fixture) or per demo; tests take a namespace each.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from .controlplane import ADMIN, ControlPlane
from .kubeapi import ApiError
from .podnet import PodNetwork

REPO = Path(__file__).resolve().parents[3]
DNS_USER = "system:kubetune-dns"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def load_crds(folder: Path = REPO / "crds") -> list[dict]:
    return [yaml.safe_load(path.read_text()) for path in sorted(Path(folder).glob("*.yaml"))]


class Cluster:
    """`with Cluster() as cluster:` network, control plane, CRDs; `namespace()` makes one."""

    def __init__(self, workdir: Path | None = None, crds: list[dict] | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubetune-cluster-"))
        self.crds = load_crds() if crds is None else crds
        self._exit = ExitStack()

    def __enter__(self) -> Cluster:
        try:
            self.network = self._exit.enter_context(PodNetwork())
            self.control_plane = self._exit.enter_context(
                ControlPlane(self.workdir / "controlplane", address=self.network.gateway))
            self.api = self.control_plane.client()
            self.kubeconfig = self.control_plane.admin_kubeconfig
            self._grant_dns_reader()
            self.install_crds(self.crds)
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def install_crds(self, crds: list[dict], timeout: float = 30) -> None:
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            try:
                self.api.request("POST", path, crd)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        deadline = time.monotonic() + timeout
        for crd in crds:
            while True:
                current = self.api.get_path(f"{path}/{crd['metadata']['name']}") or {}
                conditions = {c["type"]: c["status"] for c in (current.get("status") or {}).get("conditions") or []}
                if conditions.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {crd['metadata']['name']} not Established: {conditions}")
                time.sleep(0.1)

    def namespace(self, name: str, labels: dict | None = None) -> str:
        """Create a namespace (Pod Security `restricted` unless told otherwise) and wait
        for its default ServiceAccount, which pods need before they can be created."""
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": RESTRICTED if labels is None else labels}}
        try:
            self.api.request("POST", "/api/v1/namespaces", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
        self.control_plane.wait_for_service_account(name)
        return name

    def delete_namespace(self, name: str, force_pods: bool = False) -> None:
        """Delete a namespace without waiting. `force_pods` first removes its pods at once,
        as `kubectl delete --force` does: pods whose node agent has stopped would
        otherwise wait for pod GC (tens of seconds) and hold the namespace."""
        if force_pods:
            self.api.request("DELETE", f"/api/v1/namespaces/{name}/pods",
                             {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
        self.api.delete_path(f"/api/v1/namespaces/{name}")

    def _grant_dns_reader(self) -> None:
        """What CoreDNS's ClusterRole grants, for the node agent's hosts-file resolver."""
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "kubetune:dns"},
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
                          {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                           "verbs": ["list", "watch"]}]}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "kubetune:dns"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "kubetune:dns"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                 "name": DNS_USER}]}
        self.api.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
        self.api.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)


__all__ = ["ADMIN", "Cluster", "load_crds", "RESTRICTED", "DNS_USER"]
