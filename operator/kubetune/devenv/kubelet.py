"""A test kubelet (plus a one-line scheduler): runs each pod's container as a local process.

With no cluster on this machine, this is what makes the path manifest -> process real:
the operator creates Pods in the emulated API server; this kubelet places them on
emulated nodes (nodeSelector and taints/tolerations are honoured, so a spot pod with no
spot node stays Pending), materialises their ConfigMap/Secret/emptyDir volumes in a
per-pod folder, resolves their env, runs the command with this machine's Python, and
reports phases, pod IPs, exit codes and termination messages back through the API.

It also injects what a spot cloud does to pods: a DisruptionTarget condition plus
SIGTERM, a node reclaimed (tainted, pods signalled, then node and pods deleted), and
a bare spot-interruption taint. Signals follow Kubernetes: SIGTERM to the container's
main process, SIGKILL to all its processes after the grace period.

Faithfulness limits (deliberate): one container per pod is run (the first); images are
ignored (the local virtualenv plays every image); absolute mount paths in the command,
args and env are rewritten to the pod's folder; resources are not accounted.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .kubeapi import CONFIGMAPS, NODES, PODS, SECRETS, ApiError, KubeHttp, Resource

log = logging.getLogger("kubetune.devenv.kubelet")
TERMINATION_LOG = "/dev/termination-log"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    """A pod this kubelet started: its process, folder and what it mapped."""

    namespace: str
    name: str
    uid: str
    node: str
    process: subprocess.Popen
    folder: Path
    started_at: str
    grace_seconds: int
    termination_log: Path
    log_file: Path
    container: str
    kill_deadline: float | None = None
    disruption: dict | None = None
    config_volumes: dict[str, Path] = field(default_factory=dict)  # ConfigMap name -> folder


@dataclass
class NodeTemplate:
    """An emulated node: name, labels and taints."""

    name: str
    labels: dict = field(default_factory=dict)
    taints: list = field(default_factory=list)

    def body(self) -> dict:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", **self.labels}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": list(self.taints)},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "allocatable": {"cpu": "2", "memory": "24Gi", "nvidia.com/gpu": "8"},
            },
        }


def expand_env_refs(value: str, env: dict[str, str]) -> str:
    """Kubernetes expands $(NAME) in command and args from the container's env; $$ escapes."""

    def replace(match: re.Match) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, value)


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' toleration matching, for NoSchedule/NoExecute taints."""
    for tol in tolerations or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists" and (not tol.get("key") or tol["key"] == taint["key"]):
            return True
        if tol.get("key") == taint["key"] and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def fits(pod: dict, node: dict) -> bool:
    """nodeSelector labels present and every NoSchedule/NoExecute taint tolerated."""
    labels = node["metadata"].get("labels", {})
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    hard = [t for t in (node.get("spec", {}).get("taints") or []) if t.get("effect") in ("NoSchedule", "NoExecute")]
    return all(tolerates(pod["spec"].get("tolerations"), t) for t in hard)


