"""The operator reacts to its pods and their nodes as they change, not on its timer: with
the reconcile timer at 60 s, an Eviction, a NoExecute spot-interruption taint and a Node
deleted each lead to the next attempt's pods within seconds (and, with the pod and node
watches off, an Eviction does not); an idle job's periodic reconcile asks the API
nothing (counted in the API server's audit log, the operator logged in as its own user).

The trainer image is mapped to a stand-in that sleeps and exits 75 on SIGTERM: what is
tested is the operator, not a checkpoint upload."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from ftj_harness import SPOT, wait_for

from kubetune.devenv import spot
from kubetune.devenv.controlplane import Identity
from kubetune.devenv.kubeapi import FINETUNEJOBS, PODS
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.s3 import free_port

pytestmark = pytest.mark.integration
IMAGE = "bench.local/sleeper:1"
LONG_TIMER = {"KUBETUNE_RECONCILE_INTERVAL": "60"}
# Eviction and taint: the watch sees the pod end at once (the stand-in exits on SIGTERM;
# spot backoff is 0). Node deleted: no kubelet reports the pod's end; it counts as
# stopped when the node watch saw the Node go (the default `deletedNodePods: Stopped`).
PROMPT = 5.0


def sleeper_image(folder: Path) -> dict:
    (folder / "bin").mkdir(parents=True)
    script = folder / "bin" / "python"
    script.write_text("#!/bin/sh\ntrap 'exit 75' TERM\nwhile :; do sleep 1 & wait $!; done\n")
    for path in (folder, folder / "bin", script):
        path.chmod(0o755)
    return {IMAGE.split(":")[0]: folder}


def job(name: str) -> dict:
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": {"baseModel": {"uri": "hf://org/model"},
                     "dataset": {"uri": "s3://data/train.jsonl"},
                     "training": {"maxSteps": 100},
                     "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "100m",
                                   "memory": "64Mi"},
                     "spot": {"enabled": True, "strategy": "StayOnSpot",
                              "checkpointBudgetSeconds": 1,
                              "backoff": {"initialSeconds": 0, "maxSeconds": 0}},
                     "images": {"trainer": IMAGE},
                     "output": {"uri": "s3://out/runs"}}}


@pytest.fixture
def sleepers(cluster, node_agent, tmp_path):
    agent = node_agent([NodeTemplate("spot-1", SPOT)],
                       image_environments=sleeper_image(tmp_path / "sleeper"))
    return cluster, agent


def head(cluster, name: str) -> dict | None:
    return cluster.api.get(PODS, f"{name}-head", cluster.namespace)


def running(cluster, name: str, attempt: int) -> dict:
    """The job's head pod of `attempt`, once it runs."""
    def check():
        pod = head(cluster, name)
        labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
        return pod if labels.get("kubetune.dev/attempt") == str(attempt) and \
            (pod.get("status") or {}).get("phase") == "Running" else None
    return wait_for(check, 60, f"{name} attempt {attempt} running")


def next_attempt_within(cluster, name: str, attempt: int, seconds: float) -> float:
    """Seconds until the head pod of `attempt` exists; AssertionError past `seconds`."""
    began = time.monotonic()

    def created():
        pod = head(cluster, name)
        labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
        return labels.get("kubetune.dev/attempt") == str(attempt)
    wait_for(created, seconds, f"{name} attempt {attempt} created", interval=0.05)
    return time.monotonic() - began


def test_eviction_taint_and_node_deletion_each_start_the_next_attempt_at_once(sleepers):
    cluster, agent = sleepers
    operator = cluster.operator(LONG_TIMER).start()
    try:
        cluster.api.create(FINETUNEJOBS, job("spotty"), cluster.namespace)
        running(cluster, "spotty", 1)
        spot.evict(cluster.api, cluster.namespace, "spotty-head")
        evicted = next_attempt_within(cluster, "spotty", 2, PROMPT)

        running(cluster, "spotty", 2)
        agent.add_node(NodeTemplate("spot-2", SPOT))
        spot.taint_no_execute(cluster.api, "spot-1")
        tainted = next_attempt_within(cluster, "spotty", 3, PROMPT)

        node = running(cluster, "spotty", 3)["spec"]["nodeName"]
        assert node == "spot-2"
        agent.add_node(NodeTemplate("spot-3", SPOT))
        spot.delete_node(cluster.api, node)
        deleted = next_attempt_within(cluster, "spotty", 4, PROMPT)
        print(f"next attempt after: eviction {evicted:.2f}s, taint {tainted:.2f}s, "
              f"node deleted {deleted:.2f}s (timer 60 s)")
        status = wait_for(lambda: (s := cluster.status("spotty")).get("attempt") == 4 and s,
                          10, "attempt 4 in status")
        assert (status["recoveries"], status["errorRetries"]) == (3, 0)
    finally:
        operator.stop()


