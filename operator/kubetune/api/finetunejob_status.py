"""FineTuneJob status: written only by the operator, read by kubectl, GitOps tools and
ModelServes. Apart from the spec (finetunejob.py) so each stays a readable size."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import ApiModel, Condition
from .evaluation import EvaluationStatus
from .usage import AttemptUsage, CostStatus, GpuSeconds, UsageTotals

FineTunePhase = Literal[
    "Pending", "Scheduling", "Running", "Recovering", "Succeeded", "NotPromoted", "Failed"
]


class TrainingProgress(ApiModel):
    """Progress reported by the trainer."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Planned optimizer steps.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    percent: float | None = Field(default=None, ge=0, le=100, description="step / totalSteps.")
    display: str | None = Field(default=None, description="step/total (percent) for kubectl get.")
    loss: float | None = Field(default=None, description="Recent training loss.")
    eval_loss: float | None = Field(default=None, description="Latest eval loss.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Training throughput.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds left.")
    updated_at: datetime | None = Field(default=None, description="When the trainer reported.")


class CheckpointRef(ApiModel):
    """The newest complete checkpoint."""

    step: int = Field(ge=0, description="Optimizer step of the checkpoint.")
    uri: str = Field(description="Object-store prefix of the checkpoint.")
    time: datetime | None = Field(default=None, description="When it became complete.")


class AdapterRef(ApiModel):
    """The finished adapter."""

    uri: str = Field(description="Object-store prefix holding the adapter and its manifest.")
    sha256: str = Field(description="sha256 of manifest.json, which lists each file's sha256.")
    size_bytes: int | None = Field(default=None, ge=0, description="Total bytes of adapter files.")


class FineTuneJobStatus(ApiModel):
    """Observed state, written only by the operator."""

    phase: FineTunePhase | None = Field(default=None, description="Lifecycle phase.")
    message: str | None = Field(default=None, description="Why the job is in this phase.")
    conditions: list[Condition] = Field(default_factory=list, description="kstatus conditions.")
    observed_generation: int | None = Field(default=None, description="Last reconciled generation.")
    capacity_type: Literal["spot", "on-demand"] | None = Field(
        default=None, description="Capacity the current attempt runs on."
    )
    attempt: int | None = Field(
        default=None, ge=1, description="Current attempt (1 + recoveries + retries + fallbacks)."
    )
    next_attempt_after: datetime | None = Field(
        default=None, description="Backoff: the next attempt's pods are not created before this."
    )
    progress: TrainingProgress | None = Field(default=None, description="Trainer progress.")
    recoveries: int = Field(default=0, ge=0, description="Preemptions recovered from.")
    error_retries: int = Field(default=0, ge=0, description="Retries after user-code errors.")
    lost_steps: int = Field(default=0, ge=0, description="Steps redone after recoveries.")
    last_checkpoint: CheckpointRef | None = Field(default=None, description="Newest checkpoint.")
    adapter: AdapterRef | None = Field(default=None, description="The finished adapter.")
    gpu_seconds: GpuSeconds | None = Field(
        default=None, description="GPU time by capacity type, every attempt included."
    )
    attempts_usage: list[AttemptUsage] = Field(
        default_factory=list,
        description="Per attempt (the newest ones): capacity type, pods with node, start, end "
        "and GPU-seconds, and cost.",
    )
    older_attempts_usage: UsageTotals | None = Field(
        default=None, description="Totals of attempts no longer listed in attemptsUsage."
    )
    cost: CostStatus | None = Field(
        default=None, description="Cost so far from the operator's price table, and the saving "
        "against the same GPU time on demand.",
    )
    evaluation: EvaluationStatus | None = Field(
        default=None, description="Evaluation results and the promotion gate's verdict."
    )
    start_time: datetime | None = Field(default=None, description="When training first started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
