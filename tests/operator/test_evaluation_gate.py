"""The promotion gate's rule (shared by the trainer's manifest and the operator's
decision) and the status folding of reported evaluations."""

from __future__ import annotations

import pytest

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus, SpecError, parse_spec
from kubetune.api.evaluation import EvaluationScores, PromotionGate, display, judge
from kubetune.operator import evaluation_status


def scores(**values) -> EvaluationScores:
    return EvaluationScores(step=0, examples=100, **values)


@pytest.mark.parametrize("gate, baseline, final, passed, fragment", [
    ({"metric": "exactMatch", "threshold": 0.9}, None, {"exact_match": 0.95}, True,
     "0.95 meets the gate: at least 0.9"),
    ({"metric": "exactMatch", "threshold": 0.9}, None, {"exact_match": 0.89}, False,
     "0.89 misses the gate: at least 0.9"),
    ({"metric": "exactMatch", "threshold": 0.9}, None, {"exact_match": 0.9}, True, "meets"),
    ({"metric": "loss", "threshold": 0.5}, None, {"loss": 0.4}, True, "at most 0.5"),
    ({"metric": "loss", "threshold": 0.5}, None, {"loss": 0.6}, False, "at most 0.5"),
    ({"metric": "loss", "minGain": 0.2}, {"loss": 1.0}, {"loss": 0.75}, True,
     "at most 0.8 (baseline 1 - minGain 0.2)"),
    ({"metric": "loss", "minGain": 0.2}, {"loss": 1.0}, {"loss": 0.85}, False, "misses"),
    ({"metric": "contains", "minGain": 0.5}, {"contains": 0.1}, {"contains": 0.7}, True,
     "at least 0.6 (baseline 0.1 + minGain 0.5)"),
    ({"metric": "contains", "minGain": 0.5}, {"contains": 0.1}, {"contains": 0.5}, False,
     "misses"),
    ({"metric": "contains", "minGain": 0.5}, None, {"contains": 0.9}, False, "no baseline"),
    ({"metric": "exactMatch", "threshold": 0.9}, None, {"loss": 0.1}, False, "not measured"),
])
def test_gate_verdicts(gate, baseline, final, passed, fragment):
    verdict = judge(PromotionGate.model_validate(gate),
                    scores(**baseline) if baseline else None, scores(**final))
    assert verdict.passed is passed, verdict
    assert fragment in verdict.message, verdict.message


def test_a_gate_without_a_final_evaluation_fails():
    verdict = judge(PromotionGate(metric="loss", threshold=1.0), None, None)
    assert not verdict.passed and "not measured" in verdict.message


def spec(**evaluation) -> FineTuneJobSpec:
    return parse_spec(FineTuneJobSpec, {
        "baseModel": {"uri": "s3://models/base"}, "dataset": {"uri": "s3://data/rows.jsonl"},
        "output": {"uri": "s3://out/adapters"}, "evaluation": evaluation})


def test_status_keeps_what_each_report_adds_and_shows_baseline_to_final():
    job = spec(gate={"metric": "exactMatch", "threshold": 0.9})
    status = evaluation_status.fold(FineTuneJobStatus(), job, {
        "baseline": {"step": 0, "examples": 100, "exactMatch": 0.02, "loss": 2.5}})
    assert status.evaluation.display == "exactMatch 0.02->..."
    status = evaluation_status.fold(status, job, {"latest": {"step": 20, "exactMatch": 0.5}})
    assert status.evaluation.display == "exactMatch 0.02->0.5"
    status = evaluation_status.fold(status, job, {"final": {"step": 60, "exactMatch": 0.97},
                                                  "baseline": "garbled"})
    assert status.evaluation.baseline.exact_match == 0.02  # a bad report changes nothing
    assert status.evaluation.display == "exactMatch 0.02->0.97"
    verdict = evaluation_status.verdict(job, status)
    assert verdict.passed and verdict.value == 0.97
    assert evaluation_status.verdict(spec(), status) is None  # no gate, no verdict
    assert evaluation_status.fold(status, job, None) is status


def test_display_without_a_spec_falls_back_to_loss():
    status = evaluation_status.fold(FineTuneJobStatus(), spec(metrics=["loss"]), {
        "baseline": {"loss": 2.0}, "final": {"loss": 0.5}})
    assert display(None, status.evaluation) == "loss 2->0.5"


def test_the_models_refuse_an_evaluation_without_rows_naming_the_field():
    with pytest.raises(SpecError, match="evaluation"):
        parse_spec(FineTuneJobSpec, {
            "baseModel": {"uri": "s3://models/base"},
            "dataset": {"uri": "s3://data/rows.jsonl", "evalFraction": 0},
            "output": {"uri": "s3://out/adapters"}, "evaluation": {}})
