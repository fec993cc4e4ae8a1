"""FineTuneJobs whose pods the real API server refuses, with refusals no CRD rule can
catch (they depend on the namespace, not on the spec alone): a ServiceAccount that does
not exist yet, a ResourceQuota the pod exceeds, a pod field only the Pod validation
checks. The operator process reports each at once (status naming the spec field, a
FailedCreate Event), leaves no child behind, does not retry in a storm, and starts the
job as soon as the cause is gone: the ServiceAccount created, the quota freed, the spec
fixed."""

from __future__ import annotations

import subprocess

import pytest
from conftest import POD_ENV
from ftj_harness import BUCKET, SPOT, finetunejob, wait_for

from kubetune.devenv.controlplane import Identity
from kubetune.devenv.kubeapi import CONFIGMAPS, FINETUNEJOBS, PODS, SERVICES, Resource
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from kubetune.devenv.tools import tool_path

pytestmark = pytest.mark.integration
REPORT_WITHIN = 30  # seconds from apply to the condition and the Event
RUN_TIMEOUT = 240
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
QUOTAS = Resource("", "v1", "resourcequotas")


def condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def reported(cluster, name: str, kind: str, reason: str) -> dict:
    """The status once condition `kind` is True with `reason`."""
    def check():
        status = cluster.status(name)
        found = condition(status, kind)
        return status if found.get("status") == "True" and found.get("reason") == reason \
            else None
    return wait_for(check, REPORT_WITHIN, f"{name}: {kind}=True ({reason})")


def failed_create(cluster, name: str) -> list[dict]:
    return wait_for(lambda: [e for e in cluster.events(name) if e["reason"] == "FailedCreate"
                             and e["type"] == "Warning"], REPORT_WITHIN, "a FailedCreate Event")


def children(cluster) -> list[str]:
    """Whatever the operator made in the namespace (kube-root-ca.crt is the cluster's)."""
    made = [f"Pod/{p['metadata']['name']}" for p in cluster.api.list(PODS, cluster.namespace)]
    made += [f"ConfigMap/{c['metadata']['name']}"
             for c in cluster.api.list(CONFIGMAPS, cluster.namespace)
             if c["metadata"]["name"] != "kube-root-ca.crt"]
    made += [f"Service/{s['metadata']['name']}"
             for s in cluster.api.list(SERVICES, cluster.namespace)]
    return made


def pod_creates(cluster, user: str, since: int) -> int:
    """POSTs of pods by `user` from audit-log position `since` (one per request)."""
    return len({e["auditID"] for e in cluster.control_plane.audit_events(user, since)
                if e["verb"] == "create" and (e.get("objectRef") or {}).get("resource") == "pods"
                and not (e.get("objectRef") or {}).get("subresource")})


def own_operator(cluster):
    """The operator logged in as its own user, so the audit log tells its requests apart."""
    user = f"kubetune-operator-{cluster.namespace}"
    kubeconfig = cluster.control_plane.kubeconfig(Identity(user, ("system:masters",)),
                                                  cluster.namespace)
    return user, cluster.operator({"KUBECONFIG": str(kubeconfig)}).start()


def kubectl_phase(cluster, name: str) -> str:
    out = subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(cluster.kubeconfig),
                          "get", "ftj", name, "-n", cluster.namespace, "--no-headers",
                          "-o", "custom-columns=PHASE:.status.phase"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


