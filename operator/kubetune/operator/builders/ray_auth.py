"""The Ray cluster token of a multi-pod job: a Secret, and the env that reads it.

Ray 2.60 turns on token authentication, so a worker pod joins the head only with the
head's token. Each job gets its own random token in a Secret owned by the job (garbage-
collected with it). The operator only ever creates that Secret, never reads or patches
it: a 409 means an earlier reconcile created it, and that token stays in force. Pods get
the value by `secretKeyRef`, so it never appears in a pod manifest, a log line or an Event.
"""

from __future__ import annotations

import base64

from kubetune.api import FineTuneJobSpec

from ..naming import child_labels, child_name
from .meta import JobMeta, object_meta

COMPONENT_RAY_AUTH = "ray-auth"
RAY_AUTH_TOKEN_KEY = "token"


def ray_auth_secret_name(job: str) -> str:
    return child_name(job, "ray-auth")


def needs_ray_auth(spec: FineTuneJobSpec) -> bool:
    """Only a job with worker pods runs a Ray cluster that others must join."""
    return spec.resources.workers > 1


def build_ray_auth_secret(job: JobMeta, token: str) -> dict:
    """Immutable: the token never changes while the pods that read it may be running."""
    if not token:
        raise ValueError("the Ray auth token must not be empty")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(
            job, ray_auth_secret_name(job.name), child_labels(job.name, COMPONENT_RAY_AUTH)
        ),
        "type": "Opaque",
        "immutable": True,
        "data": {RAY_AUTH_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def ray_auth_env(job: JobMeta) -> list[dict]:
    """RAY_AUTH_MODE/RAY_AUTH_TOKEN for the head and worker pods, the token by reference."""
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": ray_auth_secret_name(job.name), "key": RAY_AUTH_TOKEN_KEY}
            },
        },
    ]
