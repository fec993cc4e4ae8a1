"""The ModelServe operator for real: Kopf running `modelserve.handlers` against the
emulated API server, the devenv Deployment controller turning the Deployment into a pod,
the test kubelet running the real adapter server on the tiny model, moto S3 holding the
base model and a peft adapter.

The main story: a ModelServe references a FineTuneJob that is still running, so its
adapter is Pending while the base is served; the job then succeeds with an adapter in S3,
and the ModelServe becomes Ready with that adapter Loaded, by the same pod and process
(hot load through the ConfigMap, no rollout).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.request
from pathlib import Path

import pytest
from kubetune.devenv.kubeapi import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    FINETUNEJOBS,
    MODELSERVES,
    PODS,
    SECRETS,
)
from kubetune.devenv.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, free_port
from kubetune.operator.config import OperatorConfig
from kubetune.operator.kube import Kube
from kubetune.operator.modelserve import naming
from kubetune.operator.modelserve.service import ServeService
from kubetune.workers import objectstore
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files, sha256_bytes
from modelserve_support import wait_for

pytestmark = pytest.mark.integration

BUCKET = "kubetune-modelserve"
BASE_URI = f"s3://{BUCKET}/models/tiny"
ADAPTER_URI = f"s3://{BUCKET}/runs/default/job-a/adapter"
POD_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def upload_dir(client, directory: Path, uri: str) -> None:
    dest = objectstore.S3Uri.parse(uri)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        objectstore.upload_file(client, path, dest.join(path.relative_to(directory).as_posix()))


def make_adapter(base_dir: Path, out_dir: Path, rank: int = 4) -> tuple[str, int]:
    """A real LoRA adapter saved by peft (safetensors) with the trainer's manifest.json,
    its non-zero B making it change the base's answers. Returns (manifest sha256, bytes)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    files = describe_files(out_dir)
    raw = Manifest(kind="adapter", files=files, base_model={"uri": BASE_URI},
                   method={"type": "lora", "rank": rank}).to_json()
    (out_dir / MANIFEST_NAME).write_bytes(raw)
    return sha256_bytes(raw), sum(f["size"] for f in files.values())


@pytest.fixture(scope="module")
def s3_models(loopback_s3, tiny_model_path, tmp_path_factory):
    client = loopback_s3.client()
    client.create_bucket(Bucket=BUCKET)
    upload_dir(client, tiny_model_path, BASE_URI)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    sha256, size = make_adapter(tiny_model_path, adapter_dir)
    upload_dir(client, adapter_dir, ADAPTER_URI)
    return loopback_s3, sha256, size


def operator_registry(resync_seconds: float):
    import kopf
    from kubetune.operator.modelserve.handlers import register

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_) -> None:
        settings.scanning.disabled = True
        settings.persistence.finalizer = "kubetune.dev/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="kubetune.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kubetune.dev", key="last-handled-configuration")
        settings.watching.server_timeout = 10
        settings.posting.level = 20

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)

    register(registry, lambda: ServeService(Kube(), OperatorConfig()), resync_seconds)
    return registry


@pytest.fixture
def operator(cluster, tmp_path, monkeypatch, request):
    """Kopf in a thread, as `kopf run` would run it; stopped (and joined) after the test.
    The resync timer ticks every second unless the test parametrizes another interval."""
    import kopf

    resync = getattr(request, "param", 1.0)
    monkeypatch.setenv("KUBECONFIG", str(cluster.api.write_kubeconfig(tmp_path / "kubeconfig")))
    stop_flag, ready_flag = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=operator_registry(resync), namespaces=["default"], standalone=True,
        stop_flag=stop_flag, ready_flag=ready_flag)), daemon=True)
    thread.start()
    assert ready_flag.wait(30), "kopf did not start"
    yield
    stop_flag.set()
    thread.join(30)
    assert not thread.is_alive()


def finetunejob(name: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"baseModel": {"uri": BASE_URI}, "dataset": {"uri": f"s3://{BUCKET}/data.jsonl"},
                 "output": {"uri": f"s3://{BUCKET}/runs"}},
    }


