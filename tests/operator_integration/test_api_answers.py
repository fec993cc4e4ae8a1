"""The API server's refusals of children, provoked live on the real kube-apiserver, must
be what `tests/operator/api_answers.json` recorded (status, reason, blamed fields) and be
classified alike: the unit tests of `api_errors` run on that recording, so this keeps it
true to the API server (`KUBETUNE_RECORD_API_ANSWERS=1` rewrites it).

Each case is a child as kubetune's builders make it, with one thing wrong, or a namespace
whose policy (ResourceQuota, LimitRange, Pod Security) it breaks."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from ftj_harness import wait_for

from kubetune.api import FineTuneJobSpec, ModelServeSpec, parse_spec
from kubetune.devenv.kubeapi import ApiError
from kubetune.operator.api_errors import classify
from kubetune.operator.builders import JobMeta, build_head_pod
from kubetune.operator.config import OperatorConfig
from kubetune.operator.modelserve.builders import ServeMeta, build_deployment

pytestmark = pytest.mark.integration

RECORDING = Path(__file__).resolve().parents[1] / "operator" / "api_answers.json"
FTJ_SPEC = {"baseModel": {"uri": "hf://org/model", "revision": "main"},
            "dataset": {"uri": "s3://data/d.jsonl", "format": "alpaca"},
            "output": {"uri": "s3://out/runs"},
            "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "1Gi"}}
MS_SPEC = {"baseModel": {"uri": "s3://models/base"},
           "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"}}


def head_pod(namespace: str) -> dict:
    job = JobMeta(name="answers", namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    pod = build_head_pod(job, parse_spec(FineTuneJobSpec, FTJ_SPEC), OperatorConfig(), 1,
                         "on-demand")
    pod["metadata"].pop("ownerReferences")
    return pod


def deployment(namespace: str) -> dict:
    meta = ServeMeta(name="answers", namespace=namespace, uid="00000000-0000-0000-0000-000000000002")
    body = build_deployment(meta, parse_spec(ModelServeSpec, MS_SPEC), OperatorConfig())
    body["metadata"].pop("ownerReferences")
    return body


def edit(body: dict, change) -> dict:
    body = copy.deepcopy(body)
    change(body)
    return body


def pods(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def quota_counted(api, namespace: str) -> None:
    """Until the quota controller has counted the namespace (kube-root-ca.crt): before
    that, admission answers "status unknown for quota" instead of "exceeded quota"."""
    def counted():
        quota = api.request("GET", f"/api/v1/namespaces/{namespace}/resourcequotas/small")
        return (quota.get("status") or {}).get("used", {}).get("count/configmaps") == "1"

    wait_for(counted, 30, f"the quota of {namespace} counted")


def cases(api, namespace: str, quota: str, limits: str) -> dict:
    """case id -> (method, path, body, query)."""
    pod = head_pod(namespace)
    spec = lambda change: edit(pod, lambda p: change(p["spec"]))  # noqa: E731
    container = lambda change: spec(lambda s: change(s["containers"][0]))  # noqa: E731

    api.request("POST", f"/api/v1/namespaces/{quota}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "small"},
        "spec": {"hard": {"requests.cpu": "500m", "count/configmaps": "1"}}})
    quota_counted(api, quota)
    api.request("POST", f"/api/v1/namespaces/{limits}/limitranges", {
        "apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "max"},
        "spec": {"limits": [{"type": "Container", "max": {"cpu": "500m"}}]}})
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "twice"},
                 "data": {"a": "b"}}
    api.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap)
    stale = api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/twice")
    api.request("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/twice",
                {"data": {"a": "c"}}, content_type="application/merge-patch+json")
    in_quota, in_limits = (edit(pod, lambda p, ns=ns: p["metadata"].update(namespace=ns))
                           for ns in (quota, limits))
    return {
        "pod-nodeselector-key": ("POST", pods(namespace), spec(
            lambda s: s.update(nodeSelector={"bad key!": "x"})), None),
        "pod-nodeselector-value-64": ("POST", pods(namespace), spec(
            lambda s: s.update(nodeSelector={"pool": "v" * 64})), None),
        "pod-toleration-exists-with-value": ("POST", pods(namespace), spec(
            lambda s: s.update(tolerations=[{"key": "gpu", "operator": "Exists",
                                             "value": "yes"}])), None),
        "pod-affinity-operator": ("POST", pods(namespace), spec(
            lambda s: s.update(affinity={"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "Sometimes",
                                           "values": ["a"]}]}]}}})), None),
        "pod-secret-key": ("POST", pods(namespace), container(
            lambda c: c["env"].append({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
                "secretKeyRef": {"name": "creds", "key": "bad key"}}})), None),
        "pod-gpu-resource-name": ("POST", pods(namespace), container(
            lambda c: [c["resources"][k].update({"nvidia.com/GPU!": "1"})
                       for k in ("requests", "limits")]), None),
        "pod-service-account-missing": ("POST", pods(namespace), spec(
            lambda s: s.update(serviceAccountName="nobody-irsa")), None),
        "pod-priority-class-missing": ("POST", pods(namespace), spec(
            lambda s: s.update(priorityClassName="urgent")), None),
        "pod-security-escalation": ("POST", pods(namespace), container(
            lambda c: c["securityContext"].update(allowPrivilegeEscalation=True)), None),
        "pod-quota-cpu": ("POST", pods(quota), in_quota, None),
        "configmap-quota-count": ("POST", f"/api/v1/namespaces/{quota}/configmaps",
                                  configmap, None),
        "pod-limitrange-cpu": ("POST", pods(limits), in_limits, None),
        "pod-unknown-field-strict": ("POST", pods(namespace), spec(
            lambda s: s.update(nodeSelectr={"pool": "a"})), {"fieldValidation": "Strict"}),
        "pod-namespace-missing": ("POST", pods(f"{namespace}-gone"[:63]), edit(
            pod, lambda p: p["metadata"].pop("namespace")), None),
        "configmap-exists": ("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                             configmap, None),
        "configmap-conflict": ("PUT", f"/api/v1/namespaces/{namespace}/configmaps/twice",
                               stale, None),
        "deployment-template-nodeselector": (
            "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments",
            edit(deployment(namespace), lambda d: d["spec"]["template"]["spec"].update(
                nodeSelector={"bad key!": "x"})), None),
    }


def answer(api, method, path, body, query) -> dict:
    try:
        api.request(method, path, body, query=query)
    except ApiError as exc:
        assert isinstance(exc.body, dict), exc.body
        return {"code": exc.status, "status": exc.body}
    pytest.fail(f"{method} {path} was accepted")


def essentials(recorded: dict) -> tuple:
    status = recorded["status"]
    fields = tuple(c.get("field") for c in (status.get("details") or {}).get("causes") or [])
    verdict = classify(recorded["code"], status.get("message", ""), status.get("reason", ""),
                       status.get("details"))
    return (recorded["code"], status.get("reason"), fields, verdict.kind, verdict.cause,
            verdict.permanent)


def test_the_api_servers_refusals_are_the_recorded_ones(kube_cluster, kube_namespace):
    api = kube_cluster.api
    quota, limits = (kube_cluster.namespace(f"{kube_namespace[:50]}-{suffix}")
                     for suffix in ("quota", "limits"))
    try:
        live = {case: answer(api, *request)
                for case, request in cases(api, kube_namespace, quota, limits).items()}
    finally:
        for namespace in (quota, limits):
            kube_cluster.delete_namespace(namespace)
    if os.environ.get("KUBETUNE_RECORD_API_ANSWERS"):
        RECORDING.write_text(json.dumps(live, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(RECORDING.read_text())
    assert sorted(live) == sorted(recorded)
    for case in live:
        assert essentials(live[case]) == essentials(recorded[case]), case
