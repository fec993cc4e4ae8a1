"""`ServeService.reconcile` against the real API server and controller manager, through
the operator's real client (`kube.Kube`), with no node to run the pods: what it creates,
that the real Pod Security admission takes its pods, that a settled repeat costs no
write, and how spec changes reach the children (and which ones roll the Deployment).

The controller manager writes Deployment status between two reconciles, so "converges
without writes" is checked once that status has settled, as it would on a cluster."""

from __future__ import annotations

import json

import pytest
from kubetune.devenv.kubeapi import CONFIGMAPS, DEPLOYMENTS, MODELSERVES, SERVICES
from kubetune.operator.config import OperatorConfig
from kubetune.operator.kube import Kube
from kubetune.operator.modelserve.builders import RESTART_HASH_ANNOTATION
from kubetune.operator.modelserve.service import ServeService
from modelserve_support import PDBS, replicasets, server_pods, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def env(kube_cluster, kube_namespace, kubeconfig):
    kube = Kube()
    return kube_cluster.api, kube_namespace, kube, ServeService(kube, OperatorConfig())


def serve_body(namespace: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "s3://models/base"},
            "adapters": [
                {"name": "ready-made", "uri": "s3://adapters/ready-made"},
                {"name": "tuned", "fineTuneJobRef": {"name": "job-a"}},
            ],
            "resources": {"gpusPerWorker": 0, "nodeSelector": {"pool": "serve"}},
        },
    }


def reconcile(api, namespace, service) -> dict:
    return service.reconcile(api.get(MODELSERVES, "chat", namespace))


def settled(api, namespace: str, replicas: int):
    """The Deployment as its controller left it: latest generation observed, `replicas`
    pods created (they stay Pending: no node matches `pool: serve`)."""
    def check():
        deployment = api.get(DEPLOYMENTS, "chat-serve", namespace)
        status = deployment.get("status") or {}
        done = (status.get("observedGeneration") == deployment["metadata"]["generation"]
                and status.get("replicas", 0) == replicas
                and status.get("updatedReplicas", 0) == replicas
                and len(server_pods(api, namespace, "chat")) == replicas)
        return deployment if done else None

    return wait_for(check, f"the Deployment settled at {replicas} replicas", on_timeout=lambda: (
        json.dumps((api.get(DEPLOYMENTS, "chat-serve", namespace) or {}).get("status"))))


def configmap_adapters(api, namespace: str) -> list[str]:
    configmap = api.get(CONFIGMAPS, "chat-serve-config", namespace)
    return [a["name"] for a in json.loads(configmap["data"]["config.json"])["adapters"]]


def test_reconcile_creates_children_then_converges_without_writes(env):
    api, namespace, kube, service = env
    api.create(MODELSERVES, serve_body(namespace), namespace)
    status = reconcile(api, namespace, service)
    assert api.get(SERVICES, "chat-serve", namespace)["spec"]["clusterIP"]
    deployment = api.get(DEPLOYMENTS, "chat-serve", namespace)
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "ModelServe"
    assert configmap_adapters(api, namespace) == ["ready-made"]
    assert api.get(PDBS, "chat-serve", namespace) is None
    stored = api.get(MODELSERVES, "chat", namespace)["status"]
    assert stored == status
    assert stored["phase"] == "Progressing"
    assert stored["observedGeneration"] == 1
    assert {a["name"]: a["state"] for a in stored["adapters"]} == {
        "ready-made": "Loading", "tuned": "Pending"}
    assert "job-a: not found" in stored["adapters"][1]["message"]

    # The ReplicaSet controller could create the pod: restricted Pod Security admits it.
    settled(api, namespace, replicas=1)
    (pod,) = server_pods(api, namespace, "chat")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    status = reconcile(api, namespace, service)
    assert (status["phase"], status["message"]) == ("Progressing", "0/1 replicas ready")

    before = dict(kube.requests)
    reconcile(api, namespace, service)
    writes = {verb: kube.requests[verb] - before.get(verb, 0)
              for verb in ("POST", "PATCH", "DELETE")}
    assert writes == {"POST": 0, "PATCH": 0, "DELETE": 0}


def test_spec_changes_reach_children_pdb_follows_replicas(env):
    api, namespace, _, service = env
    api.create(MODELSERVES, serve_body(namespace), namespace)
    reconcile(api, namespace, service)
    first = settled(api, namespace, replicas=1)

    # Replicas and adapters: scaled in place, the pod template untouched (no rollout).
    api.patch(MODELSERVES, "chat", {"spec": {"replicas": 3, "adapters": [
        {"name": "ready-made", "uri": "s3://adapters/ready-made"},
        {"name": "other", "uri": "s3://adapters/other"}]}}, namespace)
    status = reconcile(api, namespace, service)
    assert status["observedGeneration"] == api.get(MODELSERVES, "chat", namespace)[
        "metadata"]["generation"] == 2
    scaled = api.get(DEPLOYMENTS, "chat-serve", namespace)
    assert scaled["spec"]["replicas"] == 3
    assert scaled["spec"]["template"] == first["spec"]["template"]
    assert configmap_adapters(api, namespace) == ["ready-made", "other"]
    assert api.get(PDBS, "chat-serve", namespace)["spec"]["maxUnavailable"] == 1
    settled(api, namespace, replicas=3)
    assert len(replicasets(api, namespace, "chat")) == 1

    # A new base model rolls; the dropped selector label leaves the live template.
    api.patch(MODELSERVES, "chat", {"spec": {
        "replicas": 1, "baseModel": {"uri": "s3://models/base-v2"},
        "resources": {"gpusPerWorker": 0, "nodeSelector": None}}}, namespace)
    reconcile(api, namespace, service)
    rolled = api.get(DEPLOYMENTS, "chat-serve", namespace)
    annotations = rolled["spec"]["template"]["metadata"]["annotations"]
    assert annotations[RESTART_HASH_ANNOTATION] != first["spec"]["template"]["metadata"][
        "annotations"][RESTART_HASH_ANNOTATION]
    assert rolled["spec"]["template"]["spec"]["nodeSelector"] == {
        "karpenter.sh/capacity-type": "on-demand"}
    assert api.get(PDBS, "chat-serve", namespace) is None
    wait_for(lambda: len(replicasets(api, namespace, "chat")) == 2,
             "a second ReplicaSet for the new template")


def test_deleting_the_serve_lets_the_garbage_collector_remove_every_child(env):
    """The owner references are what a real cluster's garbage collector follows: with a
    wrong apiVersion, kind or uid the children would stay (or go at once)."""
    api, namespace, _, service = env
    body = serve_body(namespace)
    body["spec"]["replicas"] = 2
    api.create(MODELSERVES, body, namespace)
    reconcile(api, namespace, service)
    settled(api, namespace, replicas=2)
    children = [(CONFIGMAPS, "chat-serve-config"), (SERVICES, "chat-serve"),
                (DEPLOYMENTS, "chat-serve"), (PDBS, "chat-serve")]
    assert all(api.get(kind, name, namespace) for kind, name in children)

    api.delete(MODELSERVES, "chat", namespace)
    wait_for(lambda: not any(api.get(kind, name, namespace) for kind, name in children)
             and not replicasets(api, namespace, "chat"),
             "the children garbage-collected", timeout=60,
             on_timeout=lambda: [name for kind, name in children if api.get(kind, name, namespace)])
