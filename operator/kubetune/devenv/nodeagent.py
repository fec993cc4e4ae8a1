"""The node agent: this environment's kubelet, for the real control plane.

It registers Nodes (capacity including `nvidia.com/gpu`, the labels a spot cloud sets),
renews their Leases, and runs the pods the real scheduler binds to them as local
processes, each in its own network and mount namespace (`podnet`, `podexec`). It reports
pod status as the kubelet does (phase, IPs, conditions merged by type, container states,
termination messages), runs HTTP readiness probes, serves `/containerLogs` so `kubectl
logs` works through the API server, and stops pods on deletion with SIGTERM, then SIGKILL
after the grace period, before deleting them for good. A deleted Node is a machine gone:
its pods get SIGTERM and the agent stops speaking for it (pod GC cleans up).

Each Node talks to the API server as `system:node:<name>`, so the Node authorizer and
NodeRestriction admission apply to it as to a kubelet. Services' names resolve through
each pod's /etc/hosts, rewritten from EndpointSlices (there is no CoreDNS here).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .controlplane import ControlPlane, Identity
from .kubeapi import ApiError, KubeHttp
from .kubeletserver import KubeletServer
from .nodetemplate import NodeTemplate, micro_now
from .podnet import PodNetwork
from .podruntime import PodMaterialiser, PodProcess, delete_pod, now

__all__ = ["NodeAgent", "NodeTemplate"]
from .processes import stop_child
from .servicehosts import ServiceHosts

log = logging.getLogger("kubetune.devenv.nodeagent")
LEASE_SECONDS = 40
STATUS_PATCH = "application/strategic-merge-patch+json"


@dataclass
class AgentNode:
    template: NodeTemplate
    api: KubeHttp
    gone: bool = False


class NodeAgent:
    """`with NodeAgent(cp, network, workdir, nodes) as agent:` runs in a thread."""

    def __init__(self, control_plane: ControlPlane, network: PodNetwork, workdir: Path,
                 nodes: list[NodeTemplate], extra_env: dict[str, str] | None = None,
                 poll_seconds: float = 0.3):
        self.cp = control_plane
        self.network = network
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.poll_seconds = poll_seconds
        self.nodes: dict[str, AgentNode] = {}
        self.running: dict[tuple[str, str], PodProcess] = {}
        self.history: list[dict] = []  # ended containers: namespace, name, node, exitCode, ...
        self._templates = list(nodes)
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._last_lease = 0.0

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> NodeAgent:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = KubeletServer(self.cp.ca, self.network.gateway, self.log_path,
                                    lambda ns, name: (ns, name) in self.running).start()
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
                if running.process:
                    stop_child(running.process, grace=0.01)
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
                self._probe(running)
                self._reap(running)

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
                self._terminate(running, grace=0)  # same name, new pod: the old one is gone
                continue
            if running is None:
                if self._startable(pod):
                    self._start_pod(node, pod)
                elif meta.get("deletionTimestamp"):  # nothing runs: it can go at once
                    delete_pod(node.api, meta["namespace"], meta["name"], meta["uid"])
                continue
            if meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds")
                self._terminate(running, None if grace is None else int(grace))
            elif running.config_volumes:
                cms = configmaps.setdefault(running.namespace, {})
                for cm_name in running.config_volumes:
                    if cm_name not in cms:
                        cms[cm_name] = node.api.get_path(
                            f"/api/v1/namespaces/{running.namespace}/configmaps/{cm_name}") or {}
                self._materialiser(name).refresh_config_volumes(running, cms)
        for key, running in list(self.running.items()):
            if running.node == name and key not in seen:
                self._terminate(running, grace=0)

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
                self._terminate(running)

    def _materialiser(self, node_name: str) -> PodMaterialiser:
        return PodMaterialiser(self.nodes[node_name].api, self.network, self.workdir,
                               self.extra_env, (self.cp.address, self.cp.port))

    # pods ------------------------------------------------------------------------------
    def _start_pod(self, node: AgentNode, pod: dict) -> None:
        materialiser = self._materialiser(node.template.name)
        meta = pod["metadata"]
        running = materialiser.prepare(pod, node.template.name, self.hosts.for_namespace(meta["namespace"]))
        self.running[running.key] = running
        try:
            materialiser.launch(pod, running)
        except Exception as exc:  # a missing Secret or ConfigMap: the pod stays Pending
            log.warning("cannot start %s/%s: %s", meta["namespace"], meta["name"], exc)
            del self.running[running.key]
            materialiser.release(running)
            self._patch_status(node.api, running, {"containerStatuses": [{
                "name": running.container["name"], "ready": False, "restartCount": 0,
                "image": running.container.get("image", ""), "imageID": "",
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}}]})
            return
        running.ready = "readinessProbe" not in running.container
        self._report_running(running)

    def _report_running(self, running: PodProcess) -> None:
        stamp = now()
        ready = "True" if running.ready else "False"
        self._patch_status(self.nodes[running.node].api, running, {
            "phase": "Running",
            "podIP": running.address.ip, "podIPs": [{"ip": running.address.ip}],
            "hostIP": self.network.gateway, "hostIPs": [{"ip": self.network.gateway}],
            "startTime": running.started_at,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": stamp},
                {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp},
                {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
            ],
            "containerStatuses": [self._container_status(running, {"running": {"startedAt": running.started_at}})],
        })

    @staticmethod
    def _container_status(running: PodProcess, state: dict) -> dict:
        return {"name": running.container["name"], "ready": running.ready and "running" in state,
                "started": "running" in state, "restartCount": running.restart_count,
                "image": running.container.get("image", ""), "imageID": "",
                "containerID": f"kubetune://{running.uid[:8]}-{running.restart_count}",
                "state": state}

    def _patch_status(self, api: KubeHttp, running: PodProcess, status: dict) -> None:
        path = f"/api/v1/namespaces/{running.namespace}/pods/{running.name}/status"
        body = {"metadata": {"uid": running.uid}, "status": status}
        try:
            api.request("PATCH", path, body, content_type=STATUS_PATCH)
        except ApiError as exc:
            if exc.status not in (404, 409, 422):
                raise
            log.info("status of %s/%s not written: %s", running.namespace, running.name, exc)

    def _probe(self, running: PodProcess) -> None:
        probe = running.container.get("readinessProbe")
        if not probe or running.process is None or running.process.poll() is not None:
            return
        if time.monotonic() < running.next_probe:
            return
        running.next_probe = time.monotonic() + float(probe.get("periodSeconds", 10))
        get = probe.get("httpGet") or {}
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():  # a named container port
            port = next((p["containerPort"] for p in running.container.get("ports", [])
                         if p.get("name") == port), port)
        url = f"http://{running.address.ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as answer:
                ok = 200 <= answer.status < 400
        except (OSError, ValueError):  # refused, timed out, or a port name the pod lacks
            ok = False
        running.probe_failures = 0 if ok else running.probe_failures + 1
        ready = ok or (running.ready and running.probe_failures < int(probe.get("failureThreshold", 3)))
        if ready != running.ready:
            running.ready = ready
            self._report_running(running)

    def _terminate(self, running: PodProcess, grace: int | None = None) -> None:
        """SIGTERM now, SIGKILL to the whole process group once the grace period ends."""
        if running.kill_deadline is not None or running.process is None:
            return
        grace = running.grace_seconds if grace is None else grace
        running.kill_deadline = time.monotonic() + grace
        try:
            if grace > 0:
                running.process.send_signal(signal.SIGTERM)
            else:
                stop_child(running.process, grace=0.01)
        except ProcessLookupError:
            pass

    def _reap(self, running: PodProcess) -> None:
        process = running.process
        if running.kill_deadline is not None and time.monotonic() > running.kill_deadline:
            stop_child(process, grace=0.01)
        code = process.poll()
        if code is None:
            return
        stop_child(process, grace=0.01)  # leftovers of the container die with it
        exit_code = code if code >= 0 else 128 - code
        node = self.nodes[running.node]
        deleting = running.kill_deadline is not None
        restart = not deleting and (running.restart_policy == "Always" or
                                    (running.restart_policy == "OnFailure" and exit_code != 0))
        if restart and not node.gone:
            # CrashLoopBackOff as the kubelet does it: 10 s, doubling, at most 5 min.
            if running.restart_at is None:
                running.restart_at = time.monotonic() + min(300, 10 * 2 ** running.restart_count)
                log.info("%s/%s exited %d: restart in %.0f s", running.namespace, running.name,
                         exit_code, running.restart_at - time.monotonic())
            if time.monotonic() < running.restart_at:
                return
            running.restart_at = None
            running.restart_count += 1
            self._relaunch(node, running)
            self._report_running(running)
            return
        del self.running[running.key]
        self._materialiser(running.node).release(running)
        log.info("pod %s/%s exited with %d", running.namespace, running.name, exit_code)
        self.history.append({"namespace": running.namespace, "name": running.name, "uid": running.uid,
                             "node": running.node, "exitCode": exit_code, "finishedAt": now()})
        if node.gone:
            return
        stamp = now()
        reason = "PodCompleted" if exit_code == 0 else "PodFailed"
        self._patch_status(node.api, running, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": kind, "status": "False", "reason": reason, "lastTransitionTime": stamp}
                           for kind in ("ContainersReady", "Ready")],
            "containerStatuses": [self._container_status(running, {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "message": running.termination_message(exit_code),
                "startedAt": running.started_at, "finishedAt": stamp,
                "containerID": f"kubetune://{running.uid[:8]}-{running.restart_count}"}})],
        })
        if deleting:
            delete_pod(node.api, running.namespace, running.name, running.uid)

    def _relaunch(self, node: AgentNode, running: PodProcess) -> None:
        pod = node.api.get_path(f"/api/v1/namespaces/{running.namespace}/pods/{running.name}")
        if pod is not None:
            self._materialiser(running.node).launch(pod, running)

    # logs ------------------------------------------------------------------------------
    def log_path(self, namespace: str, name: str) -> Path | None:
        """The newest container log of a pod that ran here (for /containerLogs)."""
        matches = sorted(self.workdir.glob(f"{namespace}_{name}_*/container.log"),
                         key=lambda p: p.stat().st_mtime)
        return matches[-1] if matches else None

    def logs(self, namespace: str, name: str) -> str:
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path else ""
