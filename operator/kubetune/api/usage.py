"""What a FineTuneJob used: GPU time per attempt and pod, by capacity type, and its cost.

Kept per attempt in status (not recomputed from pods) because the pods are gone exactly
when it matters: a spot node is deleted with its pods, the operator deletes an ended
attempt's pods, and the operator itself may restart in between. Each pod's record is
opened from its own container start time and closed from its own finish time, or, when
the pod or its node vanished first, from the moment the operator saw it go.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import ApiModel

CapacityType = Literal["spot", "on-demand"]
EndedBy = Literal["Terminated", "PodDeleted", "NodeDeleted", "AttemptEnded"]


class GpuSeconds(ApiModel):
    """GPU time used, by capacity type."""

    spot: float = Field(default=0.0, ge=0, description="GPU-seconds on spot capacity.")
    on_demand: float = Field(default=0.0, ge=0, description="GPU-seconds on on-demand capacity.")


class PodUsage(ApiModel):
    """One pod of an attempt: where it ran and for how long."""

    name: str = Field(description="Pod name.")
    node: str | None = Field(default=None, description="Node it ran on.")
    instance_type: str | None = Field(
        default=None, description="The node's node.kubernetes.io/instance-type label."
    )
    gpus: int = Field(default=0, ge=0, description="GPUs the pod held.")
    start_time: datetime = Field(description="When its main container started.")
    end_time: datetime | None = Field(default=None, description="When it stopped; empty: running.")
    ended_by: EndedBy | None = Field(
        default=None, description="Terminated (its own finish time), PodDeleted or NodeDeleted "
        "(when the operator saw it vanish), AttemptEnded (when the attempt was ended).",
    )


class AttemptUsage(ApiModel):
    """One attempt's GPU time and cost."""

    attempt: int = Field(ge=1, description="Attempt number.")
    capacity_type: CapacityType = Field(description="Capacity the attempt ran on.")
    pods: list[PodUsage] = Field(default_factory=list, description="Its pods that started.")
    gpu_seconds: float = Field(
        default=0.0, ge=0,
        description="GPU-seconds of its ended pods (running ones count in status.gpuSeconds).",
    )
    cost: float | None = Field(default=None, ge=0, description="Cost at the configured prices.")
    on_demand_cost: float | None = Field(
        default=None, ge=0, description="What the same GPU time costs on demand."
    )


class UsageTotals(ApiModel):
    """Sums over attempts dropped from the list (status stays bounded)."""

    attempts: int = Field(default=0, ge=0, description="How many attempts these are.")
    gpu_seconds: GpuSeconds = Field(default_factory=GpuSeconds, description="By capacity type.")
    cost: float = Field(default=0.0, ge=0, description="Their priced cost.")
    on_demand_cost: float = Field(default=0.0, ge=0, description="Their on-demand equivalent.")
    unpriced_gpu_seconds: float = Field(default=0.0, ge=0, description="GPU time with no price.")


class CostStatus(ApiModel):
    """Cost so far and the saving against on-demand, from the operator's price table."""

    currency: str = Field(description="Currency of the price table.")
    spent: float = Field(ge=0, description="Cost of the GPU time used so far.")
    on_demand_equivalent: float = Field(
        ge=0, description="What the same GPU time would have cost on on-demand capacity."
    )
    saving: float = Field(description="onDemandEquivalent - spent.")
    saving_percent: float | None = Field(default=None, description="saving / onDemandEquivalent.")
    unpriced_gpu_seconds: float = Field(
        default=0.0, ge=0, description="GPU time whose capacity or instance type has no price."
    )
    display: str = Field(description="Saving for kubectl get -o wide, e.g. 'USD 3.40 (68%)'.")
