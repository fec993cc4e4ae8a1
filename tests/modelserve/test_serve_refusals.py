"""`ServeService` when the real API server refuses what a ModelServe needs: its pods (a
ServiceAccount that does not exist, a ResourceQuota), judged in a dry run before any
child exists. Reported at once (Stalled naming the field, or waiting for the quota; a
FailedCreate Event), nothing left behind, retried after a backoff without a write, at
once after a spec edit, and served once the cause is gone. A refused edit of a running
serve keeps what serves. Through the operator's real client (`kube.Kube`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from kubetune.devenv.kubeapi import (
    CONFIGMAPS,
    DEPLOYMENTS,
    MODELSERVES,
    SERVICES,
    Resource,
)
from kubetune.operator.config import OperatorConfig
from kubetune.operator.kube import Kube
from kubetune.operator.modelserve.service import ServeService
from modelserve_support import condition, wait_for

pytestmark = pytest.mark.integration
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
QUOTAS = Resource("", "v1", "resourcequotas")
SA_FIELD = "spec.storage.credentials.serviceAccountName"


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


@pytest.fixture
def env(kube_cluster, kube_namespace, kubeconfig):
    kube, clock, events = Kube(), Clock(), []
    service = ServeService(kube, OperatorConfig(), probe=lambda pods, port: [], clock=clock,
                           emit=lambda body, kind, reason, message:
                           events.append((kind, reason, message)))
    return kube_cluster.api, kube_namespace, kube, service, clock, events


def serve_body(**resources) -> dict:
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
            "metadata": {"name": "chat"},
            "spec": {"baseModel": {"uri": "s3://models/base"},
                     "adapters": [{"name": "ready-made", "uri": "s3://adapters/ready-made"}],
                     "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "2Gi",
                                   "nodeSelector": {"pool": "serve"}, **resources},
                     "storage": {"credentials": {"serviceAccountName": "serve-irsa"}}}}


def reconcile(api, namespace, service) -> dict:
    service.reconcile(api.get(MODELSERVES, "chat", namespace))
    return (api.get(MODELSERVES, "chat", namespace) or {}).get("status") or {}


def children(api, namespace) -> list[str]:
    found = [f"Deployment/{d['metadata']['name']}" for d in api.list(DEPLOYMENTS, namespace)]
    found += [f"Service/{s['metadata']['name']}" for s in api.list(SERVICES, namespace)]
    found += [f"ConfigMap/{c['metadata']['name']}" for c in api.list(CONFIGMAPS, namespace)
              if c["metadata"]["name"] != "kube-root-ca.crt"]
    return sorted(found)


def create_service_account(api, namespace):
    api.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                  "metadata": {"name": "serve-irsa"}}, namespace)


def test_a_missing_service_account_stalls_the_serve_until_it_exists(env):
    api, namespace, kube, service, clock, events = env
    api.create(MODELSERVES, serve_body(), namespace)
    status = reconcile(api, namespace, service)
    assert status["phase"] == "Failed"
    assert condition(status, "Stalled") == "True" and condition(status, "Reconciling") == "False"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "ChildRefused" and stalled["message"].startswith(SA_FIELD)
    assert 'serviceaccount "serve-irsa" not found' in stalled["message"]
    assert events == [("Warning", "FailedCreate", status["message"])]
    assert children(api, namespace) == []

    # Within the backoff: not even a read; after it, one dry run and no write.
    before = dict(kube.requests)
    reconcile(api, namespace, service)
    assert dict(kube.requests) == before
    version = api.get(MODELSERVES, "chat", namespace)["metadata"]["resourceVersion"]
    clock.now += timedelta(seconds=2)
    reconcile(api, namespace, service)
    assert kube.requests["POST"] == before["POST"] + 1 and kube.requests.get("PATCH", 0) == \
        before.get("PATCH", 0)
    assert api.get(MODELSERVES, "chat", namespace)["metadata"]["resourceVersion"] == version
    assert len(events) == 1

    create_service_account(api, namespace)
    clock.now += timedelta(seconds=4)
    status = reconcile(api, namespace, service)
    assert children(api, namespace) == ["ConfigMap/chat-serve-config", "Deployment/chat-serve",
                                         "Service/chat-serve"]
    assert status["phase"] == "Progressing" and condition(status, "Stalled") == "False"


def test_an_exceeded_quota_waits_and_a_spec_edit_retries_at_once(env):
    api, namespace, kube, service, clock, events = env
    create_service_account(api, namespace)
    api.create(QUOTAS, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cpu"},
                        "spec": {"hard": {"requests.cpu": "1"}}}, namespace)
    # Admission enforces a quota once its controller has written the quota's status.
    wait_for(lambda: (api.get(QUOTAS, "cpu", namespace).get("status") or {}).get("hard"),
             "the quota in force")
    api.create(MODELSERVES, serve_body(cpu="2"), namespace)
    status = reconcile(api, namespace, service)
    assert status["phase"] == "Pending"
    assert condition(status, "Reconciling") == "True" and condition(status, "Stalled") == "False"
    assert status["message"].startswith("spec.resources.cpu: ")
    assert events[-1][:2] == ("Warning", "FailedCreate")
    assert children(api, namespace) == []

    body = api.get(MODELSERVES, "chat", namespace)
    body["spec"]["resources"]["cpu"] = "500m"  # within the quota: no backoff to wait out
    api.request("PUT", f"/apis/kubetune.dev/v1alpha1/namespaces/{namespace}/modelserves/chat",
                body)
    status = reconcile(api, namespace, service)
    assert "Deployment/chat-serve" in children(api, namespace)
    assert status["phase"] == "Progressing"


def test_a_refused_edit_of_a_running_serve_keeps_its_children(env):
    api, namespace, kube, service, clock, events = env
    create_service_account(api, namespace)
    api.create(MODELSERVES, serve_body(), namespace)
    reconcile(api, namespace, service)
    before = api.get(DEPLOYMENTS, "chat-serve", namespace)
    body = api.get(MODELSERVES, "chat", namespace)
    body["spec"]["storage"]["credentials"]["serviceAccountName"] = "other-irsa"
    api.request("PUT", f"/apis/kubetune.dev/v1alpha1/namespaces/{namespace}/modelserves/chat",
                body)
    status = reconcile(api, namespace, service)
    assert status["phase"] == "Failed" and status["message"].startswith(SA_FIELD)
    after = api.get(DEPLOYMENTS, "chat-serve", namespace)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"]["spec"]["serviceAccountName"] == "serve-irsa"
    assert children(api, namespace) == ["ConfigMap/chat-serve-config", "Deployment/chat-serve",
                                        "Service/chat-serve"]
