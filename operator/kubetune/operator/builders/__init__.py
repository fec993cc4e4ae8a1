"""Pure builders of a FineTuneJob's children: dicts in, dicts out, no I/O.

`build_children` gives everything one attempt needs: the ConfigMap the pods mount, the
Service the workers dial, the Ray token Secret they read, the pods. The order they are
created in is `attempt_start.creation_order` (the Secret last, so that a refused pod
leaves nothing the operator may not delete).
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
from .ray_auth import (
    RAY_AUTH_TOKEN_KEY,
    build_ray_auth_secret,
    needs_ray_auth,
    ray_auth_env,
    ray_auth_secret_name,
)
from .spec_configmap import SPEC_PATH, build_spec_configmap, resolve_spec


def build_children(
    job: JobMeta,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    attempt: int,
    capacity_type: CapacityType,
    ray_auth_token: str | None = None,
) -> list[dict]:
    """`ray_auth_token`: required when the job has worker pods; the caller makes it (a
    random value) so this stays pure. Only its first creation counts (create-only)."""
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, got {attempt}")
    auth = []
    if needs_ray_auth(spec):
        if not ray_auth_token:
            raise ValueError("a job with more than one worker needs a Ray auth token")
        auth.append(build_ray_auth_secret(job, ray_auth_token))
    return [
        build_spec_configmap(job, spec, config),
        build_head_service(job, spec, config),
        *auth,
        build_head_pod(job, spec, config, attempt, capacity_type),
        *build_worker_pods(job, spec, config, attempt, capacity_type),
    ]


__all__ = [
    "JobMeta",
    "RAY_AUTH_TOKEN_KEY",
    "RAY_GCS_PORT",
    "SPEC_PATH",
    "TERMINATION_MESSAGE_PATH",
    "TRAINER_CONTAINER",
    "WORKER_CONTAINER",
    "build_children",
    "build_head_pod",
    "build_head_service",
    "build_ray_auth_secret",
    "build_spec_configmap",
    "build_worker_pod",
    "build_worker_pods",
    "needs_ray_auth",
    "owner_reference",
    "ray_auth_env",
    "ray_auth_secret_name",
    "resolve_spec",
]
