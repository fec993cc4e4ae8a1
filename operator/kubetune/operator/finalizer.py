"""Deleting a FineTuneJob: stop its pods, apply checkpoint retention, never touch the adapter.

`spec.retention.checkpoints: DeleteWithJob` needs S3 credentials the operator deliberately
lacks, so it runs a short cleanup pod with the job's own credentials (the trainer's image,
`python -m kubetune.workers.cleanup`). The finalizer is released when that pod succeeded,
or after MAX_CLEANUP_TRIES failed pods with a Warning Event (the checkpoints stay).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api import FineTuneJobSpec, SpecError, parse_spec

from .builders import JobMeta
from .builders.meta import object_meta
from .builders.pods import RUN_AS_UID, TERMINATION_MESSAGE_PATH, container_security
from .builders.storage_env import service_account_name, storage_env
from .config import OperatorConfig
from .kube import PODS, Kube
from .naming import child_labels, child_name, selector_labels
from .pod_state import main_container_status, sanitize_message

MAX_CLEANUP_TRIES = 3
CLEANUP_COMPONENT = "checkpoint-cleanup"



@dataclass(frozen=True)
class Finalized:
    """done: the finalizer may go. retry_after: come back then. warning: for an Event."""

    done: bool
    retry_after: float = 0.0
    warning: str = ""


def checkpoints_uri(spec: FineTuneJobSpec, job: JobMeta) -> str:
    """<output>/<namespace>/<job>/checkpoints — the trainer's layout (storage.JobLocation)."""
    return "/".join([spec.output.uri.rstrip("/"), job.namespace, job.name, "checkpoints"])


def build_cleanup_pod(job: JobMeta, spec: FineTuneJobSpec, config: OperatorConfig) -> dict:
    """A restricted-PSS pod with the job's storage env, on any (on-demand) node."""
    container = {
        "name": "cleanup",
        "image": spec.images.trainer or config.images.trainer,
        "imagePullPolicy": spec.images.pull_policy or config.images.pull_policy,
        "command": ["python", "-m", "kubetune.workers.cleanup",
                    "--prefix", checkpoints_uri(spec, job) + "/"],
        "env": [{"name": "HOME", "value": "/tmp"}, *storage_env(spec.output, config)],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},
        "securityContext": container_security(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_UID, "runAsGroup": RUN_AS_UID,
                            "fsGroup": RUN_AS_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    account = service_account_name(spec.output)
    if account:
        pod_spec["serviceAccountName"] = account
    name = child_name(job.name, "cleanup")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": object_meta(job, name, child_labels(job.name, CLEANUP_COMPONENT)),
            "spec": pod_spec}


class Finalizer:
    """The deletion half of the FineTuneJob lifecycle."""

    def __init__(self, kube: Kube, config: OperatorConfig):
        self.kube, self.config = kube, config

    def finalize(self, body: dict, tries: int) -> Finalized:
        """`tries`: cleanup pods that already failed for this deletion (Kopf's retry)."""
        job = JobMeta.from_meta(body["metadata"])
        cleanup_name = child_name(job.name, "cleanup")
        for pod in self.kube.list(PODS, job.namespace, selector_labels(job.name)):
            if pod["metadata"]["name"] != cleanup_name:
                self.kube.delete(PODS, pod["metadata"]["name"], job.namespace)
        try:
            spec = parse_spec(FineTuneJobSpec, body.get("spec"))
        except SpecError:
            return Finalized(True)  # an invalid job never ran: nothing was written
        if spec.retention.checkpoints != "DeleteWithJob":
            return Finalized(True)
        pod = self.kube.get(PODS, cleanup_name, job.namespace)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if pod is None:
            self.kube.create(PODS, build_cleanup_pod(job, spec, self.config))
            return Finalized(False, retry_after=2.0)
        if phase == "Succeeded":
            self.kube.delete(PODS, cleanup_name, job.namespace)
            return Finalized(True)
        if phase != "Failed":
            return Finalized(False, retry_after=2.0)
        self.kube.delete(PODS, cleanup_name, job.namespace)
        reason = _message(pod)
        if tries + 1 >= MAX_CLEANUP_TRIES:
            return Finalized(True, warning=(
                f"checkpoints under {checkpoints_uri(spec, job)} were NOT deleted after "
                f"{tries + 1} cleanup pods failed ({reason}); delete them by hand"))
        return Finalized(False, retry_after=5.0, warning=f"checkpoint cleanup failed: {reason}")


def _message(pod: dict) -> str:
    state = (main_container_status(pod) or {}).get("state") or {}
    if not state:
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        state = statuses[0].get("state") or {}
    return sanitize_message(((state.get("terminated") or {}).get("message")) or "exit non-zero")
