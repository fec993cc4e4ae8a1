"""Smoke test of the real Kueue (v0.17.0, built from its Go module) on the real control
plane: its webhook gates plain-pod groups at admission, a group that fits is Admitted
and ungated, a group over quota keeps its gates and says why (Kueue's own message).

Why a smoke test first: kubetune's Kueue integration (issue 21) stands on exactly these
behaviours; if the manager, its CRDs or its TLS webhooks do not work here, nothing above
them can. Pods need not run: gating and admission are what is checked, so no node.
"""

from __future__ import annotations

import pytest
from polling import wait_for

from kubetune.devenv.kubeapi import PODS, Resource
from kubetune.devenv.kueue import OPT_IN, Kueue

pytestmark = pytest.mark.integration

GROUP = "kueue.x-k8s.io"
FLAVORS = Resource(GROUP, "v1beta2", "resourceflavors", namespaced=False)
CLUSTERQUEUES = Resource(GROUP, "v1beta2", "clusterqueues", namespaced=False)
LOCALQUEUES = Resource(GROUP, "v1beta2", "localqueues")
WORKLOADS = Resource(GROUP, "v1beta2", "workloads")
GATE = "kueue.x-k8s.io/admission"


@pytest.fixture(scope="module")
def kueue(kube_cluster, tmp_path_factory):
    with Kueue(kube_cluster.control_plane, tmp_path_factory.mktemp("kueue")) as running:
        yield running


@pytest.fixture
def queue_namespace(kube_cluster, kueue):
    name = kube_cluster.namespace("kueue-smoke-queued", labels={OPT_IN: "enabled"})
    yield name
    kube_cluster.delete_namespace(name, force_pods=True)


def _pod(name: str, group: str, queue: str) -> dict:
    resources = {"cpu": "1", "memory": "64Mi", "nvidia.com/gpu": "1"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue,
                                              "kueue.x-k8s.io/pod-group-name": group},
                     "annotations": {"kueue.x-k8s.io/pod-group-total-count": "2"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "busybox", "command": ["sleep", "60"],
            "resources": {"requests": resources, "limits": resources}}]},
    }


def _gates(api, namespace: str, name: str) -> list[str]:
    pod = api.get(PODS, name, namespace) or {}
    return [g["name"] for g in (pod.get("spec") or {}).get("schedulingGates") or []]


def _workload(api, namespace: str, group: str) -> dict | None:
    for workload in api.list(WORKLOADS, namespace):
        if workload["metadata"]["name"] == group or group in str(
                workload["metadata"].get("labels", {})):
            return workload
    return None


def _condition(workload: dict | None, kind: str) -> dict:
    for condition in ((workload or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return condition
    return {}


def test_pod_groups_are_gated_admitted_and_held_over_quota(kube_cluster, kueue, queue_namespace):
    api, ns = kube_cluster.api, queue_namespace
    for flavor, capacity in (("kt-spot", "spot"), ("kt-on-demand", "on-demand")):
        api.request("POST", FLAVORS.path(), {
            "apiVersion": f"{GROUP}/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": {"nodeLabels": {"karpenter.sh/capacity-type": capacity}}})
    quota = [{"name": "cpu", "nominalQuota": "4"}, {"name": "memory", "nominalQuota": "1Gi"},
             {"name": "nvidia.com/gpu", "nominalQuota": "2"}]
    none = [{"name": r["name"], "nominalQuota": "0"} for r in quota]
    api.request("POST", CLUSTERQUEUES.path(), {
        "apiVersion": f"{GROUP}/v1beta2", "kind": "ClusterQueue",
        "metadata": {"name": "kt-gpu"},
        "spec": {"namespaceSelector": {}, "resourceGroups": [{
            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
            "flavors": [{"name": "kt-spot", "resources": quota},
                        {"name": "kt-on-demand", "resources": none}]}]}})
    api.request("POST", LOCALQUEUES.path(ns), {
        "apiVersion": f"{GROUP}/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": "team", "namespace": ns}, "spec": {"clusterQueue": "kt-gpu"}})
    wait_for(lambda: _condition(api.get(CLUSTERQUEUES, "kt-gpu"), "Active").get("status")
             == "True", "the ClusterQueue Active", timeout=60, on_timeout=kueue.log_tail)

    fits = [api.create(PODS, _pod(f"fits-{i}", "fits", "team"), ns) for i in range(2)]
    for pod in fits:
        assert GATE in [g["name"] for g in pod["spec"].get("schedulingGates") or []], pod["spec"]
    admitted = wait_for(lambda: (w := _workload(api, ns, "fits")) and _condition(
        w, "Admitted").get("status") == "True" and w, "group `fits` Admitted", timeout=90,
        on_timeout=lambda: f"{_workload(api, ns, 'fits')}\n{kueue.log_tail()}")
    assert admitted["status"]["admission"]["clusterQueue"] == "kt-gpu"
    for i in range(2):
        wait_for(lambda i=i: GATE not in _gates(api, ns, f"fits-{i}"), f"fits-{i} ungated",
                 timeout=60, on_timeout=kueue.log_tail)
        pod = api.get(PODS, f"fits-{i}", ns)
        assert pod["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"

    for i in range(2):
        api.create(PODS, _pod(f"waits-{i}", "waits", "team"), ns)
    pending = wait_for(lambda: (w := _workload(api, ns, "waits")) and _condition(
        w, "QuotaReserved").get("status") == "False" and w, "group `waits` pending",
        timeout=90, on_timeout=lambda: f"{_workload(api, ns, 'waits')}\n{kueue.log_tail()}")
    reason = _condition(pending, "QuotaReserved")
    assert reason["reason"] == "Pending", reason
    assert "insufficient" in reason["message"].lower() or "quota" in reason["message"], reason
    assert _condition(pending, "Admitted").get("status") != "True"
    for i in range(2):
        assert GATE in _gates(api, ns, f"waits-{i}")


def test_start_is_idempotent_and_other_namespaces_untouched(kube_cluster, kueue):
    assert kueue.start() is kueue
    ns = kube_cluster.namespace("kueue-smoke-outside", labels={})
    try:
        pod = kube_cluster.api.create(PODS, _pod("plain", "g", "team"), ns)
        assert not (pod["spec"].get("schedulingGates") or []), pod["spec"]
    finally:
        kube_cluster.delete_namespace(ns, force_pods=True)
