"""A headless Service giving the Ray head a stable DNS name across recoveries."""

from __future__ import annotations

from kubetune.api import FineTuneJobSpec

from ..config import OperatorConfig
from ..naming import COMPONENT_HEAD, child_labels, head_selector, head_service_name
from .meta import JobMeta, object_meta

RAY_GCS_PORT = 6379


def build_head_service(job: JobMeta, spec: FineTuneJobSpec, config: OperatorConfig) -> dict:
    """Headless, so the name resolves straight to the head pod's IP and every Ray port
    (object manager, node manager, ...) is reachable, not only the ones listed here.
    publishNotReadyAddresses lets workers find the head before any readiness."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(
            job, head_service_name(job.name), child_labels(job.name, COMPONENT_HEAD)
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": head_selector(job.name),
            "ports": [
                {
                    "name": "ray-gcs",
                    "port": RAY_GCS_PORT,
                    "targetPort": RAY_GCS_PORT,
                    "protocol": "TCP",
                },
                {
                    "name": "status",
                    "port": config.trainer_status_port,
                    "targetPort": config.trainer_status_port,
                    "protocol": "TCP",
                },
            ],
        },
    }
