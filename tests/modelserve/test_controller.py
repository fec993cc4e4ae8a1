"""The devenv Deployment controller against the emulated API server and the test kubelet,
with a tiny python http.server as the pod: replicas, readiness from the probe, rollout,
scale down, replacement of a dead pod."""

from __future__ import annotations

import pytest
from kubetune.devenv.controllers import HASH_LABEL, template_hash
from kubetune.devenv.kubeapi import DEPLOYMENTS, PODS
from kubetune.devenv.s3 import free_port
from modelserve_support import wait_for

pytestmark = pytest.mark.integration

# Serves its folder on the pod IP; /ready.txt exists (readiness passes) unless NOT_READY.
SERVER = """
import http.server, os, pathlib, functools
if not os.environ.get('NOT_READY'):
    pathlib.Path('ready.txt').write_text(os.environ['VERSION'])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory='.')
address = (os.environ['POD_IP'], int(os.environ['PORT']))
http.server.ThreadingHTTPServer(address, handler).serve_forever()
"""


def deployment(port: int, version: str, replicas: int = 2, ready: bool = True) -> dict:
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PORT", "value": str(port)},
        {"name": "VERSION", "value": version},
    ]
    if not ready:
        env.append({"name": "NOT_READY", "value": "1"})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web", "image": "python:3.11",
                        "command": ["python", "-c", SERVER],
                        "env": env,
                        "ports": [{"name": "http", "containerPort": port}],
                        "readinessProbe": {"httpGet": {"path": "/ready.txt", "port": "http"}},
                    }],
                },
            },
        },
    }


def pods(cluster) -> list[dict]:
    return [p for p in cluster.http.list(PODS, "default", "app=web")
            if not p["metadata"].get("deletionTimestamp")]


def status(cluster) -> dict:
    return cluster.http.get(DEPLOYMENTS, "web", "default").get("status") or {}


def ready_names(cluster) -> set[str]:
    return {p["metadata"]["name"] for p in pods(cluster) if any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (p.get("status") or {}).get("conditions", []))}


def test_replicas_readiness_rollout_and_scale_down(cluster):
    port = free_port()
    body = deployment(port, "v1")
    created = cluster.http.create(DEPLOYMENTS, body, "default")
    first_hash = template_hash(created["spec"]["template"])
    names_v1 = {f"web-{first_hash}-0", f"web-{first_hash}-1"}
    wait_for(lambda: ready_names(cluster) == names_v1, "two ready v1 pods")
    for pod in pods(cluster):
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("Deployment", created["metadata"]["uid"])
        assert pod["metadata"]["labels"][HASH_LABEL] == first_hash
    wait_for(lambda: status(cluster).get("readyReplicas") == 2, "readyReplicas 2")
    assert status(cluster)["updatedReplicas"] == 2
    assert status(cluster)["observedGeneration"] == 1

    # A template change rolls: new-hash pods come up, then the old ones go.
    changed = cluster.http.patch(DEPLOYMENTS, "web", {"spec": {"template": deployment(
        port, "v2")["spec"]["template"]}}, "default")
    second_hash = template_hash(changed["spec"]["template"])
    assert second_hash != first_hash
    names_v2 = {f"web-{second_hash}-0", f"web-{second_hash}-1"}
    wait_for(lambda: {p["metadata"]["name"] for p in pods(cluster)} == names_v2, "only v2 pods")
    wait_for(lambda: status(cluster) == {
        "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
        "availableReplicas": 2, "unavailableReplicas": 0}, "v2 status",
        on_timeout=lambda: status(cluster))
    assert not {p["name"] for p in cluster.kubelet.history} & names_v2

    # Scale down removes the highest index.
    cluster.http.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 1}}, "default")
    wait_for(lambda: {p["metadata"]["name"] for p in pods(cluster)} == {f"web-{second_hash}-0"},
             "one pod left")
    wait_for(lambda: status(cluster).get("replicas") == 1, "replicas 1")


def test_unready_new_pods_hold_the_old_ones(cluster):
    port = free_port()
    created = cluster.http.create(DEPLOYMENTS, deployment(port, "v1", replicas=1), "default")
    old = f"web-{template_hash(created['spec']['template'])}-0"
    wait_for(lambda: ready_names(cluster) == {old}, "the v1 pod ready")
    changed = cluster.http.patch(DEPLOYMENTS, "web", {"spec": {"template": deployment(
        port, "v2", ready=False)["spec"]["template"]}}, "default")
    new = f"web-{template_hash(changed['spec']['template'])}-0"
    wait_for(lambda: any(p["metadata"]["name"] == new
                         and (p.get("status") or {}).get("phase") == "Running"
                         for p in pods(cluster)), "the v2 pod running")
    # The probe fails on the new pod: it is written not ready, and the old pod stays.
    wait_for(lambda: status(cluster).get("observedGeneration") == 2, "generation 2 observed")
    wait_for(lambda: ready_names(cluster) == {old}, "only the old pod ready")
    assert {p["metadata"]["name"] for p in pods(cluster)} == {old, new}
    assert status(cluster)["readyReplicas"] == 1
    assert status(cluster)["updatedReplicas"] == 1
    assert status(cluster)["replicas"] == 2


def test_a_dead_pod_is_replaced(cluster):
    port = free_port()
    created = cluster.http.create(DEPLOYMENTS, deployment(port, "v1", replicas=1), "default")
    name = f"web-{template_hash(created['spec']['template'])}-0"
    wait_for(lambda: ready_names(cluster) == {name}, "the pod ready")
    first_uid = cluster.http.get(PODS, name, "default")["metadata"]["uid"]
    running = cluster.kubelet.running[("default", name)]
    running.process.kill()
    wait_for(lambda: (cluster.http.get(PODS, name, "default") or {}).get("metadata", {}).get(
        "uid") not in (None, first_uid), "a new pod under the same name")
    wait_for(lambda: ready_names(cluster) == {name}, "the replacement ready")
