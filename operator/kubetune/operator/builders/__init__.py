"""Pure builders of a FineTuneJob's children: dicts in, dicts out, no I/O.

`build_children` gives everything one attempt needs, in the order to apply it (the
ConfigMap before the pod that mounts it, the Service before the workers that dial it).
"""

from __future__ import annotations

from kubetune.api import FineTuneJobSpec

from ..config import CapacityType, OperatorConfig
from .head_service import RAY_GCS_PORT, build_head_service
from .meta import JobMeta, owner_reference
from .pods import (
    TERMINATION_MESSAGE_PATH,
    TRAINER_CONTAINER,
    WORKER_CONTAINER,
    build_head_pod,
    build_worker_pod,
    build_worker_pods,
)
from .spec_configmap import SPEC_PATH, build_spec_configmap, resolve_spec


def build_children(
    job: JobMeta,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    attempt: int,
    capacity_type: CapacityType,
) -> list[dict]:
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, got {attempt}")
    return [
        build_spec_configmap(job, spec, config),
        build_head_service(job, spec, config),
        build_head_pod(job, spec, config, attempt, capacity_type),
        *build_worker_pods(job, spec, config, attempt, capacity_type),
    ]


__all__ = [
    "JobMeta",
    "RAY_GCS_PORT",
    "SPEC_PATH",
    "TERMINATION_MESSAGE_PATH",
    "TRAINER_CONTAINER",
    "WORKER_CONTAINER",
    "build_children",
    "build_head_pod",
    "build_head_service",
    "build_spec_configmap",
    "build_worker_pod",
    "build_worker_pods",
    "owner_reference",
    "resolve_spec",
]
