"""Plain helpers of the ModelServe tests, importable by a name of their own (`conftest`
is a different module in each test folder): polling, the bodies the tests apply, and
reads of what the operator wrote. Every body carries apiVersion, kind and the test's
namespace, as a real API server wants them."""

from __future__ import annotations

import base64
import time

from kubetune.devenv.kubeapi import MODELSERVES, PODS, KubeHttp, Resource
from kubetune.devenv.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from kubetune.operator.modelserve import naming

REPLICASETS = Resource("apps", "v1", "replicasets")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.2, on_timeout=None):
    """Poll until `predicate()` is truthy; the failure names what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")


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
