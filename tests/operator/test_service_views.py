"""The service reading pods and nodes from a snapshot of the watch caches: an idle
reconcile makes no request; an absence in the cache is checked with the API before it
ends an attempt; a body older than the pods is never acted on; a pod on a deleted node
counts as stopped (at once, or after its grace period) and is then removed. A fake API
records calls."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from operator_specs import BASE_SPEC, merge, merged

from kubetune.operator.cluster_view import ApiView, Memory, SnapshotView, has_labels
from kubetune.operator.config import OperatorConfig, parse_config
from kubetune.operator.finetune_service import FineTuneService

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
NODE = {"metadata": {"name": "spot-1", "labels": {"karpenter.sh/capacity-type": "spot"}},
        "spec": {"taints": []}}


class FakeApi:
    """Pods and nodes by name; records every call; status patches land on `job`."""

    def __init__(self, job: dict):
        self.job, self.pods, self.nodes, self.calls = job, {}, {"spot-1": NODE}, []

    def list(self, kind, namespace, labels):
        self.calls.append(("list", kind.plural))
        return [copy.deepcopy(p) for p in self.pods.values() if has_labels(p, labels)]

    def get(self, kind, name, namespace=None):
        self.calls.append(("get", kind.plural, name))
        return copy.deepcopy((self.nodes if kind.plural == "nodes" else self.pods).get(name))

    def create(self, kind, body):
        self.calls.append(("create", kind.plural))
        return True

    def ensure(self, desired, likely_exists=False):
        self.calls.append(("ensure", desired["kind"]))
        if desired["kind"] == "Pod":
            pod = copy.deepcopy(desired)
            pod["metadata"]["uid"] = f"uid-{pod['metadata']['labels']['kubetune.dev/attempt']}"
            pod["spec"]["nodeName"] = "spot-1"
            pod["status"] = {"phase": "Running", "containerStatuses": [
                {"name": "trainer", "state": {"running": {"startedAt": "2026-11-01T12:00:05Z"}}}]}
            self.pods[pod["metadata"]["name"]] = pod
        return "created"

    def patch(self, kind, name, namespace, patch, subresource=""):
        self.calls.append(("patch", kind.plural, subresource))
        body = {k: v for k, v in patch.items() if k != "metadata"}
        self.job = merged(self.job, body)
        self.job["metadata"]["resourceVersion"] = str(int(self.job["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.job)

    def delete(self, kind, name, namespace=None, uid=None, grace_seconds=None):
        self.calls.append(("delete", name, uid, grace_seconds))
        return True

    def take(self) -> list:
        calls, self.calls = self.calls, []
        return calls


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def new_job(config: OperatorConfig | None = None):
    """A job just applied: nothing created yet."""
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "job-uid", "generation": 1,
                         "resourceVersion": "1"},
            "spec": merge(BASE_SPEC, {"spot": {"enabled": True, "checkpointBudgetSeconds": 1,
                                               "backoff": {"initialSeconds": 0,
                                                           "maxSeconds": 0}}})}
    api, clock = FakeApi(body), Clock()
    service = FineTuneService(api, config or OperatorConfig(), emit=lambda *a: None,
                              now=clock, poll=lambda pod, port: None)
    return api, service, clock


def started_job(config: OperatorConfig | None = None):
    """A job whose attempt 1 was created and is running on spot-1 (as seen by the API)."""
    api, service, clock = new_job(config)
    service.reconcile(copy.deepcopy(api.job), sync_children=True)  # creates attempt 1
    service.reconcile(copy.deepcopy(api.job))  # sees it running
    api.take()
    return api, service, clock


def snapshot(api, pods=None, nodes=None, memory=Memory()):
    pods = list(api.pods.values()) if pods is None else pods
    return SnapshotView(api, copy.deepcopy(pods), dict(api.nodes if nodes is None else nodes),
                        memory)


def test_an_idle_reconcile_from_the_caches_makes_no_request():
    api, service, _ = started_job()
    assert api.job["status"]["phase"] == "Running"
    result = service.reconcile(copy.deepcopy(api.job), view=snapshot(api))
    assert not result.wrote_status and api.take() == []
    # The same through the API: a LIST of the pods and a GET of their node.
    service.reconcile(copy.deepcopy(api.job), view=ApiView(api))
    assert api.take() == [("list", "pods"), ("get", "nodes", "spot-1")]


def test_a_pod_or_node_missing_from_the_caches_is_asked_of_the_api_before_anything_ends():
    api, service, _ = started_job()
    for view in (snapshot(api, pods=[]), snapshot(api, nodes={})):
        result = service.reconcile(copy.deepcopy(api.job), view=view)
        calls = api.take()
        assert ("list", "pods") in calls and ("get", "nodes", "spot-1") in calls
        assert not any(c[0] == "delete" for c in calls) and not result.wrote_status
        assert api.job["status"]["recoveries"] == 0 and api.job["status"]["attempt"] == 1


def test_pods_of_a_later_attempt_than_the_body_knows_are_never_touched():
    api, service, _ = started_job()
    newer = copy.deepcopy(api.pods["j-head"])
    newer["metadata"]["labels"]["kubetune.dev/attempt"] = "2"
    result = service.reconcile(copy.deepcopy(api.job), view=snapshot(api, pods=[newer]))
    assert result.conflict and result.retry_after and api.take() == []


def test_pods_created_but_not_yet_in_the_cache_are_listed_not_created_again():
    api, service, clock = new_job()
    result = service.reconcile(copy.deepcopy(api.job), sync_children=True,
                               view=snapshot(api, pods=[]))
    assert not result.wrote_status and ("ensure", "Pod") in api.take()
    service.reconcile(copy.deepcopy(api.job), view=snapshot(api, pods=[]))  # watch lagging
    calls = api.take()
    assert ("list", "pods") in calls and not any(c[0] in ("ensure", "create") for c in calls)
    assert api.job["status"]["phase"] == "Running" and api.job["status"]["attempt"] == 1


def test_a_pod_on_a_deleted_node_counts_as_stopped_at_once_and_is_recovered():
    """The default (`deletedNodePods: Stopped`): the machine went with its Node."""
    api, service, clock = started_job()
    del api.nodes["spot-1"]
    gone = Memory(nodes_gone={"spot-1": T0})
    clock.now = T0 + timedelta(seconds=0.1)
    service.reconcile(copy.deepcopy(api.job), view=snapshot(api, memory=gone))
    status = api.job["status"]
    assert (status["attempt"], status["recoveries"], status["phase"]) == (2, 1, "Recovering")
    assert ("delete", "j-head", None, None) in api.take()


def test_a_pod_on_a_deleted_node_waits_out_its_grace_period_then_is_recovered_and_removed():
    api, service, clock = started_job(parse_config({"spotProfiles": {
        "karpenter": {"deletedNodePods": "AfterGracePeriod"}}}))
    del api.nodes["spot-1"]
    gone = Memory(nodes_gone={"spot-1": T0})
    clock.now = T0 + timedelta(seconds=2)  # grace: checkpointBudgetSeconds 1 + 5
    result = service.reconcile(copy.deepcopy(api.job), view=snapshot(api, memory=gone))
    assert api.job["status"]["phase"] == "Recovering" and result.retry_after == 4.0
    assert not any(c[0] == "delete" for c in api.take())
    clock.now = T0 + timedelta(seconds=6)
    service.reconcile(copy.deepcopy(api.job), view=snapshot(api, memory=gone))
    status = api.job["status"]
    assert (status["attempt"], status["recoveries"], status["phase"]) == (2, 1, "Recovering")
    assert ("delete", "j-head", None, None) in api.take()  # the ended attempt's pod
    # Terminating, with no kubelet to confirm it: removed at once, by uid, once the API
    # confirms its node is gone; then the next attempt is created.
    api.pods["j-head"]["metadata"]["deletionTimestamp"] = "2026-11-01T12:00:06Z"
    service.reconcile(copy.deepcopy(api.job), view=snapshot(api, memory=gone))
    calls = api.take()
    assert ("get", "nodes", "spot-1") in calls and ("delete", "j-head", "uid-1", 0) in calls
    del api.pods["j-head"]
    service.reconcile(copy.deepcopy(api.job), view=snapshot(api, memory=gone))
    assert api.pods["j-head"]["metadata"]["labels"]["kubetune.dev/attempt"] == "2"
    assert ("ensure", "Pod") in api.take()


def test_a_pod_gone_with_its_node_is_a_node_deletion_any_other_missing_pod_is_lost():
    for memory, reason in ((Memory(nodes_gone={"spot-1": T0},
                                   pod_nodes={("j-head", 1): "spot-1"}), "NodeDeleted"),
                           (Memory(), "PodDeleted")):
        api, service, _ = started_job()
        del api.pods["j-head"]
        del api.nodes["spot-1"]
        service.reconcile(copy.deepcopy(api.job), view=snapshot(api, pods=[], memory=memory))
        status = api.job["status"]
        assert status["recoveries"] == 1 and reason in status["message"], status["message"]
