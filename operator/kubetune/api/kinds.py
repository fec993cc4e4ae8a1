"""The two custom resource kinds: names, printer columns and their models in one place."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .common import API_GROUP, API_VERSION
from .finetunejob import FineTuneJobSpec
from .finetunejob_status import FineTuneJobStatus
from .modelserve import ModelServeSpec, ModelServeStatus
from .names import (
    FINETUNEJOB_LONGEST_SUFFIX,
    FINETUNEJOB_NAME_MAX,
    MODELSERVE_LONGEST_SUFFIX,
    MODELSERVE_NAME_MAX,
    name_problems,
    too_long_message,
)
from .validation import SpecError


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
    max_name_length: int
    longest_child_suffix: str

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

    def name_rule(self) -> dict:
        """The CRD's root CEL rule on metadata.name (see names.py for why the limit).

        It sits on the root because CEL sees metadata.name only from there; fieldPath
        makes the API server blame metadata.name instead of the whole object."""
        return {
            "rule": f"self.metadata.name.size() <= {self.max_name_length}",
            "message": too_long_message(self.kind, self.max_name_length, self.longest_child_suffix),
            "fieldPath": ".metadata.name",
            "reason": "FieldValueInvalid",
        }

    def check_name(self, name: str | None) -> None:
        """Refuse, naming metadata.name, a name the API server or the CRD would refuse."""
        problems = name_problems(self.kind, name, self.max_name_length, self.longest_child_suffix)
        if problems:
            raise SpecError(problems)


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
        {"name": "Eval", "type": "string", "jsonPath": ".status.evaluation.display"},
        {"name": "Recoveries", "type": "integer", "jsonPath": ".status.recoveries"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        # -o wide: GPU time by capacity type and what spot saved (with a price table).
        {"name": "Spot-GPU-s", "type": "number", "jsonPath": ".status.gpuSeconds.spot",
         "priority": 1},
        {"name": "OnDemand-GPU-s", "type": "number", "jsonPath": ".status.gpuSeconds.onDemand",
         "priority": 1},
        {"name": "Cost", "type": "number", "jsonPath": ".status.cost.spent", "priority": 1},
        {"name": "Saving", "type": "string", "jsonPath": ".status.cost.display", "priority": 1},
    ),
    description="A QLoRA/LoRA fine-tune on Ray workers, spot-aware, writing a LoRA adapter "
    "to object storage.",
    max_name_length=FINETUNEJOB_NAME_MAX,
    longest_child_suffix=FINETUNEJOB_LONGEST_SUFFIX,
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
    max_name_length=MODELSERVE_NAME_MAX,
    longest_child_suffix=MODELSERVE_LONGEST_SUFFIX,
)

KINDS: tuple[Kind, ...] = (FINETUNEJOB, MODELSERVE)
