"""The Ray head pod (runs the trainer) and the Ray worker pods that join it.

Every pod meets the Pod Security Standard "restricted": non-root with a fixed uid, no
privilege escalation, all capabilities dropped, RuntimeDefault seccomp, read-only root
filesystem, and only emptyDir / ConfigMap volumes. `restartPolicy: Never` because a
restart is a recovery or retry decision the operator makes and counts, not the kubelet.
"""

from __future__ import annotations

from kubetune.api import FineTuneJobSpec, ModelServeSpec

from ..config import CapacityType, OperatorConfig
from ..naming import (
    COMPONENT_HEAD,
    COMPONENT_WORKER,
    child_labels,
    head_pod_name,
    head_service_name,
    spec_configmap_name,
    worker_pod_name,
)
from .head_service import RAY_GCS_PORT
from .meta import JobMeta, object_meta
from .placement import place
from .ray_auth import needs_ray_auth, ray_auth_env
from .spec_configmap import SPEC_DIR, SPEC_KEY, SPEC_PATH
from .storage_env import service_account_name, storage_env

TRAINER_CONTAINER = "trainer"
WORKER_CONTAINER = "ray-worker"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
RUN_AS_UID = 65532  # the images' user (images/*.Dockerfile)
CACHE_DIR = "/var/cache/kubetune"
GRACE_MARGIN_SECONDS = 5


def _image(spec: FineTuneJobSpec, config: OperatorConfig) -> tuple[str, str]:
    return (
        spec.images.trainer or config.images.trainer,
        spec.images.pull_policy or config.images.pull_policy,
    )


def container_resources(spec: FineTuneJobSpec | ModelServeSpec) -> dict:
    """Requests equal limits (Guaranteed QoS): the last pods the kubelet evicts."""
    amounts = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.gpus_per_worker > 0:
        amounts[spec.resources.gpu_resource_name] = str(spec.resources.gpus_per_worker)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def container_security() -> dict:
    """The container half of Pod Security "restricted" (the pod half is in `_pod`)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _common_env(
    spec: FineTuneJobSpec, config: OperatorConfig, attempt: int, capacity_type: str
) -> list[dict]:
    """Writable places for a read-only root, the attempt for the trainer's logs, and S3."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "KUBETUNE_ATTEMPT", "value": str(attempt)},
        {"name": "KUBETUNE_CAPACITY_TYPE", "value": capacity_type},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *storage_env(spec.output, config),
    ]


def _scratch_volumes() -> tuple[list[dict], list[dict]]:
    volumes = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        # Ray's object store and torch's data loaders need a /dev/shm larger than 64 MiB.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return volumes, mounts


def _pod(
    job: JobMeta,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    capacity_type: CapacityType,
    name: str,
    labels: dict,
    container: dict,
    volumes: list[dict],
) -> dict:
    profile = config.spot_profile()
    pod_spec = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.spot.checkpoint_budget_seconds + GRACE_MARGIN_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    account = service_account_name(spec.output)
    if account:
        pod_spec["serviceAccountName"] = account
    place(pod_spec, spec, profile, capacity_type, capacity_field="spec.spot")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": object_meta(job, name, labels),
        "spec": pod_spec,
    }


def trainer_command(job: JobMeta, config: OperatorConfig) -> list[str]:
    return [
        "python",
        "-m",
        "kubetune.workers.train",
        "--spec",
        SPEC_PATH,
        "--namespace",
        job.namespace,
        "--job",
        job.name,
        "--status-port",
        str(config.trainer_status_port),
        "--termination-log",
        TERMINATION_MESSAGE_PATH,
    ]


def build_head_pod(
    job: JobMeta,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    attempt: int,
    capacity_type: CapacityType,
) -> dict:
    """The Ray head, which runs the trainer (Ray Train rank 0).

    The trainer serves GET /progress on the status port, writes its summary JSON to the
    termination-message file, and exits 0 (done), 75 (preempted, checkpoint saved) or
    anything else (error). With more than one worker it starts the Ray head on
    KUBETUNE_RAY_HEAD_PORT so the worker pods can join, all sharing the job's Ray token.
    """
    image, pull_policy = _image(spec, config)
    volumes, mounts = _scratch_volumes()
    volumes.insert(
        0,
        {
            "name": "spec",
            "configMap": {
                "name": spec_configmap_name(job.name),
                "items": [{"key": SPEC_KEY, "path": SPEC_KEY}],
            },
        },
    )
    mounts.insert(0, {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True})
    env = _common_env(spec, config, attempt, capacity_type)
    env += [
        {"name": "KUBETUNE_RAY_HEAD_PORT", "value": str(RAY_GCS_PORT)},
        {"name": "KUBETUNE_RAY_WORKER_PODS", "value": str(spec.resources.workers - 1)},
    ]
    if needs_ray_auth(spec):
        env += ray_auth_env(job)
    container = {
        "name": TRAINER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": trainer_command(job, config),
        "env": env,
        "ports": [
            {"name": "ray-gcs", "containerPort": RAY_GCS_PORT, "protocol": "TCP"},
            {"name": "status", "containerPort": config.trainer_status_port, "protocol": "TCP"},
        ],
        "resources": container_resources(spec),
        "securityContext": container_security(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # The summary file when the trainer wrote one, else the log tail (a traceback).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    labels = child_labels(job.name, COMPONENT_HEAD, attempt, capacity_type)
    return _pod(
        job, spec, config, capacity_type, head_pod_name(job.name), labels, container, volumes
    )


def build_worker_pod(
    job: JobMeta,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    attempt: int,
    capacity_type: CapacityType,
    index: int,
) -> dict:
    """Ray worker `index` (1..workers-1): joins the head and blocks until it goes away; on
    SIGTERM it asks the head to checkpoint and stop the job (`rayworker`)."""
    if not 1 <= index < spec.resources.workers:
        raise ValueError(f"worker index {index} outside 1..{spec.resources.workers - 1}")
    image, pull_policy = _image(spec, config)
    volumes, mounts = _scratch_volumes()
    container = {
        "name": WORKER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": [
            "python",
            "-m",
            "kubetune.workers.train.rayworker",
            f"--address={head_service_name(job.name)}:{RAY_GCS_PORT}",
            f"--stop-url=http://{head_service_name(job.name)}:{config.trainer_status_port}/stop",
            f"--wait-seconds={spec.spot.checkpoint_budget_seconds}",
        ],
        "env": [*_common_env(spec, config, attempt, capacity_type), *ray_auth_env(job)],
        "resources": container_resources(spec),
        "securityContext": container_security(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    labels = child_labels(job.name, COMPONENT_WORKER, attempt, capacity_type)
    return _pod(
        job,
        spec,
        config,
        capacity_type,
        worker_pod_name(job.name, index),
        labels,
        container,
        volumes,
    )


def build_worker_pods(
    job: JobMeta,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    attempt: int,
    capacity_type: CapacityType,
) -> list[dict]:
    return [
        build_worker_pod(job, spec, config, attempt, capacity_type, index)
        for index in range(1, spec.resources.workers)
    ]
