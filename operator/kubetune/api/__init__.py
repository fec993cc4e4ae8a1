"""kubetune's Kubernetes API: pydantic models for FineTuneJob and ModelServe.

These models are the single source of truth for the CRDs in crds/ (see crdgen).
"""

from .common import API_GROUP, API_VERSION, Condition
from .finetunejob import FineTuneJobSpec
from .finetunejob_status import FineTuneJobStatus
from .kinds import FINETUNEJOB, KINDS, MODELSERVE, Kind
from .modelserve import ModelServeSpec, ModelServeStatus
from .validation import SpecError, parse_spec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "Condition",
    "FINETUNEJOB",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "KINDS",
    "Kind",
    "MODELSERVE",
    "ModelServeSpec",
    "ModelServeStatus",
    "SpecError",
    "parse_spec",
]
