"""FineTuneJob evaluation: what is measured, when, and the gate an adapter must pass.

The spec half (`EvaluationSpec`) is read by the trainer, which measures; the status half
(`EvaluationStatus`) is written by the operator from what the trainer reports. The gate
verdict (`judge`) is pure and lives here so that the trainer (which records it in the
adapter's manifest) and the operator (which decides promotion from the numbers and the
spec it owns) apply one rule and cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, StringConstraints, model_validator

from .common import ApiModel

Metric = Literal["loss", "exactMatch", "contains"]
# Metrics that compare a greedy generation with the row's reference answer.
GENERATION_METRICS = ("exactMatch", "contains")
EVAL_DATA_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+"
    r"|file:///.+)$"
)


def lower_is_better(metric: str) -> bool:
    return metric == "loss"


class EvaluationDataset(ApiModel):
    """Held-out rows of their own; without one, the training dataset's evalFraction split."""

    uri: Annotated[str, StringConstraints(pattern=EVAL_DATA_URI_PATTERN, max_length=1024)] = (
        Field(description="s3://bucket/key.jsonl, pvc://claim/path or file:///path of the rows.")
    )
    format: Literal["alpaca", "chat", "text"] | None = Field(
        default=None, description="Row format; defaults to the training dataset's format."
    )


class EvaluationSchedule(ApiModel):
    """When the trainer evaluates."""

    baseline: StrictBool = Field(
        default=True, description="Before the first step, on the base model (the baseline)."
    )
    every_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Also every N optimizer steps."
    )
    end: StrictBool = Field(default=True, description="After the last step (the final result).")


