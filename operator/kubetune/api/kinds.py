"""The two custom resource kinds: names, printer columns and their models in one place."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .common import API_GROUP, API_VERSION
from .finetunejob import FineTuneJobSpec, FineTuneJobStatus
from .modelserve import ModelServeSpec, ModelServeStatus


@dataclass(frozen=True)
class Kind:
    """Everything that names a custom resource kind and shapes its CRD."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[dict, ...]
    description: str

    @property
    def group(self) -> str:
        return API_GROUP

    @property
    def version(self) -> str:
        return API_VERSION

    @property
    def api_version(self) -> str:
        return f"{API_GROUP}/{API_VERSION}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


FINETUNEJOB = Kind(
    kind="FineTuneJob",
    plural="finetunejobs",
    singular="finetunejob",
    short_names=("ftj",),
    spec_model=FineTuneJobSpec,
    status_model=FineTuneJobStatus,
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.display"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "Recoveries", "type": "integer", "jsonPath": ".status.recoveries"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
    description="A QLoRA/LoRA fine-tune on Ray workers, spot-aware, writing a LoRA adapter "
    "to object storage.",
)

MODELSERVE = Kind(
    kind="ModelServe",
    plural="modelserves",
    singular="modelserve",
    short_names=("ms",),
    spec_model=ModelServeSpec,
    status_model=ModelServeStatus,
    printer_columns=(
        {"name": "Ready", "type": "string", "jsonPath": ".status.readyDisplay"},
        {"name": "Adapters", "type": "string", "jsonPath": ".status.adaptersDisplay"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
    description="A base model plus many LoRA adapters from object storage behind an "
    "OpenAI-compatible API, hot-loading adapter changes.",
)

KINDS: tuple[Kind, ...] = (FINETUNEJOB, MODELSERVE)
