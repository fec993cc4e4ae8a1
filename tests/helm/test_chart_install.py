"""The chart installed for real: `helm install` into the real control plane, the
operator run as the chart's Deployment pod by the node agent, under the chart's own
ServiceAccount and RBAC, in both modes.

Rendering tests cannot show that the operator actually works with the permissions the
chart grants, or that the pod the chart describes is admitted under Pod Security
`restricted` and logs in with its projected token. Here the pod is created by the real
ReplicaSet controller, admitted by the real PodSecurity plugin, scheduled by the real
scheduler, and every request the operator makes is authorised by the real RBAC
authorizer: a missing verb shows up as a 403 in its log and a FineTuneJob left alone.

The jobs need no training: their pods ask for spot capacity and the only node is
on-demand, so they stay Pending. Reconciling that far already takes the operator's
whole API surface for a job (watch, finalizer, spec ConfigMap, head Pod, status, Events).
"""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import datetime

import pytest
from chart_install import FTJ_API, RELEASE, Release, install, uninstall, wait_for

from kubetune.devenv.kubeapi import ApiError
from kubetune.devenv.nodeagent import NodeTemplate

pytestmark = pytest.mark.integration

ON_DEMAND = {"karpenter.sh/capacity-type": "on-demand"}
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
FINALIZER = "kubetune.dev/finetunejob-cleanup"  # handlers.FINALIZER
# Plain logs make the log assertions readable; nothing else differs from the defaults.
VALUES = {"logFormat": "plain"}


@pytest.fixture
def operator_node(node_agent):
    """One on-demand node: the operator pod lands there, spot-only job pods cannot."""
    return node_agent([NodeTemplate("chart-install-n1", ON_DEMAND)])


