"""Plain helpers of the ModelServe tests, importable by a name of their own (`conftest`
is a different module in each test folder): polling, the bodies the tests apply, and
reads of what the operator wrote. Every body carries apiVersion, kind and the test's
namespace, as a real API server wants them."""

from __future__ import annotations

import base64

from kubetune.devenv.kubeapi import MODELSERVES, PODS, KubeHttp, Resource
from kubetune.devenv.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from kubetune.operator.modelserve import naming
from polling import wait_for  # noqa: F401 (re-exported)
from lora_adapters import make_adapter, upload_dir, write_manifest  # noqa: F401 (re-exported)

BUCKET = "kubetune-modelserve"
BASE_URI = f"s3://{BUCKET}/models/tiny"
ADAPTER_URI = f"s3://{BUCKET}/runs/ml-team/job-a/adapter"
PORT = 8080
# float32 so greedy answers match transformers+peft; a small KV cache on this machine.
VLLM = {"maxLoras": 2, "maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32",
        "cpuKVCacheGiB": 1}

REPLICASETS = Resource("apps", "v1", "replicasets")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")


def finetunejob(name: str, namespace: str, bucket: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"baseModel": {"uri": f"s3://{bucket}/models/tiny"},
                 "dataset": {"uri": f"s3://{bucket}/data.jsonl"},
                 "output": {"uri": f"s3://{bucket}/runs"}},
    }


def s3_secret(namespace: str, name: str = "s3-creds") -> dict:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"AWS_ACCESS_KEY_ID": b64(ACCESS_KEY_ID),
                     "AWS_SECRET_ACCESS_KEY": b64(SECRET_ACCESS_KEY)}}


def serve_status(api: KubeHttp, namespace: str, name: str) -> dict:
    return (api.get(MODELSERVES, name, namespace) or {}).get("status") or {}


def adapter_state(api: KubeHttp, namespace: str, name: str, adapter: str) -> dict:
    return next((a for a in serve_status(api, namespace, name).get("adapters", [])
                 if a["name"] == adapter), {})


def condition(status: dict, kind: str) -> str | None:
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == kind), None)


def live(items: list[dict]) -> list[dict]:
    return [item for item in items if not item["metadata"].get("deletionTimestamp")]


def server_pods(api: KubeHttp, namespace: str, serve: str) -> list[dict]:
    """The serve's pods that are not being deleted, found as the Service finds them."""
    selector = ",".join(f"{k}={v}" for k, v in naming.selector(serve).items())
    return live(api.list(PODS, namespace, selector))


def replicasets(api: KubeHttp, namespace: str, serve: str) -> list[dict]:
    """The ReplicaSets the controller manager made for the serve's Deployment: one per
    pod template, so a count of one means no rollout ever happened."""
    selector = ",".join(f"{k}={v}" for k, v in naming.selector(serve).items())
    return api.list(REPLICASETS, namespace, selector)


def modelserve(name: str, namespace: str, endpoint: str, **spec) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": BASE_URI, "servedName": "tiny"},
            "adapters": [{"name": "tuned", "fineTuneJobRef": {"name": "job-a"}}],
            "replicas": 1,
            "port": PORT,
            "maxAdaptersInMemory": 4,
            "vllm": VLLM,
            "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "6Gi"},
            "storage": {"endpoint": endpoint,
                        "credentials": {"secretRef": {"name": "s3-creds"}}},
            **spec,
        },
    }


def container_ids(pod: dict) -> dict[str, tuple[str, int]]:
    """Each container's (containerID, restartCount): a restart changes both."""
    statuses = (pod["status"].get("initContainerStatuses") or []) + (
        pod["status"].get("containerStatuses") or [])
    return {c["name"]: (c.get("containerID"), c["restartCount"]) for c in statuses}
