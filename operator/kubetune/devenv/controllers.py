"""A minimal Deployment controller for the embedded environment (the emulated API server
runs no controllers, so without this nothing turns a Deployment into Pods).

It talks to the API server over HTTP like any controller, in a thread, and does what a
Deployment + ReplicaSet pair does, simplified:
- keeps `spec.replicas` Pods per Deployment, built from its pod template, named
  `<deployment>-<template hash>-<n>`, labelled `pod-template-hash`, owned by the
  Deployment (so deleting it garbage-collects them);
- a changed template (new hash) is a rollout: pods of the new hash are created, and the
  old ones are deleted only once every new one is ready (maxUnavailable 0 in spirit;
  maxSurge is not honoured: all new pods start at once);
- a failed or finished pod is replaced (a Deployment's pods restart forever);
- writes status: replicas, readyReplicas, availableReplicas, updatedReplicas,
  observedGeneration, only when changed.

Readiness: the test kubelet marks a pod Ready as soon as its process starts and runs no
probes, so this controller runs the container's httpGet readinessProbe itself (pod IP,
named or numbered port) and writes the pod's Ready/ContainersReady conditions from the
result — what the kubelet's prober would do. Not covered: maxSurge/maxUnavailable
arithmetic, ReplicaSet objects, revision history, pause, progress deadlines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone

from .kubeapi import PODS, ApiError, KubeHttp, Resource

log = logging.getLogger("kubetune.devenv.controllers")
DEPLOYMENTS_ALL = "/apis/apps/v1/deployments"
HASH_LABEL = "pod-template-hash"
PROBE_TIMEOUT = 2.0


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict) -> str:
    """Stable hash of a pod template: same template, same pod names after a restart."""
    blob = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def pod_name(deployment: str, digest: str, index: int) -> str:
    return f"{deployment}-{digest}-{index}"


def _condition(pod: dict, kind: str) -> dict | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def is_ready(pod: dict) -> bool:
    condition = _condition(pod, "Ready")
    return bool(condition) and condition.get("status") == "True" and not pod["metadata"].get(
        "deletionTimestamp")


def _probe_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return item.get("containerPort")
    return int(port) if str(port).isdigit() else None


def http_probe(pod: dict, probe: dict | None) -> bool:
    """Run an httpGet probe against the pod IP; no probe means ready once running."""
    if not probe or "httpGet" not in probe:
        return True
    ip = (pod.get("status") or {}).get("podIP")
    container = pod["spec"]["containers"][0]
    port = _probe_port(container, probe["httpGet"].get("port"))
    if not ip or not port:
        return False
    url = f"http://{ip}:{port}{probe['httpGet'].get('path', '/')}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as answer:
            return 200 <= answer.status < 400
    except (OSError, urllib.error.URLError):
        return False


class DeploymentController:
    """`with DeploymentController(KubeHttp(url)):` keeps Deployments' pods in a thread."""

    def __init__(self, api: KubeHttp, poll_seconds: float = 0.3):
        self.api = api
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DeploymentController:
        self._thread = threading.Thread(target=self._loop, name="deployment-controller",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> DeploymentController:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # keep the controller alive through API hiccups; log them
                log.exception("deployment sync failed")
            self._stop.wait(self.poll_seconds)

    # one pass ----------------------------------------------------------------------
    def sync_once(self) -> None:
        deployments = self.api.request("GET", DEPLOYMENTS_ALL).get("items", [])
        pods = self.api.request("GET", "/api/v1/pods").get("items", [])
        for deployment in deployments:
            if deployment["metadata"].get("deletionTimestamp"):
                continue
            uid = deployment["metadata"]["uid"]
            owned = [p for p in pods if any(
                ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])]
            self._sync(deployment, owned)

    def _sync(self, deployment: dict, owned: list[dict]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, name = meta["namespace"], meta["name"]
        template = spec["template"]
        digest = template_hash(template)
        want = int(spec.get("replicas", 1))
        owned = [self._replace_if_finished(pod) for pod in owned]
        owned = [pod for pod in owned if pod is not None]
        for pod in owned:
            self._probe(pod, template)
        current = {p["metadata"]["name"]: p for p in owned
                   if p["metadata"].get("labels", {}).get(HASH_LABEL) == digest}
        old = [p for p in owned if p["metadata"]["name"] not in current]
        for index in range(want):
            pod_id = pod_name(name, digest, index)
            if pod_id not in current:
                self._create_pod(deployment, digest, pod_id)
        for pod_id, pod in list(current.items()):
            index = pod_id.rsplit("-", 1)[-1]
            if not index.isdigit() or int(index) >= want:
                self.api.delete(PODS, pod_id, namespace)
                del current[pod_id]
        wanted = [pod_name(name, digest, i) for i in range(want)]
        new_ready = sum(1 for pod_id in wanted if pod_id in current and is_ready(current[pod_id]))
        if new_ready >= want:
            for pod in old:
                if not pod["metadata"].get("deletionTimestamp"):
                    self.api.delete(PODS, pod["metadata"]["name"], namespace)
        live = [p for p in [*current.values(), *old]
                if not p["metadata"].get("deletionTimestamp")]
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(live),
            "updatedReplicas": len([p for p in current.values()
                                    if not p["metadata"].get("deletionTimestamp")]),
            "readyReplicas": sum(1 for p in live if is_ready(p)),
            "availableReplicas": sum(1 for p in live if is_ready(p)),
        }
        status["unavailableReplicas"] = max(0, want - status["availableReplicas"])
        previous = deployment.get("status") or {}
        if any(previous.get(key) != value for key, value in status.items()):
            self.api.patch(Resource("apps", "v1", "deployments"), name, {"status": status},
                           namespace, sub="status")

    def _replace_if_finished(self, pod: dict) -> dict | None:
        """A Deployment's pods run forever: a Failed or Succeeded one is deleted and
        recreated under the same name on the next pass."""
        if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
            self.api.delete(PODS, pod["metadata"]["name"], pod["metadata"]["namespace"])
            return None
        return pod

    def _create_pod(self, deployment: dict, digest: str, pod_id: str) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        labels = {**(template.get("metadata") or {}).get("labels", {}), HASH_LABEL: digest}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_id,
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                    "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": json.loads(json.dumps(template["spec"])),
        }
        try:
            self.api.create(PODS, body, meta["namespace"])
            log.info("created pod %s/%s", meta["namespace"], pod_id)
        except ApiError as exc:
            if exc.status != 409:
                raise

    def _probe(self, pod: dict, template: dict) -> None:
        """Write Ready/ContainersReady from the readiness probe, as the kubelet's prober."""
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            return
        containers = pod["spec"].get("containers") or [{}]
        ready = http_probe(pod, containers[0].get("readinessProbe"))
        if ready == is_ready(pod):
            return
        value = "True" if ready else "False"
        conditions = [c for c in status.get("conditions") or []
                      if c.get("type") not in ("Ready", "ContainersReady")]
        conditions += [{"type": kind, "status": value, "lastTransitionTime": now()}
                       for kind in ("ContainersReady", "Ready")]
        statuses = [{**c, "ready": ready} for c in status.get("containerStatuses") or []]
        patch = {"conditions": conditions}
        if statuses:
            patch["containerStatuses"] = statuses
        try:
            self.api.patch(PODS, pod["metadata"]["name"], {"status": patch},
                           pod["metadata"]["namespace"], sub="status")
            pod.setdefault("status", {})["conditions"] = conditions
        except ApiError as exc:
            if exc.status != 404:
                raise