def test_with_the_watches_off_the_same_eviction_waits_for_the_timer(sleepers):
    cluster, _ = sleepers
    operator = cluster.operator({**LONG_TIMER, "KUBETUNE_WATCH_CHILDREN": "0"}).start()
    try:
        cluster.api.create(FINETUNEJOBS, job("blind"), cluster.namespace)
        running(cluster, "blind", 1)  # created at once: the job's own events still count
        spot.evict(cluster.api, cluster.namespace, "blind-head")
        with pytest.raises(AssertionError, match="attempt 2 created"):
            next_attempt_within(cluster, "blind", 2, PROMPT)
    finally:
        operator.stop()


def test_with_the_watches_off_an_eviction_before_the_first_status_write_still_counts(sleepers):
    """The periodic run is the safety net, and an Eviction that comes while the attempt's
    first status write still waits for the scheduler's verdict is a recovery too: the
    pod is not silently created again under the same attempt."""
    cluster, _ = sleepers
    operator = cluster.operator({"KUBETUNE_RECONCILE_INTERVAL": "2",
                                 "KUBETUNE_WATCH_CHILDREN": "0"}).start()
    try:
        cluster.api.create(FINETUNEJOBS, job("timed"), cluster.namespace)
        running(cluster, "timed", 1)
        spot.evict(cluster.api, cluster.namespace, "timed-head")
        next_attempt_within(cluster, "timed", 2, 30)
        status = wait_for(lambda: (s := cluster.status("timed")).get("attempt") == 2 and s,
                          10, "attempt 2 in status")
        assert status["recoveries"] == 1
    finally:
        operator.stop()


def reconciles(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return int(re.search(r"^kubetune_operator_reconciles_total (\d+)", text, re.M).group(1))


@pytest.mark.parametrize("watch", [True, False], ids=["watches", "watches-off"])
def test_an_idle_jobs_periodic_reconcile_lists_no_pods_and_gets_no_node(sleepers, watch):
    cluster, _ = sleepers
    user = f"kubetune-operator-{cluster.namespace}"
    port = free_port()
    env = {"KUBECONFIG": str(cluster.control_plane.kubeconfig(
               Identity(user, ("system:masters",)), cluster.namespace)),
           "KUBETUNE_RECONCILE_INTERVAL": "1", "KUBETUNE_METRICS_PORT": str(port),
           "KUBETUNE_WATCH_CHILDREN": "1" if watch else "0"}
    operator = cluster.operator(env).start()
    try:
        cluster.api.create(FINETUNEJOBS, job("idle"), cluster.namespace)
        running(cluster, "idle", 1)
        wait_for(lambda: cluster.status("idle").get("phase") == "Running", 30, "Running")
        mark = cluster.control_plane.audit_mark()
        first = reconciles(port)
        wait_for(lambda: reconciles(port) >= first + 3, 30, "three periodic reconciles")
        ticks = reconciles(port) - first
        requests = [(e["verb"], (e.get("objectRef") or {}).get("resource"))
                    for e in cluster.control_plane.audit_events(user, mark)
                    if e["verb"] != "watch"]
        reads = [r for r in requests if r in (("list", "pods"), ("get", "nodes"))]
        if watch:
            assert requests == [], requests  # not a read, not a write
        else:  # what every tick cost before the watches: a LIST and a node GET
            assert len(reads) >= 2 * (ticks - 1), (ticks, requests)
    finally:
        operator.stop()
