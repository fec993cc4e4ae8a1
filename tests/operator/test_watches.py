"""Event routing: which pod and node events reach which job's reconcile, what is
remembered once an object is gone, and what a job's snapshot holds."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

from kubetune.operator.watches import Watches

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def pod(name="j-head", job="j", node="spot-1", attempt="1", **status) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}-{attempt}",
                         "labels": {"kubetune.dev/finetunejob": job,
                                    "kubetune.dev/attempt": attempt}},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", **status}}


def node(name="spot-1", taints=()) -> dict:
    return {"metadata": {"name": name}, "spec": {"taints": list(taints)},
            "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": "t1"}]}}


def watches_with(*pods) -> tuple[Watches, list]:
    poked: list = []
    watches = Watches(poked.append, now=lambda: T0)
    index: dict = {}
    for p in pods:
        key = (p["metadata"]["namespace"], p["metadata"]["labels"]["kubetune.dev/finetunejob"])
        index.setdefault(key, []).append(p)
    watches.pods_index = index
    watches.nodes_index = {}
    return watches, poked


def test_a_pod_change_that_matters_pokes_its_job_once_and_noise_does_not():
    watches, poked = watches_with()
    running = pod()
    assert not watches.pod_event(None, running)  # the initial listing: no reconcile
    assert not watches.pod_event("MODIFIED", copy.deepcopy(running))  # nothing changed
    new_ip = pod(podIP="10.0.0.2")
    assert not watches.pod_event("MODIFIED", new_ip)
    disrupted = pod(conditions=[{"type": "DisruptionTarget", "status": "True",
                                 "reason": "EvictionByEvictionAPI"}])
    assert watches.pod_event("MODIFIED", disrupted)
    assert not watches.pod_event("MODIFIED", copy.deepcopy(disrupted))
    assert watches.pod_event("DELETED", disrupted)
    assert poked == [("ns", "j"), ("ns", "j")]


def test_a_deleted_pod_is_remembered_with_its_node_and_attempt():
    watches, _ = watches_with()
    watches.pod_event("DELETED", pod(node="spot-7", attempt="3"))
    watches.pod_event("DELETED", pod(name="cleanup", node="spot-8", attempt="x"))
    assert dict(watches.pod_nodes) == {("ns", "j", "j-head", 3): "spot-7"}
    view = watches.snapshot(None, ("ns", "j"))
    assert view.memory.pod_nodes == {("j-head", 3): "spot-7"}
    watches.forget_job(("ns", "j"))
    assert not watches.pod_nodes


def test_a_taint_or_a_deletion_pokes_the_jobs_on_that_node_heartbeats_do_not():
    mine, other, elsewhere = pod(), pod("k-head", job="k"), pod("l-head", job="l", node="spot-2")
    watches, poked = watches_with(mine, other, elsewhere)
    assert watches.node_event(None, node()) == 0
    heartbeat = node()
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "t2"
    assert watches.node_event("MODIFIED", heartbeat) == 0
    taint = {"key": "aws-node-termination-handler/spot-itn", "effect": "NoExecute"}
    assert watches.node_event("MODIFIED", node(taints=[taint])) == 2
    assert sorted(poked) == [("ns", "j"), ("ns", "k")]
    poked.clear()
    assert watches.node_event("DELETED", node(taints=[taint])) == 2
    assert sorted(poked) == [("ns", "j"), ("ns", "k")]
    assert watches.nodes_gone == {"spot-1": T0}
    watches.node_event("ADDED", node())  # the same name registered again
    assert "spot-1" not in watches.nodes_gone


def test_a_snapshot_holds_the_jobs_pods_their_nodes_and_what_vanished():
    mine, other = pod(), pod("k-head", job="k", node="spot-2")
    watches, _ = watches_with(mine, other)
    watches.nodes_index = {"spot-1": [node()], "spot-2": [node("spot-2")]}
    watches.node_event("DELETED", node("spot-9"))
    watches.pod_event("DELETED", pod(name="j-worker-1", node="spot-9"))
    view = watches.snapshot(None, ("ns", "j"))
    assert view.pods("ns", {"kubetune.dev/finetunejob": "j"}) == [mine]
    assert view.node("spot-1") == node() and view.node("spot-2") is None
    assert view.memory.nodes_gone == {"spot-9": T0}
    assert view.memory.pod_nodes == {("j-worker-1", 1): "spot-9"}
