"""The promotion gate through the operator: a FineTuneJob whose adapter misses its gate
ends NotPromoted (kstatus Failed, the reason in every condition, `kubectl wait` and
`kubectl get ftj` show it), and a ModelServe referencing the job does not serve the
adapter unless the reference allows unpromoted adapters.

The job runs the real trainer on the tiny base (two steps cannot teach it to add one to
each digit, so exact match stays near zero); the ModelServe's pods stay Pending (no
on-demand node here), which is enough: what is refused never reaches the adapter list
its pods would load.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from ftj_harness import REPO, finetunejob, wait_for

from kubetune.devenv.kubeapi import CONFIGMAPS, FINETUNEJOBS, MODELSERVES
from kubetune.devenv.tools import tool_path

pytestmark = [pytest.mark.slow, pytest.mark.integration]
RUN_TIMEOUT = 240
DIGITS = REPO / "examples" / "data" / "digits-add-one.jsonl"
DIGITS_EVAL = REPO / "examples" / "data" / "digits-add-one-eval.jsonl"


def gated_job(model, endpoint: str) -> dict:
    return finetunejob("gated", model, endpoint, **{
        "dataset": {"uri": f"file://{DIGITS}", "format": "alpaca", "evalFraction": 0.1},
        "training.maxSteps": 2,
        "evaluation": {"dataset": {"uri": f"file://{DIGITS_EVAL}"}, "metrics": ["exactMatch"],
                       "maxExamples": 20, "maxNewTokens": 12,
                       "gate": {"metric": "exactMatch", "threshold": 0.9}}})


def serve(model) -> dict:
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
            "metadata": {"name": "gated-serve"},
            "spec": {"baseModel": {"uri": f"file://{model}"},
                     "adapters": [
                         {"name": "strict", "fineTuneJobRef": {"name": "gated"}},
                         {"name": "lenient", "fineTuneJobRef": {"name": "gated",
                                                                "allowUnpromoted": True}}],
                     "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"}}}


def kubectl(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(cluster.kubeconfig),
                           "-n", cluster.namespace, *args], capture_output=True, text=True,
                          timeout=60)


def test_a_missed_gate_ends_not_promoted_and_the_modelserve_does_not_load_it(
        training_cluster, tiny_model_path):
    cluster, _agent = training_cluster
    operator = cluster.operator().start()
    try:
        cluster.api.create(FINETUNEJOBS, gated_job(tiny_model_path, cluster.s3.endpoint),
                           cluster.namespace)
        cluster.api.create(MODELSERVES, serve(tiny_model_path), cluster.namespace)
        waited = kubectl(cluster, "wait", "--for=condition=Failed", "ftj/gated",
                         f"--timeout={RUN_TIMEOUT}s")
        assert waited.returncode == 0, (waited.stderr, cluster.status("gated"),
                                        operator.log_text()[-3000:])
        status = cluster.status("gated")
        assert status["phase"] == "NotPromoted", status
        conditions = {c["type"]: c for c in status["conditions"]}
        assert {t: c["status"] for t, c in conditions.items()} == {
            "Ready": "False", "Reconciling": "False", "Stalled": "True",
            "Succeeded": "False", "Failed": "True", "Promoted": "False"}
        promoted = conditions["Promoted"]
        assert promoted["reason"] == "GateNotMet"
        assert "not promoted" in promoted["message"] and "misses the gate" in promoted["message"]
        assert status["adapter"]["uri"] in promoted["message"]  # written, for inspection
        gate = status["evaluation"]["gate"]
        assert gate["passed"] is False and gate["required"] == 0.9
        assert status["evaluation"]["final"]["exactMatch"] < 0.9
        assert status["evaluation"]["display"].startswith("exactMatch ")
        row = kubectl(cluster, "get", "ftj", "gated", "--no-headers").stdout.split()
        assert row[1] == "NotPromoted" and status["evaluation"]["display"] in " ".join(row), row
        warnings = [e for e in cluster.events("gated") if e["reason"] == "GateNotMet"]
        assert warnings and warnings[0]["type"] == "Warning"

        def adapters():
            body = cluster.api.get(MODELSERVES, "gated-serve", cluster.namespace) or {}
            found = {a["name"]: a for a in (body.get("status") or {}).get("adapters") or []}
            return found if found.get("strict", {}).get("state") == "Failed" else None

        found = wait_for(adapters, 60, "the ModelServe to refuse the unpromoted adapter")
        assert "did not promote" in found["strict"]["message"], found
        assert found["lenient"]["state"] != "Failed" and \
            found["lenient"]["uri"] == status["adapter"]["uri"], found
        config = cluster.api.get(CONFIGMAPS, "gated-serve-serve-config", cluster.namespace)
        listed = json.loads(next(iter(config["data"].values())))["adapters"]
        assert [a["name"] for a in listed] == ["lenient"], listed
        assert listed[0]["sha256"] == status["adapter"]["sha256"]
    finally:
        operator.stop()



