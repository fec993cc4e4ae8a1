"""The ModelServe operator for real: Kopf running `modelserve.handlers` against the real
API server, the real controller manager turning the Deployment into a ReplicaSet and a
pod, the real scheduler binding it to the node agent's node, which runs the real adapter
server on the tiny model, with moto S3 (on the pod network) holding the base model and
a peft adapter.

The main story: a ModelServe references a FineTuneJob that is still running, so its
adapter is Pending while the base is served; the job then succeeds with an adapter in S3,
and the ModelServe becomes Ready with that adapter Loaded, by the same pod and process
(hot load through the ConfigMap volume, no rollout).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from kubetune.devenv.kubeapi import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    FINETUNEJOBS,
    MODELSERVES,
    SECRETS,
    SERVICES,
)
from kubetune.workers import objectstore
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files, sha256_bytes
from modelserve_support import (
    adapter_state,
    condition,
    finetunejob,
    replicasets,
    s3_secret,
    serve_status,
    server_pods,
    wait_for,
)

pytestmark = pytest.mark.integration

BUCKET = "kubetune-modelserve"
BASE_URI = f"s3://{BUCKET}/models/tiny"
ADAPTER_URI = f"s3://{BUCKET}/runs/ml-team/job-a/adapter"
PORT = 8080


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
def s3_models(cluster_s3, tiny_model_path, tmp_path_factory):
    """The base model and one adapter in the S3 that pods reach."""
    client = cluster_s3.client()
    client.create_bucket(Bucket=BUCKET)
    upload_dir(client, tiny_model_path, BASE_URI)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    sha256, size = make_adapter(tiny_model_path, adapter_dir)
    upload_dir(client, adapter_dir, ADAPTER_URI)
    return cluster_s3, sha256, size


def modelserve(name: str, namespace: str, endpoint: str, **spec) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": BASE_URI, "servedName": "tiny"},
            "adapters": [{"name": "tuned", "fineTuneJobRef": {"name": "job-a"}}],
            "replicas": 1,
            "port": PORT,
            "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"},
            "storage": {"endpoint": endpoint,
                        "credentials": {"secretRef": {"name": "s3-creds"}}},
            **spec,
        },
    }


def set_job_status(api, namespace: str, name: str, status: dict) -> None:
    """What the FineTuneJob reconciler would write (it is not running here)."""
    api.patch(FINETUNEJOBS, name, {"status": status}, namespace, sub="status")


@pytest.mark.slow
def test_adapter_from_a_finishing_job_is_hot_loaded_without_restart(
        kube_cluster, kube_namespace, serve_node, operator, s3_models):
    s3, adapter_sha, adapter_size = s3_models
    api, ns = kube_cluster.api, kube_namespace
    api.create(SECRETS, s3_secret(ns), ns)
    api.create(FINETUNEJOBS, finetunejob("job-a", ns, BUCKET), ns)
    set_job_status(api, ns, "job-a", {"phase": "Running"})
    api.create(MODELSERVES, modelserve("chat", ns, s3.endpoint), ns)

    def logs():
        pods = server_pods(api, ns, "chat")
        text = [f"{p['metadata']['name']}: {json.dumps(p.get('status'))}\n"
                + serve_node.logs(ns, p["metadata"]["name"])[-3000:] for p in pods]
        return json.dumps(serve_status(api, ns, "chat"), indent=1) + "\n" + "\n".join(text)

    # The base is served while the adapter waits for its job: Ready, adapter Pending.
    wait_for(lambda: condition(serve_status(api, ns, "chat"), "Ready") == "True",
             "the ModelServe Ready on the base alone", timeout=180, on_timeout=logs)
    status = serve_status(api, ns, "chat")
    pending = adapter_state(api, ns, "chat", "tuned")
    assert pending["state"] == "Pending"
    assert "job-a" in pending["message"] and "Running" in pending["message"]
    assert status["endpoint"] == f"http://chat-serve.{ns}.svc:{PORT}/v1"
    shown = (status["readyReplicas"], status["readyDisplay"], status["adaptersDisplay"])
    assert shown == (1, "1/1", "0/1")
    assert status["observedGeneration"] == api.get(MODELSERVES, "chat", ns)["metadata"][
        "generation"]
    (pod,) = server_pods(api, ns, "chat")
    assert pod["spec"]["nodeName"] == "node-1"
    pod_name, pod_uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    (container,) = pod["status"]["containerStatuses"]
    pid = serve_node.running[(ns, pod_name)].process.pid
    deployment_generation = api.get(DEPLOYMENTS, "chat-serve", ns)["metadata"]["generation"]
    config = json.loads(api.get(CONFIGMAPS, "chat-serve-config", ns)["data"]["config.json"])
    assert config["adapters"] == []

    # The job succeeds: no edit to the ModelServe, the adapter is resolved and hot-loaded.
    set_job_status(api, ns, "job-a", {"phase": "Succeeded", "adapter": {
        "uri": ADAPTER_URI, "sha256": adapter_sha, "sizeBytes": adapter_size}})
    wait_for(lambda: adapter_state(api, ns, "chat", "tuned").get("state") == "Loaded"
             and condition(serve_status(api, ns, "chat"), "Ready") == "True",
             "the adapter Loaded and the ModelServe Ready", timeout=120, on_timeout=logs)
    loaded = adapter_state(api, ns, "chat", "tuned")
    assert (loaded["uri"], loaded["sha256"], loaded["replicasLoaded"]) == (
        ADAPTER_URI, adapter_sha, 1)
    status = serve_status(api, ns, "chat")
    assert (status["phase"], status["adaptersDisplay"]) == ("Ready", "1/1")
    assert condition(status, "Reconciling") == "False" and condition(status, "Stalled") == "False"

    # Same pod, same container, same process, no rollout: only the ConfigMap changed.
    (pod,) = server_pods(api, ns, "chat")
    assert (pod["metadata"]["name"], pod["metadata"]["uid"]) == (pod_name, pod_uid)
    (after,) = pod["status"]["containerStatuses"]
    assert (after["restartCount"], after["containerID"]) == (0, container["containerID"])
    assert serve_node.running[(ns, pod_name)].process.pid == pid
    assert len(replicasets(api, ns, "chat")) == 1
    deployment = api.get(DEPLOYMENTS, "chat-serve", ns)
    assert deployment["metadata"]["generation"] == deployment_generation
    config = json.loads(api.get(CONFIGMAPS, "chat-serve-config", ns)["data"]["config.json"])
    assert config["adapters"] == [{"name": "tuned", "uri": ADAPTER_URI, "sha256": adapter_sha}]

    # And the adapter answers through the pod's OpenAI API.
    request = urllib.request.Request(
        f"http://{pod['status']['podIP']}:{PORT}/v1/completions", method="POST",
        data=json.dumps({"model": "tuned", "prompt": "Add the numbers", "max_tokens": 4,
                         "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = json.loads(answer.read())
    assert body["model"] == "tuned" and body["usage"]["completion_tokens"] >= 1


def models_served(pod: dict) -> list[str]:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{PORT}/v1/models",
                                timeout=10) as answer:
        return [m["id"] for m in json.loads(answer.read())["data"]]


@pytest.mark.slow
def test_a_base_model_roll_keeps_the_old_replica_serving_until_the_new_one_is_ready(
        kube_cluster, kube_namespace, serve_node, operator, s3_models):
    """maxUnavailable 0: while the rolled pod cannot load its base (it is not in S3 and
    the server exits, again and again), the old pod keeps serving; reverting the spec
    returns to that very pod."""
    s3 = s3_models[0]
    api, ns = kube_cluster.api, kube_namespace
    api.create(SECRETS, s3_secret(ns), ns)
    api.create(MODELSERVES, modelserve("roll", ns, s3.endpoint, adapters=[]), ns)

    def state():
        pods = {p["metadata"]["name"]: (p["status"].get("phase"), p["status"].get(
            "containerStatuses")) for p in server_pods(api, ns, "roll")}
        return json.dumps({"status": serve_status(api, ns, "roll"), "pods": pods}, indent=1)

    wait_for(lambda: condition(serve_status(api, ns, "roll"), "Ready") == "True",
             "the ModelServe Ready", timeout=180, on_timeout=state)
    (old,) = server_pods(api, ns, "roll")
    assert models_served(old) == ["tiny"]

    api.patch(MODELSERVES, "roll", {"spec": {"baseModel": {
        "uri": f"s3://{BUCKET}/models/missing"}}}, ns)

    def new_pod_crashed():
        pods = [p for p in server_pods(api, ns, "roll") if p["metadata"]["uid"] != old[
            "metadata"]["uid"]]
        statuses = [c for p in pods for c in p["status"].get("containerStatuses") or []]
        return pods if any(c["restartCount"] >= 1 for c in statuses) else None

    (new,) = wait_for(new_pod_crashed, "the rolled pod failing to load its base",
                      timeout=120, on_timeout=state)
    assert len(replicasets(api, ns, "roll")) == 2
    kept = {p["metadata"]["uid"]: p for p in server_pods(api, ns, "roll")}[old["metadata"]["uid"]]
    assert condition(kept["status"], "Ready") == "True"
    assert models_served(kept) == ["tiny"]
    wait_for(lambda: serve_status(api, ns, "roll").get("observedGeneration") == 2,
             "the roll observed", on_timeout=state)
    status = serve_status(api, ns, "roll")
    assert (status["phase"], condition(status, "Ready"), condition(status, "Reconciling")) == (
        "Progressing", "False", "True")
    assert status["message"] == (
        "rolling out: 1 old replicas serving until the updated ones are ready")
    assert status["readyReplicas"] == 1

    api.patch(MODELSERVES, "roll", {"spec": {"baseModel": {"uri": BASE_URI}}}, ns)
    wait_for(lambda: [p["metadata"]["uid"] for p in server_pods(api, ns, "roll")] == [
        old["metadata"]["uid"]] and condition(serve_status(api, ns, "roll"), "Ready") == "True",
             "back to the old pod alone, Ready", timeout=60, on_timeout=state)
    assert new["metadata"]["name"] not in {p["metadata"]["name"]
                                           for p in server_pods(api, ns, "roll")}
    (pod,) = server_pods(api, ns, "roll")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_invalid_spec_is_stalled_with_an_event_and_creates_nothing(
        kube_cluster, kube_namespace, operator):
    api, ns = kube_cluster.api, kube_namespace
    # Passes the CRD schema, but pins on-demand nodes while asking for spot capacity.
    body = modelserve("bad", ns, "http://127.0.0.1:9", resources={
        "spot": True, "gpusPerWorker": 0,
        "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}})
    created = api.create(MODELSERVES, body, ns)
    wait_for(lambda: condition(serve_status(api, ns, "bad"), "Stalled") == "True",
             "Stalled", on_timeout=lambda: serve_status(api, ns, "bad"))
    status = serve_status(api, ns, "bad")
    assert status["phase"] == "Failed"
    assert condition(status, "Ready") == "False"
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert "nodeSelector" in status["message"]
    events = wait_for(lambda: [e for e in api.list(EVENTS, ns)
                               if e["involvedObject"]["name"] == "bad"
                               and e["reason"] == "InvalidSpec"],
                      "an InvalidSpec Event", timeout=20)
    assert events[0]["type"] == "Warning"
    assert events[0]["involvedObject"]["uid"] == created["metadata"]["uid"]
    assert api.get(DEPLOYMENTS, "bad-serve", ns) is None
    assert api.get(SERVICES, "bad-serve", ns) is None
    assert api.get(CONFIGMAPS, "bad-serve-config", ns) is None
    assert server_pods(api, ns, "bad") == []


@pytest.mark.parametrize("operator", [3600.0], indirect=True)
def test_a_job_finishing_reconciles_its_modelserves_at_once(kube_cluster, kube_namespace,
                                                            operator):
    """With the resync timer an hour away, only the FineTuneJob watch can carry the new
    adapter into the ConfigMap (zero replicas: no server is needed to see it)."""
    api, ns = kube_cluster.api, kube_namespace
    api.create(FINETUNEJOBS, finetunejob("job-a", ns, BUCKET), ns)
    api.create(MODELSERVES, modelserve("idle", ns, "http://127.0.0.1:9", replicas=0), ns)
    wait_for(lambda: adapter_state(api, ns, "idle", "tuned").get("state") == "Pending",
             "the adapter Pending", on_timeout=lambda: serve_status(api, ns, "idle"))

    def served() -> list:
        configmap = api.get(CONFIGMAPS, "idle-serve-config", ns)
        return json.loads(configmap["data"]["config.json"])["adapters"]

    assert served() == []
    set_job_status(api, ns, "job-a", {"phase": "Succeeded", "adapter": {
        "uri": ADAPTER_URI, "sha256": "f" * 64}})
    wait_for(lambda: served() == [{"name": "tuned", "uri": ADAPTER_URI, "sha256": "f" * 64}],
             "the adapter in the ConfigMap", timeout=15)
    wait_for(lambda: adapter_state(api, ns, "idle", "tuned").get("uri") == ADAPTER_URI,
             "the adapter resolved in status", timeout=15)

    set_job_status(api, ns, "job-a", {"phase": "Failed", "message": "trainer exited 1"})
    wait_for(lambda: adapter_state(api, ns, "idle", "tuned").get("state") == "Failed",
             "the adapter Failed with its job", timeout=15)
    assert "trainer exited 1" in adapter_state(api, ns, "idle", "tuned")["message"]
    assert served() == []
    status = serve_status(api, ns, "idle")
    assert status["phase"] == "Degraded" and condition(status, "Stalled") == "True"
