"""The ModelServe operator for real: Kopf running `modelserve.handlers` against the real
API server, the real controller manager turning the Deployment into a ReplicaSet and a
pod, the real scheduler binding it to the node agent's node, which runs the pod as a
kubelet would: the base-model fetch (init container), kubetune's adapter agent (native
sidecar) and vLLM's OpenAI server (its CPU build), on the tiny model, with moto S3 (on the
pod network) holding the base model and a peft adapter.

The main story: a ModelServe references a FineTuneJob that is still running, so its
adapter is Pending while the base is served; the job then succeeds with an adapter in S3,
and the ModelServe becomes Ready with that adapter Loaded, by the same pod and process
(the agent sees the ConfigMap volume change and loads the adapter through vLLM's runtime
LoRA API: no rollout, no container restart).
"""

from __future__ import annotations

import json
import urllib.request

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
from modelserve_support import (
    ADAPTER_URI,
    BASE_URI,
    BUCKET,
    PORT,
    adapter_state,
    container_ids,
    condition,
    finetunejob,
    modelserve,
    replicasets,
    s3_secret,
    serve_status,
    server_pods,
    wait_for,
)

pytestmark = pytest.mark.integration

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
    containers = container_ids(pod)
    assert set(containers) == {"fetch-base", "adapter-agent", "vllm"}
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

    # Same pod, same containers (vLLM and the agent never restarted), no rollout: only
    # the ConfigMap changed.
    (pod,) = server_pods(api, ns, "chat")
    assert (pod["metadata"]["name"], pod["metadata"]["uid"]) == (pod_name, pod_uid)
    assert container_ids(pod) == containers
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
    """maxUnavailable 0: while the rolled pod cannot fetch its base (it is not in S3, so
    the fetch-base init container fails, again and again, and vLLM never starts), the
    old pod keeps serving; reverting the spec returns to that very pod."""
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
        statuses = [c for p in pods for c in p["status"].get("initContainerStatuses") or []
                    if c["name"] == "fetch-base"]
        return pods if any(c["restartCount"] >= 1 for c in statuses) else None

    (new,) = wait_for(new_pod_crashed, "the rolled pod failing to fetch its base",
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
    (fetch,) = [c for c in new["status"]["initContainerStatuses"] if c["name"] == "fetch-base"]
    reason = (fetch.get("lastState") or {}).get("terminated") or (fetch.get("state") or {}).get(
        "terminated") or {}
    assert "models/missing" in (reason.get("message") or ""), fetch
    (pod,) = server_pods(api, ns, "roll")
    assert all(restarts == 0 for _, restarts in container_ids(pod).values())


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
