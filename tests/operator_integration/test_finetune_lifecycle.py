"""The operator process, the real control plane, a node agent running the real trainer
(Ray Train, QLoRA on the tiny model) and moto S3, end to end; spot interruptions arrive
as a cloud delivers them (a NoExecute taint, a Node deleted) and the real controllers
act on them."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest
from ftj_harness import BUCKET, SPOT, finetunejob, wait_for

from kubetune.devenv import spot
from kubetune.devenv.kubeapi import FINETUNEJOBS, PODS
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.s3 import free_port
from kubetune.devenv.tools import tool_path

pytestmark = [pytest.mark.slow, pytest.mark.integration]
RUN_TIMEOUT = 240


def s3_keys(s3, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def kubectl_row(cluster, name: str) -> dict:
    """The job's row of real `kubectl get ftj`."""
    out = subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(cluster.kubeconfig),
                          "get", "ftj", "-n", cluster.namespace], capture_output=True, text=True,
                         timeout=30, check=True).stdout.splitlines()
    header = re.split(r"\s{2,}", out[0].strip())
    rows = [dict(zip(header, re.split(r"\s{2,}", line.strip()))) for line in out[1:]]
    return next(row for row in rows if row["NAME"] == name)


def test_apply_to_succeeded_with_adapter_in_s3_then_delete_cleans_checkpoints(
        training_cluster, tiny_model_path):
    cluster, agent = training_cluster
    port = free_port()
    operator = cluster.operator({"KUBETUNE_METRICS_PORT": str(port)}).start()
    try:
        s3 = cluster.s3
        cluster.api.create(FINETUNEJOBS, finetunejob(
            "alpaca", tiny_model_path, s3.endpoint, **{"training.maxSteps": 80,
                                                       "spot.checkpointIntervalSteps": 20}),
            cluster.namespace)
        moving = wait_for(lambda: (p := cluster.status("alpaca").get("progress")) and
                          p.get("step", 0) > 0 and p, RUN_TIMEOUT, "training progress")
        # Visible within 30 s of the trainer reporting it (the timer polls every 2 s).
        reported = moving["updatedAt"].replace("Z", "+00:00")
        from datetime import datetime, timezone
        assert (datetime.now(timezone.utc) - datetime.fromisoformat(reported)).total_seconds() < 30
        row = kubectl_row(cluster, "alpaca")
        assert re.fullmatch(r"\d+/80 \(\d+%\)", row["PROGRESS"]), row
        assert row["PHASE"] in ("Running", "Succeeded") and float(row["LOSS"]) > 0

        status = cluster.wait_phase("alpaca", {"Succeeded", "Failed"}, RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
        adapter = status["adapter"]
        prefix = f"runs/{cluster.namespace}/alpaca/adapter/"
        assert adapter["uri"] == f"s3://{BUCKET}/{prefix.rstrip('/')}"
        keys = s3_keys(s3, prefix)
        assert prefix + "manifest.json" in keys and prefix + "adapter_model.safetensors" in keys
        manifest = s3.client().get_object(Bucket=BUCKET, Key=prefix + "manifest.json")
        import hashlib
        assert hashlib.sha256(manifest["Body"].read()).hexdigest() == adapter["sha256"]
        assert (status["recoveries"], status["errorRetries"], status["attempt"]) == (0, 0, 1)
        assert status["progress"]["display"] == "80/80 (100%)" and status["completionTime"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False",
                              "Succeeded": "True", "Failed": "False", "Promoted": "True"}
        reasons = {e["reason"] for e in cluster.events("alpaca")}
        assert {"Training", "TrainingSucceeded"} <= reasons
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert re.search(r"^kubetune_operator_reconciles_total [1-9]", text, re.M)
        from kubetune.devenv.s3 import SECRET_ACCESS_KEY
        for event in cluster.events("alpaca"):
            assert SECRET_ACCESS_KEY not in json.dumps(event)
        assert SECRET_ACCESS_KEY not in json.dumps(status)
        assert SECRET_ACCESS_KEY not in operator.log_text()

        checkpoints = f"runs/{cluster.namespace}/alpaca/checkpoints/"
        assert s3_keys(s3, checkpoints), "the run should have left checkpoints"
        cluster.api.delete(FINETUNEJOBS, "alpaca", cluster.namespace)
        wait_for(lambda: cluster.job("alpaca") is None, 90, "the finalizer to be released")
        assert s3_keys(s3, checkpoints) == []
        assert prefix + "manifest.json" in s3_keys(s3, prefix)  # the adapter is never deleted
        assert [p for p in cluster.pods() if p["metadata"]["name"].startswith("alpaca")] == []
    finally:
        operator.stop()


def test_two_preemptions_recover_without_losing_steps(training_cluster, tiny_model_path):
    cluster, agent = training_cluster
    operator = cluster.operator().start()
    try:
        s3 = cluster.s3
        cluster.api.create(FINETUNEJOBS, finetunejob(
            "spotty", tiny_model_path, s3.endpoint, **{"training.maxSteps": 200,
                                                       "spot.checkpointIntervalSteps": 10}),
            cluster.namespace)
        running_at = lambda attempt, step: (  # noqa: E731
            (s := cluster.status("spotty")).get("attempt") == attempt
            and s.get("phase") == "Running" and (s.get("progress") or {}).get("step", 0) >= step)
        wait_for(lambda: running_at(1, 15), RUN_TIMEOUT, "attempt 1 to train")
        # The interruption notice as a termination handler gives it: a NoExecute taint. The
        # controller manager's taint eviction sets DisruptionTarget and deletes the pod;
        # the node agent sends SIGTERM; a replacement node comes up.
        agent.add_node(NodeTemplate("spot-2", SPOT))
        spot.taint_no_execute(cluster.api, "spot-1")
        wait_for(lambda: running_at(2, 1), RUN_TIMEOUT, "attempt 2 to train")
        wait_for(lambda: running_at(2, cluster.status("spotty")["lastCheckpoint"]["step"] + 5),
                 RUN_TIMEOUT, "attempt 2 to go past its checkpoint")
        # The machine goes away: its Node object is deleted. Pod GC marks and deletes the pod.
        agent.add_node(NodeTemplate("spot-3", SPOT))
        spot.delete_node(cluster.api, "spot-2")
        status = cluster.wait_phase("spotty", {"Succeeded", "Failed"}, RUN_TIMEOUT)
        assert status["phase"] == "Succeeded", status
        assert (status["recoveries"], status["errorRetries"], status["lostSteps"]) == (2, 0, 0)
        assert status["attempt"] == 3 and status["adapter"]["sha256"]
        preempted = [e for e in cluster.events("spotty") if e["reason"] == "Preempted"]
        assert preempted, "each recovery is announced"
        # Both preempted trainers ended non-zero and were still counted as recoveries, not
        # errors (the trainer's own code is 75; one killed after its grace period is 137).
        runs = [h for h in agent.history if h["name"] == "spotty-head"]
        exits = [h["exitCode"] for h in runs]
        assert len(exits) == 3 and 0 not in exits[:2] and exits[-1] == 0, exits
        assert [h["node"] for h in runs] == ["spot-1", "spot-2", "spot-3"]
        reasons = {e["reason"] for e in cluster.events("spotty") if e["reason"] == "Preempted"}
        assert reasons
    finally:
        operator.stop()


def test_bad_dataset_fails_after_error_retries_naming_the_cause(training_cluster,
                                                                tiny_model_path):
    cluster, agent = training_cluster
    operator = cluster.operator().start()
    try:
        s3 = cluster.s3
        cluster.api.create(FINETUNEJOBS, finetunejob(
            "baddata", tiny_model_path, s3.endpoint,
            **{"dataset.uri": "file:///nonexistent/kubetune/data.jsonl"}), cluster.namespace)
        status = cluster.wait_phase("baddata", {"Succeeded", "Failed"}, RUN_TIMEOUT)
        assert status["phase"] == "Failed"
        assert (status["recoveries"], status["errorRetries"], status["attempt"]) == (0, 1, 2)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["status"] == "True" and failed["reason"] == "ErrorBudgetExhausted"
        assert "no such file /nonexistent/kubetune/data.jsonl" in failed["message"]
        wanted = {"RetryingAfterError", "ErrorBudgetExhausted"}  # Kopf posts Events in batches
        wait_for(lambda: {e["reason"] for e in cluster.events("baddata")
                          if e["type"] == "Warning"} >= wanted, 15, f"Warning Events {wanted}")
        # The failed head stays for `kubectl logs`; nothing else is left running.
        assert [p["metadata"]["name"] for p in cluster.api.list(PODS, cluster.namespace)] == \
            ["baddata-head"]
    finally:
        operator.stop()

