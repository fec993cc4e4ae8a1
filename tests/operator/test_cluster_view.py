"""The watch caches' pure side: what is kept of a pod or node, which changes count, when a
pod on a deleted node counts as stopped, and how a snapshot answers."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from kubetune.operator.cluster_view import (
    ApiView,
    Memory,
    SnapshotView,
    has_labels,
    node_signature,
    pod_signature,
    stopped_by,
    trim_node,
    trim_pod,
)
from kubetune.operator import accounting
from kubetune.operator.config import OperatorConfig, parse_config
from kubetune.operator.pod_state import classify_pod

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def full_pod(**status) -> dict:
    """A pod as the API server returns it: much more than a reconcile reads."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "j-head", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                     "creationTimestamp": "2026-11-01T12:00:00Z",
                     "labels": {"kubetune.dev/finetunejob": "j", "kubetune.dev/attempt": "2",
                                "kubetune.dev/capacity-type": "spot"},
                     "annotations": {"big": "x" * 1000},
                     "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                     "ownerReferences": [{"kind": "FineTuneJob", "name": "j", "uid": "o"}]},
        "spec": {"nodeName": "spot-1", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "trainer", "image": "t", "env": [{"name": "A"}] * 30,
                                 "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
                 "volumes": [{"name": "spec", "configMap": {"name": "j-spec"}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.9", "startTime": "2026-11-01T12:00:05Z",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "trainer", "state": {"running": {
                       "startedAt": "2026-11-01T12:00:05Z"}}}], **status},
    }


DISRUPTED = {"conditions": [{"type": "DisruptionTarget", "status": "True",
                             "reason": "EvictionByEvictionAPI"}]}
ENDED = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
    "exitCode": 75, "startedAt": "2026-11-01T12:00:05Z", "finishedAt": "2026-11-01T12:09:05Z",
    "message": '{"steps": 40}'}}}]}


def test_a_trimmed_pod_means_the_same_to_every_reader():
    profile = OperatorConfig().spot_profile()
    for extra in ({}, DISRUPTED, ENDED):
        pod = full_pod(**extra)
        trimmed = trim_pod(pod)
        assert classify_pod(trimmed, None, True, profile) == classify_pod(pod, None, True, profile)
        node = {"metadata": {"labels": {"node.kubernetes.io/instance-type": "g5.xlarge"}}}
        usage = [accounting.observe([], 2, [accounting.PodSighting(p, trim_node(node))],
                                    "nvidia.com/gpu", T0) for p in (pod, trimmed)]
        assert usage[0] == usage[1] and usage[1][0].pods[0].gpus == 2
        assert usage[1][0].pods[0].instance_type == "g5.xlarge"
        assert trimmed["status"]["podIP"] == "10.0.0.9"  # the progress poll's address
    trimmed = trim_pod(full_pod())
    assert "managedFields" not in trimmed["metadata"] and "annotations" not in trimmed["metadata"]
    assert set(trimmed["spec"]["containers"][0]) == {"name", "resources"}
    assert len(repr(trimmed)) < len(repr(full_pod())) / 3


def test_only_decision_relevant_pod_changes_change_the_signature():
    base = pod_signature(full_pod())
    moved_ip = full_pod(podIP="10.0.0.10")
    relabelled = full_pod()
    relabelled["metadata"]["labels"]["team"] = "a"
    assert pod_signature(moved_ip) == base and pod_signature(relabelled) == base
    deleting = full_pod()
    deleting["metadata"]["deletionTimestamp"] = "2026-11-01T12:10:00Z"
    for changed in (full_pod(**DISRUPTED), full_pod(**ENDED), deleting,
                    full_pod(phase="Pending")):
        assert pod_signature(changed) != base


def test_node_signature_is_its_taints():
    node = {"metadata": {"name": "n", "labels": {"a": "b"}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": "t1"}]}}
    heartbeat = copy.deepcopy(node)
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "t2"
    tainted = copy.deepcopy(node)
    tainted["spec"]["taints"] = [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]
    assert node_signature(heartbeat) == node_signature(node) != node_signature(tainted)
    assert trim_node(tainted) == {"metadata": {"name": "n", "labels": {"a": "b"}},
                                  "spec": {"taints": tainted["spec"]["taints"]}}


def test_a_pod_on_a_deleted_node_counts_as_stopped_when_the_deletion_was_seen():
    pod = trim_pod(full_pod())
    assert stopped_by(pod, None) is None  # no watch saw the node go: pod GC decides
    assert stopped_by(pod, T0) == T0  # the machine went with its Node
    assert OperatorConfig().spot_profile().deleted_node_pods == "Stopped"


def test_a_pod_on_a_deleted_node_counts_as_stopped_after_its_grace_period_if_asked():
    pod = trim_pod(full_pod())
    assert stopped_by(pod, None, wait_grace=True) is None
    assert stopped_by(pod, T0, wait_grace=True) == T0 + timedelta(seconds=30)
    pod["spec"].pop("terminationGracePeriodSeconds")
    assert stopped_by(pod, T0, wait_grace=True) == T0 + timedelta(seconds=30)  # the default
    pod["spec"]["terminationGracePeriodSeconds"] = 6
    assert stopped_by(pod, T0, wait_grace=True) == T0 + timedelta(seconds=6)
    pod["metadata"]["deletionGracePeriodSeconds"] = 40  # a longer grace asked on delete
    assert stopped_by(pod, T0, wait_grace=True) == T0 + timedelta(seconds=40)
    custom = parse_config({"spotProvider": "karpenter", "spotProfiles": {
        "karpenter": {"deletedNodePods": "AfterGracePeriod"}}})
    assert custom.spot_profile().deleted_node_pods == "AfterGracePeriod"
    assert custom.spot_profile().spot_node_selector == {"karpenter.sh/capacity-type": "spot"}


class NoKube:
    def list(self, *a, **k):
        raise AssertionError("a snapshot must not call the API")

    get = list


def test_a_snapshot_answers_from_the_cache_and_hands_over_to_the_api():
    mine = trim_pod(full_pod())
    other_job = copy.deepcopy(mine)
    other_job["metadata"]["labels"]["kubetune.dev/finetunejob"] = "k"
    other_ns = copy.deepcopy(mine)
    other_ns["metadata"]["namespace"] = "elsewhere"
    memory = Memory(nodes_gone={"spot-0": T0})
    view = SnapshotView(NoKube(), [mine, other_job, other_ns], {"spot-1": {"spec": {}}}, memory)
    assert not view.authoritative
    assert view.pods("ns", {"kubetune.dev/finetunejob": "j"}) == [mine]
    assert view.node("spot-1") == {"spec": {}} and view.node("spot-2") is None
    confirmed = view.confirmed()
    assert isinstance(confirmed, ApiView) and confirmed.authoritative
    assert confirmed.memory is memory and confirmed.confirmed() is confirmed
    assert has_labels(mine, {}) and not has_labels(mine, {"kubetune.dev/attempt": "1"})