class PromotionGate(ApiModel):
    """The bar an adapter must clear to be promoted (served through fineTuneJobRef)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.threshold) != has(self.minGain)",
                    "message": "set exactly one of threshold or minGain",
                }
            ]
        }
    )

    metric: Metric = Field(description="The metric judged: loss, exactMatch or contains.")
    threshold: float | None = Field(
        default=None,
        ge=0,
        description="Absolute bar: the final loss at most this, or the final exactMatch / "
        "contains (a fraction, 0-1) at least this.",
    )
    min_gain: float | None = Field(
        default=None,
        description="Relative bar: the final value must improve on the baseline by at least "
        "this (loss falls, exactMatch / contains rise); needs when.baseline.",
    )

    @model_validator(mode="after")
    def _one_bar(self) -> PromotionGate:
        if (self.threshold is None) == (self.min_gain is None):
            raise ValueError("set exactly one of threshold or minGain")
        return self


class EvaluationSpec(ApiModel):
    """Evaluation on held-out rows, and an optional promotion gate."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gate) || (has(self.metrics) ? "
                    "self.metrics.exists(m, m == self.gate.metric) : "
                    "self.gate.metric in ['loss', 'exactMatch'])",
                    "message": "gate.metric must be one of metrics",
                },
                {
                    "rule": "!has(self.gate) || !has(self.when) || !has(self.when.end) || "
                    "self.when.end",
                    "message": "a gate needs when.end: it judges the final evaluation",
                },
                {
                    "rule": "!has(self.gate) || !has(self.gate.minGain) || !has(self.when) || "
                    "!has(self.when.baseline) || self.when.baseline",
                    "message": "gate.minGain needs when.baseline: it is a gain over the baseline",
                },
            ]
        }
    )

    dataset: EvaluationDataset | None = Field(
        default=None,
        description="Rows to evaluate on; defaults to the held-out split (dataset.evalFraction).",
    )
    metrics: list[Metric] = Field(
        default_factory=lambda: ["loss", "exactMatch"],
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="loss (mean per answer token), exactMatch (greedy answer equals the "
        "reference), contains (greedy answer contains the reference).",
    )
    max_examples: int = Field(
        default=100, ge=1, le=100_000, description="Evaluate on at most this many rows."
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=4096, description="Tokens generated per row for exactMatch/contains."
    )
    when: EvaluationSchedule = Field(
        default_factory=EvaluationSchedule, description="Baseline, every N steps, at the end."
    )
    gate: PromotionGate | None = Field(
        default=None, description="Promote the adapter only if the final evaluation passes."
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationSpec:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("metrics: each metric at most once")
        if self.gate is not None:
            if self.gate.metric not in self.metrics:
                raise ValueError(f"gate.metric {self.gate.metric} must be one of metrics")
            if not self.when.end:
                raise ValueError("a gate needs when.end: it judges the final evaluation")
            if self.gate.min_gain is not None and not self.when.baseline:
                raise ValueError("gate.minGain needs when.baseline: it is a gain over the baseline")
        return self

    def generates(self) -> bool:
        return any(m in GENERATION_METRICS for m in self.metrics)


class EvaluationScores(ApiModel):
    """One evaluation's results."""

    step: int | None = Field(default=None, ge=0, description="Optimizer step evaluated at.")
    examples: int | None = Field(default=None, ge=0, description="Rows evaluated.")
    loss: float | None = Field(default=None, description="Mean loss per answer token.")
    exact_match: float | None = Field(
        default=None, ge=0, le=1, description="Share of rows answered exactly."
    )
    contains: float | None = Field(
        default=None, ge=0, le=1, description="Share of answers containing the reference."
    )

    def value(self, metric: str) -> float | None:
        return {"loss": self.loss, "exactMatch": self.exact_match,
                "contains": self.contains}[metric]


class GateVerdict(ApiModel):
    """The gate applied to the final evaluation."""

    metric: Metric = Field(description="The metric judged.")
    passed: StrictBool = Field(description="Whether the adapter cleared the bar.")
    value: float | None = Field(default=None, description="The final value of the metric.")
    required: float = Field(description="The bar the final value had to reach.")
    message: str = Field(description="The verdict in words.")


class EvaluationStatus(ApiModel):
    """Baseline, latest and final results, and the gate's verdict."""

    baseline: EvaluationScores | None = Field(default=None, description="Before training.")
    latest: EvaluationScores | None = Field(default=None, description="Newest during training.")
    final: EvaluationScores | None = Field(default=None, description="After the last step.")
    gate: GateVerdict | None = Field(default=None, description="The promotion gate's verdict.")
    display: str | None = Field(default=None, description="Baseline -> final for kubectl get.")


def scores_of(reported) -> EvaluationScores | None:
    """The trainer's JSON for one evaluation, or None when absent or malformed."""
    if not isinstance(reported, dict):
        return None
    try:
        return EvaluationScores.model_validate(reported)
    except ValueError:
        return None


def judge(gate: PromotionGate, baseline: EvaluationScores | None,
          final: EvaluationScores | None) -> GateVerdict:
    """Pass or fail, with the reason in words. A metric that was not measured fails."""
    value = final.value(gate.metric) if final is not None else None
    lower = lower_is_better(gate.metric)
    if gate.threshold is not None:
        required = gate.threshold
        bar = f"{'at most' if lower else 'at least'} {required:.4g}"
    else:
        before = baseline.value(gate.metric) if baseline is not None else None
        if before is None:
            return GateVerdict(metric=gate.metric, passed=False, value=value, required=0.0,
                               message=f"{gate.metric} has no baseline to gain over")
        required = before - gate.min_gain if lower else before + gate.min_gain
        bar = (f"{'at most' if lower else 'at least'} {required:.4g} "
               f"(baseline {before:.4g} {'-' if lower else '+'} minGain {gate.min_gain:.4g})")
    if value is None:
        return GateVerdict(metric=gate.metric, passed=False, value=None, required=required,
                           message=f"final {gate.metric} was not measured; needed {bar}")
    passed = value <= required if lower else value >= required
    verb = "meets" if passed else "misses"
    return GateVerdict(metric=gate.metric, passed=passed, value=value, required=required,
                       message=f"final {gate.metric} {value:.4g} {verb} the gate: {bar}")


def display(spec: EvaluationSpec | None, status: EvaluationStatus) -> str | None:
    """'exactMatch 0.02->0.97' (the gate's metric, else the first measured one)."""
    order = ([spec.gate.metric] if spec and spec.gate else []) + list(spec.metrics if spec else [])
    for metric in order or ["loss"]:
        before = status.baseline.value(metric) if status.baseline else None
        after = (status.final or status.latest)
        after_value = after.value(metric) if after else None
        if before is None and after_value is None:
            continue
        left = f"{before:.3g}" if before is not None else "?"
        right = f"{after_value:.3g}" if after_value is not None else "..."
        return f"{metric} {left}->{right}"
    return None
