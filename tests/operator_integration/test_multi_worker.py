"""A two-worker FineTuneJob end to end on the real control plane: the Ray head and the
Ray worker land on two different nodes (the job's own anti-affinity), train together over
the pod network, are preempted once by an Eviction of the worker, and finish with no
step lost."""

from __future__ import annotations

import pytest
from ftj_harness import SPOT, finetunejob, wait_for

from kubetune.devenv import spot
from kubetune.devenv.nodeagent import NodeTemplate

pytestmark = [pytest.mark.slow, pytest.mark.integration]
RUN_TIMEOUT = 360


def spread(job: str) -> dict:
    """Every pod of the job on a node of its own, as a platform team asks of Ray pods."""
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"kubetune.dev/finetunejob": job}},
        "topologyKey": "kubernetes.io/hostname"}]}}


def test_two_workers_on_two_nodes_survive_a_preemption_without_losing_steps(
        training_cluster, tiny_model_path):
    cluster, agent = training_cluster
    agent.add_node(NodeTemplate("spot-2", SPOT))
    operator = cluster.operator().start()
    try:
        cluster.create(finetunejob(
            "duo", tiny_model_path, cluster.s3.endpoint,
            **{"training.maxSteps": 60, "spot.checkpointIntervalSteps": 10,
               "resources.workers": 2, "resources.affinity": spread("duo")}))

        def placed(attempt: int) -> dict[str, str]:
            pods = [p for p in cluster.pods()
                    if p["metadata"]["labels"].get("kubetune.dev/attempt") == str(attempt)
                    and (p.get("status") or {}).get("phase") == "Running"]
            return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods}

        def training(attempt: int, step: int) -> bool:
            status = cluster.status("duo")
            return (status.get("attempt") == attempt and status.get("phase") == "Running"
                    and (status.get("progress") or {}).get("step", 0) >= step)

        wait_for(lambda: training(1, 12), RUN_TIMEOUT, "attempt 1 to train with two workers")
        first = placed(1)
        assert set(first) == {"duo-head", "duo-worker-1"}, first
        assert len(set(first.values())) == 2, f"both pods on one node: {first}"

        agent.add_node(NodeTemplate("spot-3", SPOT))  # the preempted worker's replacement
        spot.evict(cluster.api, cluster.namespace, "duo-worker-1")
        status = cluster.wait_phase("duo", {"Succeeded", "Failed"}, RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
        assert (status["recoveries"], status["errorRetries"], status["lostSteps"]) == (1, 0, 0)
        assert status["attempt"] == 2 and status["adapter"]["sha256"]
        # The evicted worker passed its notice to the head, which checkpointed and stopped
        # with 75 (no step lost, above); the head of attempt 2 finished the job. The worker
        # itself exits 75 once the head is gone, or is killed (137) if its grace period
        # ran out first on a loaded machine: it never fails as user code would.
        runs = [(h["name"], h["exitCode"]) for h in agent.history if h["name"].startswith("duo-")]
        assert ("duo-head", 75) in runs and runs.count(("duo-head", 0)) == 1, runs
        worker_exits = [code for name, code in runs if name == "duo-worker-1"]
        assert worker_exits and set(worker_exits) <= {75, 137}, runs
    finally:
        operator.stop()
