"""`ServeService.reconcile` against the emulated API server over HTTP, through the
operator's real client (`kube.Kube`), with no pods running: what it creates, that a
repeat costs no write, and how spec changes reach the children."""

from __future__ import annotations

import json

import pytest
from kubetune.devenv.apiserver import EmulatedApiServer
from kubetune.devenv.kubeapi import (
    CONFIGMAPS,
    DEPLOYMENTS,
    MODELSERVES,
    SERVICES,
    KubeHttp,
    Resource,
)
from kubetune.operator.config import OperatorConfig
from kubetune.operator.kube import Kube
from kubetune.operator.modelserve.builders import RESTART_HASH_ANNOTATION
from kubetune.operator.modelserve.service import ServeService

pytestmark = pytest.mark.integration
PDBS = Resource("policy", "v1", "poddisruptionbudgets")


@pytest.fixture
def env(crds, admission, tmp_path, monkeypatch):
    with EmulatedApiServer(crds=crds, admission=admission) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        kube = Kube()
        yield KubeHttp(api.url), kube, ServeService(kube, OperatorConfig())


def serve_body() -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
        "metadata": {"name": "chat", "namespace": "default"},
        "spec": {
            "baseModel": {"uri": "s3://models/base"},
            "adapters": [
                {"name": "ready-made", "uri": "s3://adapters/ready-made"},
                {"name": "tuned", "fineTuneJobRef": {"name": "job-a"}},
            ],
            "resources": {"gpusPerWorker": 0, "nodeSelector": {"pool": "serve"}},
        },
    }


def reconcile(http, service) -> dict:
    return service.reconcile(http.get(MODELSERVES, "chat", "default"))


def test_reconcile_creates_children_then_converges_without_writes(env):
    http, kube, service = env
    http.create(MODELSERVES, serve_body(), "default")
    status = reconcile(http, service)
    assert http.get(SERVICES, "chat-serve", "default") is not None
    deployment = http.get(DEPLOYMENTS, "chat-serve", "default")
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "ModelServe"
    config = json.loads(http.get(CONFIGMAPS, "chat-serve-config", "default")["data"]["config.json"])
    assert [a["name"] for a in config["adapters"]] == ["ready-made"]
    assert http.get(PDBS, "chat-serve", "default") is None
    stored = http.get(MODELSERVES, "chat", "default")["status"]
    assert stored == status
    assert stored["phase"] == "Progressing"
    assert {a["name"]: a["state"] for a in stored["adapters"]} == {
        "ready-made": "Loading", "tuned": "Pending"}
    assert "job-a: not found" in stored["adapters"][1]["message"]

    before = dict(kube.requests)
    reconcile(http, service)
    writes = {verb: kube.requests[verb] - before.get(verb, 0)
              for verb in ("POST", "PATCH", "DELETE")}
    assert writes == {"POST": 0, "PATCH": 0, "DELETE": 0}


def test_spec_changes_reach_children_pdb_follows_replicas(env):
    http, _, service = env
    http.create(MODELSERVES, serve_body(), "default")
    reconcile(http, service)
    first = http.get(DEPLOYMENTS, "chat-serve", "default")

    http.patch(MODELSERVES, "chat", {"spec": {"replicas": 3, "adapters": [
        {"name": "ready-made", "uri": "s3://adapters/ready-made"},
        {"name": "other", "uri": "s3://adapters/other"}]}}, "default")
    reconcile(http, service)
    scaled = http.get(DEPLOYMENTS, "chat-serve", "default")
    assert scaled["spec"]["replicas"] == 3
    assert scaled["spec"]["template"] == first["spec"]["template"]
    config = json.loads(http.get(CONFIGMAPS, "chat-serve-config", "default")["data"]["config.json"])
    assert [a["name"] for a in config["adapters"]] == ["ready-made", "other"]
    assert http.get(PDBS, "chat-serve", "default")["spec"]["maxUnavailable"] == 1

    http.patch(MODELSERVES, "chat", {"spec": {
        "replicas": 1, "baseModel": {"uri": "s3://models/base-v2"},
        "resources": {"gpusPerWorker": 0, "nodeSelector": None}}}, "default")
    reconcile(http, service)
    rolled = http.get(DEPLOYMENTS, "chat-serve", "default")
    annotations = rolled["spec"]["template"]["metadata"]["annotations"]
    assert annotations[RESTART_HASH_ANNOTATION] != first["spec"]["template"]["metadata"][
        "annotations"][RESTART_HASH_ANNOTATION]
    # The dropped selector label is removed from the live template, not left behind.
    assert rolled["spec"]["template"]["spec"]["nodeSelector"] == {
        "karpenter.sh/capacity-type": "on-demand"}
    assert http.get(PDBS, "chat-serve", "default") is None
