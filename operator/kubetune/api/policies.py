"""A FineTuneJob's recovery policies: spot preemptions and user-code errors, apart.

Split from finetunejob.py to keep that module readable; finetunejob re-exports them.
Cross-field rules appear twice, as CEL in the CRD and as validators, like the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, StrictBool, model_validator

from .common import ApiModel


class BackoffSpec(ApiModel):
    """Bounded exponential backoff between attempts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.initialSeconds <= self.maxSeconds",
                    "message": "initialSeconds must not exceed maxSeconds",
                }
            ]
        }
    )

    initial_seconds: int = Field(default=10, ge=0, le=3600, description="First delay.")
    max_seconds: int = Field(default=300, ge=0, le=86400, description="Largest delay.")

    @model_validator(mode="after")
    def _ordered(self) -> BackoffSpec:
        if self.initial_seconds > self.max_seconds:
            raise ValueError("initialSeconds must not exceed maxSeconds")
        return self


DEFAULT_MAX_RECOVERIES = 10
DEFAULT_FALLBACK_AFTER = 3
FALLBACK_NEVER_ACTS = (
    "fallbackAfterPreemptions must not exceed maxRecoveries with strategy "
    "FallbackToOnDemand: the job fails after maxRecoveries preemptions, before it would "
    "ever move to on-demand; lower fallbackAfterPreemptions, raise maxRecoveries, or use "
    "strategy StayOnSpot"
)


class SpotPolicy(ApiModel):
    """Spot capacity and recovery from preemption, counted apart from errors."""

    # Only with enabled: true. Without it the job starts on on-demand capacity, where the
    # strategy never acts; and a job that only bounds its recoveries (maxRecoveries: 2,
    # e.g. for Kueue evictions) is not refused for a default it never chose.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.enabled) && self.enabled) || "
                    "(has(self.strategy) ? self.strategy : 'FallbackToOnDemand') != "
                    "'FallbackToOnDemand' || "
                    "(has(self.fallbackAfterPreemptions) ? self.fallbackAfterPreemptions : "
                    f"{DEFAULT_FALLBACK_AFTER}) <= "
                    f"(has(self.maxRecoveries) ? self.maxRecoveries : {DEFAULT_MAX_RECOVERIES})",
                    "message": FALLBACK_NEVER_ACTS,
                }
            ]
        }
    )

    enabled: StrictBool = Field(default=False, description="Run on spot / preemptible nodes.")
    checkpoint_interval_steps: int = Field(
        default=50, ge=1, le=1_000_000,
        description="Checkpoint to object storage every N optimizer steps. A SIGTERM (the "
        "spot notice) checkpoints the current step too and loses nothing if the uploads end "
        "within checkpointBudgetSeconds (past it, the trainer exits and loses as much as a "
        "kill would). A kill without "
        "notice (SIGKILL, the node lost) loses the step in progress and those completed "
        "since the newest checkpoint in storage: at most N when no upload is in flight, at "
        "most 2N while one is, since uploads run in the background while training goes on "
        "(step kN's upload unfinished: the next attempt resumes from step (k-1)N, or from "
        "the start for the first).",
    )
    checkpoint_budget_seconds: int = Field(
        default=25,
        ge=1,
        le=600,
        description="Seconds the trainer has after SIGTERM to save a checkpoint (GKE gives 30).",
    )
    max_recoveries: int = Field(
        default=DEFAULT_MAX_RECOVERIES, ge=0, le=1000,
        description="Preemptions tolerated before the job fails.",
    )
    strategy: Literal["StayOnSpot", "FallbackToOnDemand"] = Field(
        default="FallbackToOnDemand", description="What to do after repeated preemptions."
    )
    fallback_after_preemptions: int = Field(
        default=DEFAULT_FALLBACK_AFTER, ge=1, le=1000,
        description="FallbackToOnDemand: preemptions before moving; on spot, at most "
        "maxRecoveries (the job would fail first).",
    )
    fallback_after_pending_seconds: int = Field(
        default=900,
        ge=30,
        le=86400,
        description="FallbackToOnDemand: seconds pods may wait for spot capacity before moving.",
    )
    backoff: BackoffSpec = Field(
        default_factory=BackoffSpec, description="Delay between recovery attempts."
    )

    @model_validator(mode="after")
    def _fallback_can_act(self) -> SpotPolicy:
        if (self.enabled and self.strategy == "FallbackToOnDemand"
                and self.fallback_after_preemptions > self.max_recoveries):
            raise ValueError(
                f"{FALLBACK_NEVER_ACTS} (fallbackAfterPreemptions "
                f"{self.fallback_after_preemptions} > maxRecoveries {self.max_recoveries})"
            )
        return self


class RetryPolicy(ApiModel):
    """Retries after user-code errors (bad data, OOM, crashes) — not preemptions."""

    max_error_retries: int = Field(default=2, ge=0, le=100, description="Retries after errors.")
    backoff: BackoffSpec = Field(default_factory=BackoffSpec, description="Delay between retries.")
