"""What a FineTuneJob used: GPU time by capacity type."""

from __future__ import annotations

from pydantic import Field

from .common import ApiModel


class GpuSeconds(ApiModel):
    """GPU time used, by capacity type."""

    spot: float = Field(default=0.0, ge=0, description="GPU-seconds on spot capacity.")
    on_demand: float = Field(default=0.0, ge=0, description="GPU-seconds on on-demand capacity.")
