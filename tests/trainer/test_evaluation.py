"""spec.evaluation in the trainer: baseline, during and final scores on held-out rows,
exact match by greedy generation, the gate's verdict in the manifest, and a SIGTERM
during an evaluation honoured like any other.

The task is the embedded default's (add one to each digit, on the pre-trained tiny
base), so the numbers mean something: the base cannot do it, the adapter learns it.
"""

from __future__ import annotations

import json

import pytest
from trainer_support import BUCKET, REPO, job_spec

pytestmark = pytest.mark.slow

DIGITS = REPO / "examples" / "data" / "digits-add-one.jsonl"
DIGITS_EVAL = REPO / "examples" / "data" / "digits-add-one-eval.jsonl"
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def digits_job(model, name: str, steps: int, **evaluation) -> dict:
    return job_spec(
        model, name,
        **{"dataset": {"uri": f"file://{DIGITS}", "format": "alpaca", "evalFraction": 0.1},
           "method": {"type": "qlora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.05,
                                                "targetModules": ALL_MODULES},
                      "quantization": {"computeDtype": "float32"}},
           "training": {"maxSteps": steps, "learningRate": 3e-3, "scheduler": "constant",
                        "batchSize": 8, "maxSeqLength": 64, "seed": 42},
           "spot": {"enabled": True, "checkpointIntervalSteps": 10,
                    "checkpointBudgetSeconds": 25},
           "evaluation": {"dataset": {"uri": f"file://{DIGITS_EVAL}"},
                          "metrics": ["loss", "exactMatch", "contains"], "maxNewTokens": 12,
                          **evaluation}})


def manifest_of(s3, name: str) -> dict:
    key = f"runs/team-a/{name}/adapter/manifest.json"
    return json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_the_adapter_learns_what_the_base_cannot_and_passes_the_gate(
        tiny_model, s3, start_trainer):
    trainer = start_trainer(digits_job(
        tiny_model, "learns", 60, when={"everySteps": 20},
        gate={"metric": "exactMatch", "threshold": 0.9}))
    during = trainer.wait_for(lambda p: "latest" in (p.get("evaluation") or {}), timeout=240)
    code, summary = trainer.wait(timeout=300)
    assert code == 0, trainer.log_tail()
    evaluation = summary["evaluation"]
    baseline, final = evaluation["baseline"], evaluation["final"]
    assert baseline["step"] == 0 and final["step"] == 60
    assert baseline["examples"] == final["examples"] == 100
    assert baseline["exactMatch"] <= 0.10, baseline
    assert final["exactMatch"] >= 0.90, final
    assert final["contains"] >= final["exactMatch"]
    assert final["loss"] < baseline["loss"]
    assert during["evaluation"]["latest"]["step"] in (20, 40)
    assert evaluation["latest"]["step"] == 40
    gate = evaluation["gate"]
    assert gate["passed"] is True and gate["metric"] == "exactMatch", gate
    recorded = manifest_of(s3, "learns")["metrics"]["evaluation"]
    assert recorded["final"] == final and recorded["gate"] == gate
    print(f"exactMatch baseline {baseline['exactMatch']:.2f} final {final['exactMatch']:.2f}; "
          f"loss {baseline['loss']:.3f} -> {final['loss']:.3f}")


def test_a_missed_gate_is_recorded_in_the_manifest(tiny_model, s3, start_trainer):
    """Two steps cannot teach the task: the adapter is still written, with the verdict."""
    trainer = start_trainer(digits_job(
        tiny_model, "misses", 2, metrics=["exactMatch"], maxExamples=20,
        gate={"metric": "exactMatch", "minGain": 0.5}))
    code, summary = trainer.wait(timeout=240)
    assert code == 0, trainer.log_tail()
    gate = summary["evaluation"]["gate"]
    assert gate["passed"] is False and "misses the gate" in gate["message"], gate
    assert "loss" not in summary["evaluation"]["final"]
    assert manifest_of(s3, "misses")["metrics"]["evaluation"]["gate"] == gate


def test_sigterm_during_the_baseline_evaluation_exits_75_within_the_budget(
        tiny_model, start_trainer):
    trainer = start_trainer(digits_job(tiny_model, "cut-short", 10, maxNewTokens=64))
    trainer.wait_for(lambda p: p.get("phase") == "Evaluating", timeout=180)
    code, summary, seconds = trainer.stop()
    assert code == 75, trainer.log_tail()
    assert summary["result"] == "Preempted", summary
    assert not summary.get("steps") and not summary.get("wroteCheckpoint"), summary
    assert seconds < 25, seconds
    trainer.assert_nothing_left()
