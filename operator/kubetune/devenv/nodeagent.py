"""The node agent: this environment's kubelet, for the real control plane.

It registers Nodes (capacity including `nvidia.com/gpu`, the labels a spot cloud sets),
renews their Leases, and runs the pods the real scheduler binds to them as local
processes: the whole pod, as the kubelet runs it (`podlifecycle`): init containers in
order, native sidecars, then every regular container, all in the pod's network namespace
and each in a mount namespace of its own (`podnet`, `podexec`), with images mapped to
local virtualenvs (`podimages`). It reports pod status as the kubelet does (phase, IPs,
conditions merged by type, init and regular container states, restart counts,
termination messages; `podcontainers`), runs HTTP readiness probes per container, serves
`/containerLogs` so `kubectl logs [-c]` works through the API server, and stops pods on
deletion with SIGTERM (regular containers first, sidecars after), then SIGKILL after the
grace period, before deleting them for good. A deleted Node is a machine gone: its pods
get SIGTERM and the agent stops speaking for it (pod GC cleans up).

Each Node talks to the API server as `system:node:<name>`, so the Node authorizer and
NodeRestriction admission apply to it as to a kubelet. Services' names resolve through
each pod's /etc/hosts, rewritten from EndpointSlices (there is no CoreDNS here).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .controlplane import ControlPlane, Identity
from .kubeapi import ApiError, KubeHttp
from .kubeletserver import KubeletServer
from .nodetemplate import NodeTemplate, micro_now
from .podcontainers import ContainerRun, PodProcess, pod_status
from .podimages import ImageEnvironments
from .podlifecycle import PodLifecycle
from .podnet import PodNetwork
from .podruntime import PodMaterialiser, delete_pod
from .processes import stop_child
from .servicehosts import ServiceHosts

__all__ = ["NodeAgent", "NodeTemplate"]

log = logging.getLogger("kubetune.devenv.nodeagent")
LEASE_SECONDS = 40
STATUS_PATCH = "application/strategic-merge-patch+json"


@dataclass
class AgentNode:
    template: NodeTemplate
    api: KubeHttp
    gone: bool = False


class NodeAgent:
    """`with NodeAgent(cp, network, workdir, nodes) as agent:` runs in a thread.

    `image_environments` maps image reference prefixes to virtualenv folders (longest
    prefix wins); images it does not match run with the project's virtualenv."""

    def __init__(self, control_plane: ControlPlane, network: PodNetwork, workdir: Path,
                 nodes: list[NodeTemplate], extra_env: dict[str, str] | None = None,
                 poll_seconds: float = 0.3, image_environments: Mapping[str, Path] | None = None):
        self.cp = control_plane
        self.network = network
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.poll_seconds = poll_seconds
        self.images = ImageEnvironments(image_environments)
        self.lifecycle = PodLifecycle(self._launch)
        self.nodes: dict[str, AgentNode] = {}
        self.running: dict[tuple[str, str], PodProcess] = {}
        # Regular containers of ended pods: namespace, name, uid, node, container, exitCode.
        self.history: list[dict] = []
        self._templates = list(nodes)
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._last_lease = 0.0

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> NodeAgent:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = KubeletServer(self.cp.ca, self.network.gateway, self.log_path,
                                    self._container_running).start()
        self.hosts = ServiceHosts(self.cp.client(Identity("system:kubetune-dns")),
                                  (self.cp.address, self.cp.port))
        for template in self._templates:
            self.add_node(template)
        self._thread = threading.Thread(target=self._loop, name="node-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self, delete_nodes: bool = True) -> None:
        """Kill every pod process, free their namespaces, deregister the nodes."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)
        with self._lock:
            for running in list(self.running.values()):
                for run in running.running():
                    stop_child(run.process, grace=0.01)
                self._materialiser(running.node).release(running)
            self.running.clear()
            if delete_nodes:
                for node in self.nodes.values():
                    if not node.gone:
                        try:
                            self.cp.client().delete_path(f"/api/v1/nodes/{node.template.name}")
                        except ApiError:
                            log.exception("deleting node %s", node.template.name)
        self.server.stop()

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_node(self, template: NodeTemplate) -> None:
        api = self.cp.client(Identity(f"system:node:{template.name}", ("system:nodes",)))
        try:
            api.request("POST", "/api/v1/nodes", template.body(self.network.gateway, self.server.port))
        except ApiError as exc:
            if exc.status != 409:
                raise
        with self._lock:
            self.nodes[template.name] = AgentNode(template, api)
        self._renew_lease(self.nodes[template.name])

    # the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # keep the agent alive through API hiccups; log them
                log.exception("node agent sync failed")
            self._stop.wait(self.poll_seconds)

    def sync_once(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_lease > 2:
                self._last_lease = time.monotonic()
                for node in list(self.nodes.values()):
                    if not node.gone:
                        try:
                            self._renew_lease(node)
                        except ApiError:  # one node's trouble must not stall the others
                            log.exception("lease of node %s not renewed", node.template.name)
            self.hosts.refresh()
            for node in list(self.nodes.values()):
                if not node.gone:
                    self._sync_node(node)
            for running in list(self.running.values()):
                self.network.write_hosts(running.address, self.hosts.for_namespace(running.namespace))
                self.lifecycle.step(running)
                if running.ended():
                    self._finish(running)
                elif not self.nodes[running.node].gone:
                    self._report(running)

    def _renew_lease(self, node: AgentNode) -> None:
        """Renew the node's Lease (owned by its Node, as the kubelet's is, so it goes with
        it); a Node that no longer exists is a machine gone."""
        name = node.template.name
        current = node.api.get_path(f"/api/v1/nodes/{name}")
        if current is None:
            self._node_gone(node)
            return
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}
        try:
            node.api.request("PATCH", path, {"spec": spec}, content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": name,
                     "uid": current["metadata"]["uid"]}
            node.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                             {"metadata": {"name": name, "ownerReferences": [owner]}, "spec": spec})

    def _sync_node(self, node: AgentNode) -> None:
        name = node.template.name
        try:
            pods = node.api.request("GET", "/api/v1/pods",
                                    query={"fieldSelector": f"spec.nodeName={name}"})["items"]
        except ApiError as exc:
            if exc.status in (401, 403) and node.api.get_path(f"/api/v1/nodes/{name}") is None:
                self._node_gone(node)
                return
            raise
        seen = set()
        configmaps: dict[str, dict[str, dict]] = {}
        for pod in pods:
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            running = self.running.get(key)
            if running and running.uid != meta["uid"]:
                self.lifecycle.terminate(running, grace=0)  # same name, new pod: the old one is gone
                continue
            if running is None:
                if self._startable(pod):
                    self._start_pod(node, pod)
                elif meta.get("deletionTimestamp"):  # nothing runs: it can go at once
                    delete_pod(node.api, meta["namespace"], meta["name"], meta["uid"])
                continue
            running.body = pod
            if meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds")
                self.lifecycle.terminate(running, None if grace is None else int(grace))
            elif running.config_volumes:
                cms = configmaps.setdefault(running.namespace, {})
                for cm_name in running.config_volumes:
                    if cm_name not in cms:
                        cms[cm_name] = node.api.get_path(
                            f"/api/v1/namespaces/{running.namespace}/configmaps/{cm_name}") or {}
                self._materialiser(name).refresh_config_volumes(running, cms)
        for key, running in list(self.running.items()):
            if running.node == name and key not in seen:
                self.lifecycle.terminate(running, grace=0)

    @staticmethod
    def _startable(pod: dict) -> bool:
        phase = (pod.get("status") or {}).get("phase")
        return phase in (None, "Pending") and not pod["metadata"].get("deletionTimestamp")

    def _node_gone(self, node: AgentNode) -> None:
        """The Node was deleted: as for a machine shut down, its pods get SIGTERM."""
        log.info("node %s deleted: stopping its pods", node.template.name)
        node.gone = True
        for running in self.running.values():
            if running.node == node.template.name:
                self.lifecycle.terminate(running)

    def _materialiser(self, node_name: str) -> PodMaterialiser:
        return PodMaterialiser(self.nodes[node_name].api, self.network, self.workdir,
                               self.extra_env, (self.cp.address, self.cp.port), self.images)

    # pods ------------------------------------------------------------------------------
    def _start_pod(self, node: AgentNode, pod: dict) -> None:
        """The sandbox (namespace, address) now; containers as `podlifecycle` allows."""
        running = self._materialiser(node.template.name).prepare(
            pod, node.template.name, self.hosts.for_namespace(pod["metadata"]["namespace"]))
        self.running[running.key] = running
        self.lifecycle.step(running)
        self._report(running)

    def _launch(self, running: PodProcess, run: ContainerRun) -> None:
        self._materialiser(running.node).launch(running.body, running, run)

    def _report(self, running: PodProcess, final: bool = False) -> None:
        """Post the pod's status when it differs from the one posted last."""
        status = pod_status(running, self.network.gateway, final)
        text = json.dumps(status, sort_keys=True)
        if text != running.reported:
            self._patch_status(self.nodes[running.node].api, running, status)
            running.reported = text

    def _patch_status(self, api: KubeHttp, running: PodProcess, status: dict) -> None:
        path = f"/api/v1/namespaces/{running.namespace}/pods/{running.name}/status"
        body = {"metadata": {"uid": running.uid}, "status": status}
        try:
            api.request("PATCH", path, body, content_type=STATUS_PATCH)
        except ApiError as exc:
            if exc.status not in (404, 409, 422):
                raise
            log.info("status of %s/%s not written: %s", running.namespace, running.name, exc)

    def _finish(self, running: PodProcess) -> None:
        """Every container has stopped: free the sandbox, post the terminal status, and
        remove a deleted pod for good."""
        del self.running[running.key]
        self._materialiser(running.node).release(running)
        for run in running.containers:
            if run.last:
                self.history.append({"namespace": running.namespace, "name": running.name,
                                     "uid": running.uid, "node": running.node, "container": run.name,
                                     "exitCode": run.last["exitCode"], "finishedAt": run.last["finishedAt"]})
        node = self.nodes[running.node]
        log.info("pod %s/%s ended", running.namespace, running.name)
        if node.gone:
            return
        self._report(running, final=True)
        if running.deleting:
            delete_pod(node.api, running.namespace, running.name, running.uid)

    # logs ------------------------------------------------------------------------------
    def log_path(self, namespace: str, name: str, container: str | None = None) -> Path | None:
        """The log of a container (default: the first regular one) of the newest pod of
        that name that ran here (for /containerLogs)."""
        folders = sorted(self.workdir.glob(f"{namespace}_{name}_*/containers.json"),
                         key=lambda p: p.stat().st_mtime)
        if not folders:
            return None
        folder = folders[-1].parent
        if container is None:
            names = json.loads(folders[-1].read_text())["containers"]
            container = names[0] if names else ""
        path = folder / "logs" / f"{container}.log"
        return path if container and path.exists() else None

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        path = self.log_path(namespace, name, container)
        return path.read_text(errors="replace") if path else ""

    def _container_running(self, namespace: str, name: str, container: str) -> bool:
        """`kubectl logs -f` follows one run of a container, as the kubelet's does."""
        running = self.running.get((namespace, name))
        run = running.container(container) if running else None
        return bool(run and run.process is not None)
