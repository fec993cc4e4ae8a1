"""What the node agent does for one pod: give it a network namespace, materialise the
volumes each container mounts, resolve each container's env and run it as a local process.

Every container of a pod shares the pod's network namespace (one IP; 127.0.0.1 reaches
its neighbours) and gets a mount namespace of its own with its own volumeMounts bound at
their paths (`podexec`). An emptyDir is one folder of the pod's, so every container that
mounts it sees the same files. Images map to local virtualenvs (`podimages`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from .kubeapi import ApiError, KubeHttp
from .podcontainers import INIT, REGULAR, SIDECAR, ContainerRun, PodProcess, now
from .podimages import ImageEnvironments
from .podnet import PodNetwork
from .processes import start_child

__all__ = ["PodMaterialiser", "PodProcess", "delete_pod", "expand_env_refs", "now"]
log = logging.getLogger("kubetune.devenv.podruntime")
TERMINATION_LOG = "/dev/termination-log"


def expand_env_refs(value: str, env: dict[str, str]) -> str:
    """Kubernetes expands $(NAME) in command and args from the container's env; $$ escapes."""

    def replace(match: re.Match) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, value)


class PodMaterialiser:
    """Turns a Pod object into a runnable PodProcess (volumes, env, network)."""

    def __init__(self, api: KubeHttp, network: PodNetwork, workdir: Path, extra_env: dict[str, str],
                 apiserver: tuple[str, int], images: ImageEnvironments | None = None):
        self.api = api
        self.network = network
        self.workdir = workdir
        self.extra_env = extra_env
        self.apiserver = apiserver
        self.images = images or ImageEnvironments()

    def prepare(self, pod: dict, node: str, hosts: str) -> PodProcess:
        """The pod's folder and network namespace (its sandbox), and a ContainerRun for
        each init container, sidecar and regular container; nothing runs yet."""
        meta, spec = pod["metadata"], pod["spec"]
        folder = self.workdir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        for part in ("logs", "termination", "launch"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        policy = spec.get("restartPolicy", "Always")
        init = [ContainerRun(c, SIDECAR if c.get("restartPolicy") == "Always" else INIT, folder, policy)
                for c in spec.get("initContainers") or []]
        regular = [ContainerRun(c, REGULAR, folder, policy) for c in spec["containers"]]
        # Which container `kubectl logs` without -c means, even after the pod is gone.
        (folder / "containers.json").write_text(json.dumps(
            {"init": [r.name for r in init], "containers": [r.name for r in regular]}))
        address = self.network.attach(meta["name"][:63], hosts)
        self.network.write_resolv(address, meta["namespace"])
        return PodProcess(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], node=node,
            folder=folder, address=address, restart_policy=policy,
            grace_seconds=int(spec.get("terminationGracePeriodSeconds", 30)),
            body=pod, init=init, containers=regular, started_at=now(),
        )

    def launch(self, pod: dict, running: PodProcess, run: ContainerRun) -> None:
        """Write the container's volumes and start (or restart) it."""
        container = run.spec
        mounts, config_volumes = self._volumes(pod, running, container)
        running.config_volumes.update(config_volumes)
        run.termination_log.write_text("")
        mounts.append({"source": str(run.termination_log),
                       "target": container.get("terminationMessagePath", TERMINATION_LOG)})
        image = self.images.for_image(container.get("image", ""))
        env = self._environment(pod, running, container, image.path_variable())
        argv = image.executable([expand_env_refs(a, env) for a in
                                 (container.get("command") or []) + (container.get("args") or [])],
                                env.get("PATH", ""))
        launch = {"mounts": mounts, "env": env, "argv": argv,
                  "workingDir": container.get("workingDir") or "/", "imagePaths": list(image.paths),
                  "hostname": running.address.hostname}
        run.launch_file.write_text(json.dumps(launch, indent=1))
        run.process = start_child(
            ["ip", "netns", "exec", running.address.netns, sys.executable, "-m",
             "kubetune.devenv.podexec", str(run.launch_file)],
            run.log_file, env=env, cwd=running.folder)
        run.started_at = now()
        log.info("started %s/%s container %s on %s at %s as pid %d", running.namespace, running.name,
                 run.name, running.node, running.address.ip, run.process.pid)

    def release(self, running: PodProcess) -> None:
        self.network.detach(running.address)

    # volumes ---------------------------------------------------------------------------
    def _volumes(self, pod: dict, running: PodProcess, container: dict) -> tuple[list[dict], dict[str, Path]]:
        """The container's mounts; a volume is one folder of the pod's, whoever mounts it."""
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: list[dict] = []
        config_volumes: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = running.folder / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                self._write_object(local, "configmaps", volume["configMap"]["name"], namespace, False)
                config_volumes[volume["configMap"]["name"]] = local
            elif "secret" in volume:
                self._write_object(local, "secrets", volume["secret"]["secretName"], namespace, True)
            elif "projected" in volume:
                self._write_projected(local, volume["projected"], pod)
            source = local / mount["subPath"] if mount.get("subPath") else local
            if "emptyDir" in volume:
                source.mkdir(parents=True, exist_ok=True)
            mounts.append({"source": str(source), "target": mount["mountPath"],
                           "readOnly": bool(mount.get("readOnly"))})
        return mounts, config_volumes

    def _write_object(self, target: Path, plural: str, name: str, namespace: str, b64: bool,
                      items: list[dict] | None = None) -> None:
        obj = self.api.get_path(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if obj is None:
            raise RuntimeError(f"{plural}/{name} not found in {namespace}")
        data = obj.get("data") or {}
        wanted = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        for key, path in wanted.items():
            value = data[key]
            _atomic_write(target / path, base64.b64decode(value) if b64 else value.encode())

    def _write_projected(self, target: Path, projected: dict, pod: dict) -> None:
        """ServiceAccount token (TokenRequest bound to the pod), ConfigMaps, downward API."""
        meta = pod["metadata"]
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                account = pod["spec"].get("serviceAccountName", "default")
                answer = self.api.request(
                    "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                     "spec": {"audiences": [token["audience"]] if token.get("audience") else None,
                              "expirationSeconds": token.get("expirationSeconds", 3607),
                              "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                                 "name": meta["name"], "uid": meta["uid"]}}})
                _atomic_write(target / token["path"], answer["status"]["token"].encode())
            elif "configMap" in source:
                self._write_object(target, "configmaps", source["configMap"]["name"],
                                   meta["namespace"], False, source["configMap"].get("items"))
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items", []):
                    value = self._field(pod, item["fieldRef"]["fieldPath"], "")
                    _atomic_write(target / item["path"], value.encode())

    def refresh_config_volumes(self, running: PodProcess, configmaps: dict[str, dict]) -> None:
        """Like the kubelet, propagate ConfigMap edits into a running pod's volume."""
        for name, folder in running.config_volumes.items():
            data = (configmaps.get(name) or {}).get("data") or {}
            for key, value in data.items():
                target = folder / key
                if not target.exists() or target.read_text() != value:
                    _atomic_write(target, value.encode())

    # environment -----------------------------------------------------------------------
    @staticmethod
    def _field(pod: dict, path: str, pod_ip: str) -> str:
        values = {
            "metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": pod_ip,
        }
        if path.startswith("metadata.labels['"):
            return (pod["metadata"].get("labels") or {}).get(path[len("metadata.labels['"):-2], "")
        return values.get(path, "")

    def _environment(self, pod: dict, running: PodProcess, container: dict, path: str) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        host, port = self.apiserver
        env = {
            "PATH": path,
            "HOME": "/tmp",
            "HOSTNAME": running.name,
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
            # The kubelet's service links for the `kubernetes` Service; with no kube-proxy
            # they name the API server's own address rather than its ClusterIP.
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
            **self.extra_env,
        }
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand_env_refs(str(item["value"]), env)
                continue
            source = item.get("valueFrom", {})
            if "fieldRef" in source:
                env[item["name"]] = self._field(pod, source["fieldRef"]["fieldPath"], running.address.ip)
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                plural = "secrets" if secret else "configmaps"
                obj = self.api.get_path(f"/api/v1/namespaces/{namespace}/{plural}/{ref['name']}") or {}
                raw = (obj.get("data") or {}).get(ref["key"])
                if raw is None and not ref.get("optional"):
                    raise RuntimeError(f"{plural}/{ref['name']} has no key {ref['key']}")
                if raw is not None:
                    env[item["name"]] = base64.b64decode(raw).decode() if secret else raw
        return env


def _atomic_write(target: Path, data: bytes) -> None:
    """Write + rename, so a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    staging.write_bytes(data)
    staging.rename(target)


def delete_pod(api: KubeHttp, namespace: str, name: str, uid: str) -> None:
    """The kubelet's last word on a pod being deleted whose containers have stopped:
    remove it now, this uid only."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid}}
    try:
        api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
    except ApiError as exc:
        if exc.status not in (404, 409):
            raise


def wait_exit(process: subprocess.Popen, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        time.sleep(0.05)
    return process.poll()