@pytest.fixture
def irsa_cluster(cluster, s3_bucket, node_agent):
    """A node whose pods find S3 credentials in their environment, as IRSA or workload
    identity would give them to a pod running as the right ServiceAccount."""
    env = {**POD_ENV, "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}
    agent = node_agent([NodeTemplate("spot-1", SPOT)], extra_env=env)
    cluster.s3 = s3_bucket
    return cluster, agent


@pytest.mark.slow
def test_a_missing_service_account_stalls_the_job_until_it_exists_then_it_succeeds(
        irsa_cluster, tiny_model_path):
    cluster, _ = irsa_cluster
    user, operator = own_operator(cluster)
    try:
        mark = cluster.control_plane.audit_mark()
        body = finetunejob("late-sa", tiny_model_path, cluster.s3.endpoint)
        body["spec"]["output"]["credentials"] = {"serviceAccountName": "late-sa"}
        cluster.api.create(FINETUNEJOBS, body, cluster.namespace)
        status = reported(cluster, "late-sa", "Stalled", "ChildRefused")
        assert status["phase"] == "Pending" and kubectl_phase(cluster, "late-sa") == "Pending"
        assert condition(status, "Reconciling")["status"] == "False"
        message = condition(status, "Stalled")["message"]
        assert message.startswith("spec.output.credentials.serviceAccountName: ")
        assert 'serviceaccount "late-sa" not found' in message
        event = failed_create(cluster, "late-sa")[0]
        assert "error looking up service account" in event["message"]
        assert children(cluster) == []

        # No storm: tries at 0, 2, 6, 14 s... (doubling from 2 s, capped at 30 s).
        wait_for(lambda: pod_creates(cluster, user, mark) >= 3, 30, "a third try")
        observed = pod_creates(cluster, user, mark)
        version = cluster.job("late-sa")["metadata"]["resourceVersion"]
        wait_for(lambda: pod_creates(cluster, user, mark) > observed, 40, "the next try")
        assert cluster.job("late-sa")["metadata"]["resourceVersion"] == version  # no rewrite
        assert children(cluster) == []

        cluster.api.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": "late-sa"}},
                           cluster.namespace)
        head = wait_for(lambda: cluster.api.get(PODS, "late-sa-head", cluster.namespace),
                        45, "the head pod once the ServiceAccount exists")
        assert head["spec"]["serviceAccountName"] == "late-sa"
        status = cluster.wait_phase("late-sa", {"Succeeded", "Failed"}, RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
        assert condition(status, "Stalled")["status"] == "False"
        assert status["adapter"]["uri"] == f"s3://{BUCKET}/runs/{cluster.namespace}/late-sa/adapter"
    finally:
        operator.stop()


@pytest.mark.slow
def test_an_exceeded_quota_waits_reconciling_and_the_job_runs_once_the_quota_frees(
        training_cluster, tiny_model_path):
    cluster, _ = training_cluster
    ns = cluster.namespace
    cluster.api.create(QUOTAS, {"apiVersion": "v1", "kind": "ResourceQuota",
                                "metadata": {"name": "cpu"},
                                "spec": {"hard": {"requests.cpu": "1"}}}, ns)
    blocker = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "blocker"},
               "spec": {"nodeSelector": {"pool": "none"},  # never runs, holds its quota
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{"name": "c", "image": "kubetune/none",
                                        "resources": {"requests": {"cpu": "1"},
                                                      "limits": {"cpu": "1"}},
                                        "securityContext": {
                                            "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.api.create(PODS, blocker, ns)
    # Admission enforces the quota once its controller counted the blocker in it.
    wait_for(lambda: ((cluster.api.get(QUOTAS, "cpu", ns).get("status") or {}).get("used") or {})
             .get("requests.cpu") == "1", 30, "the quota counting the blocker")
    operator = cluster.operator().start()
    try:
        cluster.api.create(FINETUNEJOBS, finetunejob("quota", tiny_model_path,
                                                     cluster.s3.endpoint), ns)
        status = reported(cluster, "quota", "Reconciling", "QuotaExceeded")
        assert status["phase"] == "Pending"
        assert condition(status, "Stalled")["status"] == "False"
        message = condition(status, "Reconciling")["message"]
        assert message.startswith("spec.resources.cpu: ") and "exceeded quota: cpu" in message
        assert "exceeded quota" in failed_create(cluster, "quota")[0]["message"]
        assert children(cluster) == ["Pod/blocker"]

        cluster.api.delete(PODS, "blocker", ns)
        status = cluster.wait_phase("quota", {"Succeeded", "Failed"}, RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
        assert condition(status, "Reconciling")["status"] == "False"
    finally:
        operator.stop()


def test_a_pod_field_only_the_pod_validation_refuses_stalls_until_the_spec_is_fixed(
        cluster, operator):
    ns = cluster.namespace
    body = finetunejob("tolerate", "/models/tiny", "http://127.0.0.1:9",
                       **{"resources.workers": 2,
                          "resources.tolerations": [{"key": "gpu", "operator": "Exists",
                                                     "value": "yes"}]})
    cluster.api.create(FINETUNEJOBS, body, ns)
    status = reported(cluster, "tolerate", "Stalled", "ChildRefused")
    message = condition(status, "Stalled")["message"]
    assert message.startswith("spec.resources.tolerations: Pod tolerate-head refused "
                              "(Invalid, HTTP 422)"), message
    assert "value must be empty when `operator` is 'Exists'" in message
    assert failed_create(cluster, "tolerate")[0]["message"] == message
    assert children(cluster) == []
    assert [s["metadata"]["name"] for s in cluster.api.list(
        Resource("", "v1", "secrets"), ns) if s["metadata"]["name"].startswith("tolerate")] == []

    cluster.api.request("PATCH", f"/apis/kubetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/"
                        "tolerate", {"spec": {"resources": {"tolerations": [
                            {"key": "gpu", "operator": "Exists"}]}}},
                        content_type="application/merge-patch+json")
    wait_for(lambda: len(cluster.api.list(PODS, ns)) == 2, 30, "both pods after the fix")
    status = wait_for(lambda: (s := cluster.status("tolerate")).get("phase") == "Scheduling"
                      and s, 30, "the attempt started")
    assert condition(status, "Stalled")["status"] == "False"
