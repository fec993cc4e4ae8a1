"""A ModelServe whose Deployment's ReplicaSet cannot create pods (its `ReplicaFailure`
condition, as the Deployment controller writes it) reads as Stalled naming the spec
field, or as waiting for a quota; the dry-run pod is the template's. Pure, no API."""

from __future__ import annotations

from datetime import datetime, timezone

from kubetune.operator.modelserve.refusals import probe_pod
from kubetune.operator.modelserve.status import Observed, compute_status

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
SA_MESSAGE = ('pods "chat-serve-6d5f7c9b8-" is forbidden: error looking up service account '
              'ml/serve-irsa: serviceaccount "serve-irsa" not found')
QUOTA_MESSAGE = ('pods "chat-serve-6d5f7c9b8-x2x7k" is forbidden: exceeded quota: cpu, '
                 'requested: requests.cpu=2250m, used: requests.cpu=2250m, '
                 'limited: requests.cpu=4')


def failing_deployment(message: str) -> dict:
    """As the Deployment controller reports a ReplicaSet that cannot create pods."""
    return {"metadata": {"name": "chat-serve", "generation": 1},
            "status": {"observedGeneration": 1, "replicas": 0, "updatedReplicas": 0,
                       "conditions": [
                           {"type": "Progressing", "status": "True",
                            "reason": "NewReplicaSetCreated"},
                           {"type": "ReplicaFailure", "status": "True",
                            "reason": "FailedCreate", "message": message}]}}


def conditions(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_pods_refused_for_good_stall_the_serve_naming_the_field():
    status = compute_status([], Observed(1, 2, failing_deployment(SA_MESSAGE)), "e", None, NOW)
    assert status["phase"] == "Degraded"
    assert conditions(status)["Stalled"] == ("True", "ChildRefused")
    assert status["message"].startswith("spec.storage.credentials.serviceAccountName: ")
    assert SA_MESSAGE in status["message"]


def test_pods_over_a_quota_wait_with_the_quotas_message():
    status = compute_status([], Observed(1, 2, failing_deployment(QUOTA_MESSAGE)), "e", None,
                            NOW)
    assert status["phase"] == "Progressing"
    assert conditions(status)["Reconciling"] == ("True", "QuotaExceeded")
    assert conditions(status)["Stalled"][0] == "False"
    assert status["message"].startswith("spec.resources.cpu: ")


def test_the_dry_run_pod_is_the_templates_under_a_fixed_name():
    deployment = {"metadata": {"name": "chat-serve", "namespace": "ml"},
                  "spec": {"template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "vllm"}]}}}}
    pod = probe_pod(deployment)
    assert pod["metadata"] == {"name": "chat-serve-probe", "namespace": "ml",
                               "labels": {"a": "b"}}
    assert pod["spec"] == deployment["spec"]["template"]["spec"]
    assert pod["spec"] is not deployment["spec"]["template"]["spec"]