def modelserve(name: str, port: int, endpoint: str, **spec) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "baseModel": {"uri": BASE_URI, "servedName": "tiny"},
            "adapters": [{"name": "tuned", "fineTuneJobRef": {"name": "job-a"}}],
            "replicas": 1,
            "port": port,
            "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"},
            "storage": {"endpoint": endpoint,
                        "credentials": {"secretRef": {"name": "s3-creds"}}},
            **spec,
        },
    }


def s3_secret() -> dict:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": "default"},
            "data": {"AWS_ACCESS_KEY_ID": b64(ACCESS_KEY_ID),
                     "AWS_SECRET_ACCESS_KEY": b64(SECRET_ACCESS_KEY)}}


def serve_status(cluster, name: str) -> dict:
    return (cluster.http.get(MODELSERVES, name, "default") or {}).get("status") or {}


def adapter_state(cluster, name: str, adapter: str) -> dict:
    return next((a for a in serve_status(cluster, name).get("adapters", [])
                 if a["name"] == adapter), {})


def condition(status: dict, kind: str) -> str | None:
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == kind), None)


def server_pods(cluster, serve: str) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in naming.selector(serve).items())
    return [p for p in cluster.http.list(PODS, "default", selector)
            if not p["metadata"].get("deletionTimestamp")]


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [POD_ENV], indirect=True)
def test_adapter_from_a_finishing_job_is_hot_loaded_without_restart(cluster, operator, s3_models):
    s3, adapter_sha, adapter_size = s3_models
    http = cluster.http
    http.create(SECRETS, s3_secret(), "default")
    http.create(FINETUNEJOBS, finetunejob("job-a"), "default")
    http.patch(FINETUNEJOBS, "job-a", {"status": {"phase": "Running"}}, "default", sub="status")
    port = free_port()
    http.create(MODELSERVES, modelserve("chat", port, s3.endpoint), "default")

    def logs():
        pods = server_pods(cluster, "chat")
        text = [cluster.kubelet.logs("default", p["metadata"]["name"])[-3000:] for p in pods]
        return json.dumps(serve_status(cluster, "chat"), indent=1) + "\n" + "\n".join(text)

    # The base is served while the adapter waits for its job: Ready, adapter Pending.
    wait_for(lambda: condition(serve_status(cluster, "chat"), "Ready") == "True",
             "the ModelServe Ready on the base alone", timeout=180, on_timeout=logs)
    status = serve_status(cluster, "chat")
    pending = adapter_state(cluster, "chat", "tuned")
    assert pending["state"] == "Pending"
    assert "job-a" in pending["message"] and "Running" in pending["message"]
    assert status["endpoint"] == f"http://chat-serve.default.svc:{port}/v1"
    shown = (status["readyReplicas"], status["readyDisplay"], status["adaptersDisplay"])
    assert shown == (1, "1/1", "0/1")
    (pod,) = server_pods(cluster, "chat")
    pod_name, pod_uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    pid = cluster.kubelet.running[("default", pod_name)].process.pid
    deployment_generation = http.get(DEPLOYMENTS, "chat-serve", "default")["metadata"]["generation"]
    config = json.loads(http.get(CONFIGMAPS, "chat-serve-config", "default")["data"]["config.json"])
    assert config["adapters"] == []

    # The job succeeds: no edit to the ModelServe, the adapter is resolved and hot-loaded.
    http.patch(FINETUNEJOBS, "job-a", {"status": {"phase": "Succeeded", "adapter": {
        "uri": ADAPTER_URI, "sha256": adapter_sha, "sizeBytes": adapter_size}}}, "default",
        sub="status")
    wait_for(lambda: adapter_state(cluster, "chat", "tuned").get("state") == "Loaded"
             and condition(serve_status(cluster, "chat"), "Ready") == "True",
             "the adapter Loaded and the ModelServe Ready", timeout=120, on_timeout=logs)
    loaded = adapter_state(cluster, "chat", "tuned")
    assert (loaded["uri"], loaded["sha256"], loaded["replicasLoaded"]) == (
        ADAPTER_URI, adapter_sha, 1)
    status = serve_status(cluster, "chat")
    assert (status["phase"], status["adaptersDisplay"]) == ("Ready", "1/1")
    assert condition(status, "Reconciling") == "False" and condition(status, "Stalled") == "False"

    # Same pod, same process, no rollout: only the ConfigMap changed.
    (pod,) = server_pods(cluster, "chat")
    assert (pod["metadata"]["name"], pod["metadata"]["uid"]) == (pod_name, pod_uid)
    assert cluster.kubelet.running[("default", pod_name)].process.pid == pid
    assert cluster.kubelet.history == []
    deployment = http.get(DEPLOYMENTS, "chat-serve", "default")
    assert deployment["metadata"]["generation"] == deployment_generation
    config = json.loads(http.get(CONFIGMAPS, "chat-serve-config", "default")["data"]["config.json"])
    assert config["adapters"] == [{"name": "tuned", "uri": ADAPTER_URI, "sha256": adapter_sha}]

    # And the adapter answers through the pod's OpenAI API.
    ip = pod["status"]["podIP"]
    request = urllib.request.Request(
        f"http://{ip}:{port}/v1/completions", method="POST",
        data=json.dumps({"model": "tuned", "prompt": "Add the numbers", "max_tokens": 4,
                         "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = json.loads(answer.read())
    assert body["model"] == "tuned" and body["usage"]["completion_tokens"] >= 1


def test_invalid_spec_is_stalled_with_an_event_and_creates_nothing(cluster, operator):
    # Passes the CRD schema, but pins on-demand nodes while asking for spot capacity.
    body = modelserve("bad", free_port(), "http://127.0.0.1:9", resources={
        "spot": True, "gpusPerWorker": 0,
        "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}})
    cluster.http.create(MODELSERVES, body, "default")
    wait_for(lambda: condition(serve_status(cluster, "bad"), "Stalled") == "True",
             "Stalled", on_timeout=lambda: serve_status(cluster, "bad"))
    status = serve_status(cluster, "bad")
    assert status["phase"] == "Failed"
    assert condition(status, "Ready") == "False"
    assert "nodeSelector" in status["message"]
    wait_for(lambda: [e for e in cluster.http.list(EVENTS, "default")
                      if e["involvedObject"]["name"] == "bad" and e["reason"] == "InvalidSpec"],
             "an InvalidSpec Event", timeout=20)
    assert cluster.http.get(DEPLOYMENTS, "bad-serve", "default") is None
    assert cluster.http.get(CONFIGMAPS, "bad-serve-config", "default") is None


@pytest.mark.parametrize("operator", [3600.0], indirect=True)
def test_a_job_finishing_reconciles_its_modelserves_at_once(cluster, operator):
    """With the resync timer an hour away, only the FineTuneJob watch can carry the new
    adapter into the ConfigMap (zero replicas: no server is needed to see it)."""
    http = cluster.http
    http.create(FINETUNEJOBS, finetunejob("job-a"), "default")
    http.create(MODELSERVES, modelserve("idle", free_port(), "http://127.0.0.1:9",
                                        replicas=0), "default")
    wait_for(lambda: adapter_state(cluster, "idle", "tuned").get("state") == "Pending",
             "the adapter Pending", on_timeout=lambda: serve_status(cluster, "idle"))

    def served() -> list:
        configmap = http.get(CONFIGMAPS, "idle-serve-config", "default")
        return json.loads(configmap["data"]["config.json"])["adapters"]

    assert served() == []
    http.patch(FINETUNEJOBS, "job-a", {"status": {"phase": "Succeeded", "adapter": {
        "uri": ADAPTER_URI, "sha256": "f" * 64}}}, "default", sub="status")
    wait_for(lambda: served() == [{"name": "tuned", "uri": ADAPTER_URI, "sha256": "f" * 64}],
             "the adapter in the ConfigMap", timeout=15)
    wait_for(lambda: adapter_state(cluster, "idle", "tuned").get("uri") == ADAPTER_URI,
             "the adapter resolved in status", timeout=15)

    http.patch(FINETUNEJOBS, "job-a", {"status": {"phase": "Failed",
                                                  "message": "trainer exited 1"}},
               "default", sub="status")
    wait_for(lambda: adapter_state(cluster, "idle", "tuned").get("state") == "Failed",
             "the adapter Failed with its job", timeout=15)
    assert "trainer exited 1" in adapter_state(cluster, "idle", "tuned")["message"]
    assert served() == []
    status = serve_status(cluster, "idle")
    assert status["phase"] == "Degraded" and condition(status, "Stalled") == "True"