class TestKubelet:
    """Schedules and runs pods from the API server on emulated nodes, in a thread."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        api: KubeHttp,
        workdir: Path,
        nodes: list[NodeTemplate] | None = None,
        extra_env: dict[str, str] | None = None,
        poll_seconds: float = 0.25,
    ):
        self.api = api
        self.workdir = Path(workdir)
        self.nodes = nodes if nodes is not None else [NodeTemplate("node-1")]
        self.extra_env = dict(extra_env or {})
        self.poll_seconds = poll_seconds
        self.running: dict[tuple[str, str], RunningPod] = {}
        self.unschedulable_reported: set[str] = set()
        self.history: list[dict] = []  # terminated pods: {namespace, name, node, exitCode, ...}
        self._ips = itertools.cycle(range(10, 250))
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> TestKubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.add_node(node)
        self._thread = threading.Thread(target=self._loop, name="test-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop and kill every process it started (none is left behind)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            for pod in list(self.running.values()):
                self._signal(pod, signal.SIGKILL, group=True)
                try:
                    pod.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.warning("pod %s/%s did not die", pod.namespace, pod.name)
                shutil.rmtree(self.pod_tmp(pod.uid), ignore_errors=True)
            self.running.clear()

    def __enter__(self) -> TestKubelet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_node(self, node: NodeTemplate) -> None:
        try:
            self.api.create(NODES, node.body())
        except ApiError as exc:
            if exc.status != 409:
                raise

    # the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # keep the kubelet alive through API hiccups; log them
                log.exception("kubelet sync failed")
            self._stop.wait(self.poll_seconds)

    def sync_once(self) -> None:
        pods = self.api.request("GET", "/api/v1/pods").get("items", [])
        nodes = {n["metadata"]["name"]: n for n in self.api.list(NODES)}
        seen = set()
        with self._lock:
            for pod in pods:
                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                seen.add(key)
                running = self.running.get(key)
                if running and running.uid != pod["metadata"].get("uid"):
                    self._terminate(running, grace=0)  # same name, new pod: old one is gone
                    running = None
                if running is None:
                    if self._startable(pod):
                        self._schedule_and_start(pod, nodes)
                    continue
                if pod["metadata"].get("deletionTimestamp"):
                    self._terminate(running)
                elif running.node not in nodes:
                    self._terminate(running, grace=0)
            if any(p.config_volumes for p in self.running.values()):
                configmaps = {
                    (c["metadata"]["namespace"], c["metadata"]["name"]): c
                    for c in self.api.request("GET", "/api/v1/configmaps").get("items", [])
                }
                for running in self.running.values():
                    self._refresh_config_volumes(running, configmaps)
            for key, running in list(self.running.items()):
                if key not in seen:
                    self._terminate(running)
                self._reap(running, pod_exists=key in seen)

    def _startable(self, pod: dict) -> bool:
        phase = (pod.get("status") or {}).get("phase")
        return phase in (None, "Pending") and not pod["metadata"].get("deletionTimestamp")

    def _schedule_and_start(self, pod: dict, nodes: dict[str, dict]) -> None:
        meta = pod["metadata"]
        node_name = pod["spec"].get("nodeName")
        if node_name and node_name not in nodes:
            return
        if not node_name:
            candidates = sorted(n for n, node in nodes.items() if fits(pod, node))
            if not candidates:
                if meta["uid"] not in self.unschedulable_reported:
                    self.unschedulable_reported.add(meta["uid"])
                    self._patch_status(pod, {
                        "phase": "Pending",
                        "conditions": [{
                            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/%d nodes are available: no node matches the pod's "
                            "node selector and tolerations." % len(nodes),
                            "lastTransitionTime": now(),
                        }],
                    })
                return
            node_name = candidates[0]
            self.api.patch(PODS, meta["name"], {"spec": {"nodeName": node_name}}, meta["namespace"])
        self._start(pod, node_name)

    # running a pod ---------------------------------------------------------------------
    def _start(self, pod: dict, node_name: str) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        folder = self.workdir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        container = spec["containers"][0]
        mounts, config_volumes = self._materialise_volumes(pod, container, folder)
        termination_log = folder / "termination-log"
        mounts[container.get("terminationMessagePath", TERMINATION_LOG)] = termination_log
        pod_ip = f"127.0.0.{next(self._ips)}"
        env = self._environment(pod, container, pod_ip, node_name, mounts, folder)
        argv = [
            self._own_address(self._rewrite(expand_env_refs(a, env), mounts), pod_ip)
            for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        argv = self._local_executable(argv)
        log_file = folder / "container.log"
        with open(log_file, "ab") as out:
            process = subprocess.Popen(
                argv, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        started = now()
        running = RunningPod(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], node=node_name,
            process=process, folder=folder, started_at=started,
            grace_seconds=int(spec.get("terminationGracePeriodSeconds", 30)),
            termination_log=termination_log, log_file=log_file, container=container["name"],
            config_volumes=config_volumes,
        )
        self.running[(meta["namespace"], meta["name"])] = running
        log.info("started %s/%s on %s as pid %d", meta["namespace"], meta["name"], node_name, process.pid)
        self._patch_status(pod, {
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "hostIP": "127.0.0.1",
            "startTime": started,
            "conditions": [
                {"type": c, "status": "True", "lastTransitionTime": started}
                for c in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [{
                "name": container["name"], "ready": True, "started": True, "restartCount": 0,
                "image": container.get("image", ""), "state": {"running": {"startedAt": started}},
            }],
        })

    def _materialise_volumes(self, pod: dict, container: dict, folder: Path):
        """Write ConfigMap/Secret volumes and create emptyDirs. Returns mountPath -> local
        folder, and ConfigMap name -> folder for the ones to keep in sync."""
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        config_volumes: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = folder / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                self._write_items(CONFIGMAPS, volume["configMap"]["name"], namespace, local, False)
                config_volumes[volume["configMap"]["name"]] = local
            elif "secret" in volume:
                self._write_items(SECRETS, volume["secret"]["secretName"], namespace, local, True)
            mounts[mount["mountPath"].rstrip("/")] = local
        return mounts, config_volumes

    def _refresh_config_volumes(self, pod: RunningPod, configmaps: dict[tuple[str, str], dict]) -> None:
        """Like the kubelet, propagate ConfigMap edits into running pods' volumes; each file
        is replaced atomically (write + rename) so a reader never sees half a file."""
        for name, folder in pod.config_volumes.items():
            data = (configmaps.get((pod.namespace, name)) or {}).get("data") or {}
            for key, value in data.items():
                target = folder / key
                if not target.exists() or target.read_text() != value:
                    staging = folder / f".{key}.tmp"
                    staging.write_text(value)
                    staging.rename(target)

    def _write_items(self, res: Resource, name: str, namespace: str, target: Path, b64: bool) -> None:
        obj = self.api.get(res, name, namespace)
        if obj is None:
            raise RuntimeError(f"{res.plural}/{name} not found in {namespace}")
        for key, value in (obj.get("data") or {}).items():
            (target / key).write_bytes(base64.b64decode(value) if b64 else value.encode())

    def _environment(self, pod, container, pod_ip, node_name, mounts, folder) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        short_tmp = self.pod_tmp(pod["metadata"]["uid"])
        short_tmp.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(folder),
            "TMPDIR": str(short_tmp),
            # Ray puts AF_UNIX sockets under its temp dir; their paths must stay < 108 bytes.
            "RAY_TMPDIR": str(short_tmp),
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
            **self.extra_env,
        }
        field_values = {
            "metadata.name": pod["metadata"]["name"], "metadata.namespace": namespace,
            "metadata.uid": pod["metadata"]["uid"], "status.podIP": pod_ip, "spec.nodeName": node_name,
        }
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._rewrite(str(item["value"]), mounts)
                continue
            source = item.get("valueFrom", {})
            if "fieldRef" in source:
                env[item["name"]] = field_values.get(source["fieldRef"]["fieldPath"], "")
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.api.get(SECRETS, ref["name"], namespace) or {}
                raw = (secret.get("data") or {}).get(ref["key"])
                if raw is None and not ref.get("optional"):
                    raise RuntimeError(f"secret {ref['name']} has no key {ref['key']}")
                if raw is not None:
                    env[item["name"]] = base64.b64decode(raw).decode()
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                cm = self.api.get(CONFIGMAPS, ref["name"], namespace) or {}
                env[item["name"]] = (cm.get("data") or {}).get(ref["key"], "")
        return env

    @staticmethod
    def pod_tmp(uid: str) -> Path:
        """A short per-pod temp dir (the pod folder's path is too long for Unix sockets)."""
        return Path(tempfile.gettempdir()) / f"ktp-{uid[:12]}"

    @staticmethod
    def _own_address(value: str, pod_ip: str) -> str:
        """Pods here share the host's network; each gets its own loopback address, so a
        server told to bind every interface binds that address instead (no port clashes)."""
        return pod_ip if value == "0.0.0.0" else value.replace("0.0.0.0:", f"{pod_ip}:")

    @staticmethod
    def _rewrite(value: str, mounts: dict[str, Path]) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path):]
        return value

    @staticmethod
    def _local_executable(argv: list[str]) -> list[str]:
        if not argv:
            raise RuntimeError("container has no command")
        name = Path(argv[0]).name
        if name in ("python", "python3"):
            return [sys.executable, *argv[1:]]
        local = Path(sys.executable).parent / name
        return [str(local) if local.exists() else (shutil.which(name) or argv[0]), *argv[1:]]

    # ending a pod ----------------------------------------------------------------------
    def _signal(self, pod: RunningPod, sig: int, group: bool = False) -> None:
        try:
            if group:
                os.killpg(pod.process.pid, sig)
            else:
                pod.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def _terminate(self, pod: RunningPod, grace: int | None = None) -> None:
        """SIGTERM now, SIGKILL to the whole process group once the grace period ends."""
        if pod.kill_deadline is not None:
            return
        grace = pod.grace_seconds if grace is None else grace
        pod.kill_deadline = time.monotonic() + grace
        self._signal(pod, signal.SIGTERM if grace > 0 else signal.SIGKILL, group=grace == 0)

    def _reap(self, pod: RunningPod, pod_exists: bool) -> None:
        key = (pod.namespace, pod.name)
        if pod.kill_deadline is not None and time.monotonic() > pod.kill_deadline:
            self._signal(pod, signal.SIGKILL, group=True)
        code = pod.process.poll()
        if code is None:
            return
        self._signal(pod, signal.SIGKILL, group=True)  # leftovers of the container die with it
        del self.running[key]
        shutil.rmtree(self.pod_tmp(pod.uid), ignore_errors=True)
        message = pod.termination_log.read_text()[-4096:] if pod.termination_log.exists() else ""
        exit_code = code if code >= 0 else 128 - code
        record = {"namespace": pod.namespace, "name": pod.name, "node": pod.node,
                  "exitCode": exit_code, "message": message, "finishedAt": now()}
        self.history.append(record)
        log.info("pod %s/%s exited with %d", pod.namespace, pod.name, exit_code)
        if not pod_exists:
            return
        finished = now()
        conditions = [
            {"type": "Ready", "status": "False", "reason": "PodCompleted" if code == 0 else "PodFailed",
             "lastTransitionTime": finished},
        ]
        if pod.disruption:
            conditions.append(pod.disruption)
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": conditions,
            "containerStatuses": [{
                "name": pod.container, "ready": False, "started": False, "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": exit_code, "reason": "Completed" if code == 0 else "Error",
                    "message": message, "startedAt": pod.started_at, "finishedAt": finished,
                }},
            }],
        }
        try:
            self._patch_status({"metadata": {"namespace": pod.namespace, "name": pod.name}}, status)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def _patch_status(self, pod: dict, status: dict) -> None:
        meta = pod["metadata"]
        self.api.patch(PODS, meta["name"], {"status": status}, meta["namespace"], sub="status")

    # what a spot cloud does ------------------------------------------------------------
    def disrupt_pod(self, namespace: str, name: str, reason: str = "TerminationByKubelet") -> None:
        """DisruptionTarget condition + SIGTERM, as the kubelet does on node shutdown or eviction."""
        with self._lock:
            pod = self.running[(namespace, name)]
            pod.disruption = {
                "type": "DisruptionTarget", "status": "True", "reason": reason,
                "message": "Pod was terminated in response to imminent node shutdown.",
                "lastTransitionTime": now(),
            }
            self._patch_status({"metadata": {"namespace": namespace, "name": name}},
                               {"conditions": [pod.disruption]})
            self._terminate(pod)

    def taint_node(self, node_name: str, taint: dict) -> None:
        """Add a taint (e.g. a spot-interruption notice) to a node."""
        node = self.api.get(NODES, node_name)
        taints = [*(node.get("spec", {}).get("taints") or []), {**taint, "timeAdded": now()}]
        self.api.patch(NODES, node_name, {"spec": {"taints": taints}})

    def reclaim_node(self, node_name: str, taint: dict | None = None, replacement: NodeTemplate | None = None) -> None:
        """A spot node reclaimed: optional interruption taint, SIGTERM to its pods, then the
        node and its pods deleted once they stop (or the grace period ends)."""
        if taint:
            self.taint_node(node_name, taint)
        with self._lock:
            victims = [p for p in self.running.values() if p.node == node_name]
            for pod in victims:
                self._terminate(pod)
        deadline = time.monotonic() + max([p.grace_seconds for p in victims] + [0]) + 5
        while any(p.process.poll() is None for p in victims) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.api.delete(NODES, node_name)
        for pod in victims:  # pod GC: only the pod that ran there, never a successor of the same name
            current = self.api.get(PODS, pod.name, pod.namespace)
            if current and current["metadata"].get("uid") == pod.uid:
                self.api.delete(PODS, pod.name, pod.namespace)
        if replacement:
            self.add_node(replacement)

    def logs(self, namespace: str, name: str) -> str:
        """The container log of a running or finished pod started by this kubelet."""
        matches = sorted(self.workdir.glob(f"{namespace}_{name}_*/container.log"), key=os.path.getmtime)
        return matches[-1].read_text(errors="replace") if matches else ""