def finetunejob(name: str, namespace: str) -> dict:
    """A small valid job; its URIs are never read, since its pods never run."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny-llama"},
            "dataset": {"uri": "s3://data/tiny-alpaca.jsonl", "format": "alpaca"},
            "method": {"type": "qlora", "lora": {"rank": 4, "alpha": 8}},
            "training": {"maxSteps": 12, "batchSize": 4, "maxSeqLength": 64},
            "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"},
            "spot": {"enabled": True, "strategy": "StayOnSpot"},
            "output": {"uri": "s3://out/runs",
                       "credentials": {"secretRef": {"name": "s3-creds"}}},
        },
    }


def apply_job(release: Release, name: str, namespace: str) -> None:
    release.cluster.api.request("POST", f"{FTJ_API}/namespaces/{namespace}/finetunejobs",
                                finetunejob(name, namespace))


def job(release: Release, name: str, namespace: str) -> dict:
    return release.cluster.api.get_path(f"{FTJ_API}/namespaces/{namespace}/finetunejobs/{name}")


def assert_restricted_is_enforced(release: Release) -> None:
    """The namespace refuses a pod that breaks `restricted`, so the operator pod's
    admission there is the real PodSecurity plugin's verdict on the chart's pod."""
    api = release.cluster.api
    namespace = api.get_path(f"/api/v1/namespaces/{release.namespace}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "not-restricted"},
             "spec": {"containers": [{"name": "c", "image": "x", "command": ["python"]}]}}
    with pytest.raises(ApiError) as refused:
        api.request("POST", f"/api/v1/namespaces/{release.namespace}/pods", plain,
                    query={"dryRun": "All"})
    assert refused.value.status == 403 and "PodSecurity" in str(refused.value)


def seconds(start: str, end: str) -> float:
    parse = datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def check_operator_pod(release: Release, mode_args: list[str]) -> dict:
    """The pod as the chart describes it, admitted under `restricted`, Ready, in-cluster."""
    assert_restricted_is_enforced(release)
    pod = release.operator_pod()
    assert pod is not None, "exactly one operator pod"
    assert pod["status"]["phase"] == "Running"
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == RELEASE
    (container,) = spec["containers"]
    assert container["command"] == ["python", "-m", "kubetune.operator"]
    assert [a for a in container["args"] if a.startswith("--namespace") or a == "--all-namespaces"] \
        == mode_args
    assert "KUBECONFIG" not in {e["name"] for e in container.get("env", [])}
    # The ServiceAccount admission plugin added the projected token volume and its mount.
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == TOKEN_DIR)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    sources = [next(iter(s)) for s in volume["projected"]["sources"]]
    assert sources[0] == "serviceAccountToken"
    # Ready means /healthz answers (the readiness probe); the kubelet's liveness probe
    # would ask the same URL, which the node agent does not probe itself.
    url = f"http://{pod['status']['podIP']}:{container['ports'][0]['containerPort']}/healthz"
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.status == 200
        json.loads(answer.read())
    created = pod["metadata"]["creationTimestamp"]
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    print(f"operator pod: created -> process started {seconds(created, started):.0f}s, "
          f"-> Ready {seconds(created, conditions['Ready']['lastTransitionTime']):.0f}s; "
          f"helm install --wait {release.install_seconds:.1f}s")
    return pod


def check_reconciled(release: Release, name: str, namespace: str) -> dict:
    """Every write of a first reconcile went through: finalizer, children, status, Event."""
    api = release.cluster.api
    try:
        status = wait_for(lambda: (job(release, name, namespace).get("status") or {}).get("phase")
                          and job(release, name, namespace)["status"], 60, f"{name} status")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; operator log:\n{release.operator_log()[-4000:]}") from None
    current = job(release, name, namespace)
    assert FINALIZER in current["metadata"].get("finalizers", [])
    assert status["phase"] == "Scheduling"
    assert status["observedGeneration"] == current["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "Reconciling"}
    uid = current["metadata"]["uid"]
    spec_cm = api.get_path(f"/api/v1/namespaces/{namespace}/configmaps/{name}-spec")
    head = api.get_path(f"/api/v1/namespaces/{namespace}/pods/{name}-head")
    for child in (spec_cm, head):
        assert child is not None
        assert [o["uid"] for o in child["metadata"]["ownerReferences"]] == [uid]
    assert head["status"]["phase"] == "Pending"  # admitted under restricted, never placed
    events = api.request("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["involvedObject"].get("uid") == uid and e["reason"] == "PodsCreated"
               for e in events)
    return status


def forbidden(log: str) -> list[str]:
    """RBAC refusals in the operator's log (`... is forbidden: User "..." cannot ...`), not
    other 403s such as writes into a namespace being deleted by another test."""
    return [line for line in log.splitlines()
            if "forbidden" in line.lower() and re.search(r'User "[^"]+" cannot', line)]


def test_cluster_mode_operator_reconciles_under_the_chart_rbac(
        kube_cluster, kube_namespace, operator_node, tmp_path) -> None:
    jobs = kube_cluster.namespace(f"{kube_namespace}-jobs")
    release = install(kube_cluster, kube_namespace, VALUES, tmp_path, wait=True)
    try:
        check_operator_pod(release, ["--all-namespaces"])
        apply_job(release, "ftj-1", jobs)
        check_reconciled(release, "ftj-1", jobs)
        assert forbidden(release.operator_log()) == []

        # Take the chart's grant away: the next job's first write is refused, and the
        # refusal names the chart's ServiceAccount, so that grant is what authorised
        # the writes above.
        binding = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{RELEASE}-{kube_namespace}"
        assert kube_cluster.api.get_path(binding) is not None
        kube_cluster.api.delete_path(binding)
        apply_job(release, "ftj-2", jobs)
        who = f'User "{release.service_account}" cannot patch resource "finetunejobs"'
        wait_for(lambda: [line for line in forbidden(release.operator_log()) if who in line],
                 60, "the operator's refused write", interval=1)
        refused = job(release, "ftj-2", jobs)
        assert "status" not in refused and not refused["metadata"].get("finalizers")
    finally:
        uninstall(release, [jobs])
        kube_cluster.delete_namespace(jobs)


def test_namespaced_mode_operator_serves_only_its_namespaces(
        kube_cluster, kube_namespace, operator_node, tmp_path) -> None:
    watched = [kube_cluster.namespace(f"{kube_namespace}-{s}") for s in ("a", "b")]
    other = kube_cluster.namespace(f"{kube_namespace}-z")
    values = {**VALUES, "config": {"watchNamespaces": watched}}
    release = install(kube_cluster, kube_namespace, values, tmp_path, wait=True)
    try:
        check_operator_pod(release, [f"--namespace={ns}" for ns in watched])
        apply_job(release, "ftj-other", other)  # first, so it had the longest chance
        for ns in watched:
            apply_job(release, "ftj-1", ns)
        for ns in watched:
            check_reconciled(release, "ftj-1", ns)
        untouched = job(release, "ftj-other", other)
        assert "status" not in untouched and not untouched["metadata"].get("finalizers")
        assert kube_cluster.api.get_path(
            f"/api/v1/namespaces/{other}/configmaps/ftj-other-spec") is None
        # The operator never asked for anything outside its grant (no cluster-wide watch).
        assert forbidden(release.operator_log()) == []
    finally:
        uninstall(release, [*watched, other])
        for ns in [*watched, other]:
            kube_cluster.delete_namespace(ns)
