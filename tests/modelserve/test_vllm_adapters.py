"""Adapters in a running vLLM pod, through the operator: hot-load, unload and refusals.

One ModelServe pod (vLLM's CPU build + kubetune's adapter agent) serves two adapters;
then a third is hot-loaded and the first removed, in the same pod (same uid, no container
restart); then a corrupt, a pickled, an other-base and an over-rank adapter are listed,
and each is refused with its reason in the ModelServe's status while the good ones keep
answering through the official `openai` client and the pod stays Ready.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
from kubetune.devenv.kubeapi import MODELSERVES, SECRETS
from modelserve_support import (
    BASE_URI,
    BUCKET,
    PORT,
    adapter_state,
    container_ids,
    condition,
    make_adapter,
    modelserve,
    replicasets,
    s3_secret,
    serve_status,
    server_pods,
    upload_dir,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = f"s3://{BUCKET}/library"


@pytest.fixture(scope="session")
def adapter_library(s3_models, tiny_model_path, tmp_path_factory):
    """Three good adapters and four bad ones in the S3 that pods reach: name -> uri."""
    s3 = s3_models[0]
    client = s3.client()
    root = tmp_path_factory.mktemp("library")
    uris = {}
    for i, name in enumerate(("good-1", "good-2", "good-3")):
        make_adapter(tiny_model_path, root / name, seed=10 + i, base_uri=BASE_URI)
        uris[name] = f"{PREFIX}/{name}"
    # Corrupt: the weights changed after the manifest was written.
    shutil.copytree(root / "good-1", root / "corrupt")
    weights = root / "corrupt" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    # Pickled: a .bin beside the safetensors (what torch.save writes; it runs code on
    # load), unlisted in the manifest, which is otherwise intact.
    shutil.copytree(root / "good-2", root / "pickled")
    (root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    # Trained on another base, by its own manifest's word.
    make_adapter(tiny_model_path, root / "other-base", seed=20,
                 base_uri=f"s3://{BUCKET}/models/other")
    # Rank 32 above the serve's maxLoraRank 16.
    make_adapter(tiny_model_path, root / "over-rank", seed=21, rank=32, base_uri=BASE_URI)
    for name in ("corrupt", "pickled", "other-base", "over-rank"):
        uris[name] = f"{PREFIX}/{name}"
    for name, uri in uris.items():
        upload_dir(client, root / name, uri)
    return s3, uris


def listing(uris: dict, *names: str) -> list[dict]:
    return [{"name": name, "uri": uris[name]} for name in names]


def vllm_models(pod: dict) -> set[str]:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{PORT}/v1/models",
                                timeout=10) as answer:
        return {m["id"] for m in json.loads(answer.read())["data"]}


def complete(pod: dict, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://{pod['status']['podIP']}:{PORT}/v1", api_key="unused",
                    max_retries=0, timeout=60)
    answer = client.completions.create(model=model, prompt="Add the numbers. 3 and 4",
                                       max_tokens=6, temperature=0)
    assert answer.model == model
    return answer.choices[0].text


def test_hot_load_unload_and_refusals_in_one_running_pod(
        kube_cluster, kube_namespace, serve_node, operator, adapter_library):
    s3, uris = adapter_library
    api, ns = kube_cluster.api, kube_namespace
    api.create(SECRETS, s3_secret(ns), ns)
    # Six adapters are listed at once below: on a CPU pool each holds a LoRA slot.
    api.create(MODELSERVES, modelserve("lib", ns, s3.endpoint, maxAdaptersInMemory=6,
                                       adapters=listing(uris, "good-1", "good-2")), ns)

    def state():
        pods = [f"{p['metadata']['name']}: {json.dumps(p.get('status'))}\n"
                + serve_node.logs(ns, p["metadata"]["name"], "adapter-agent")[-3000:]
                for p in server_pods(api, ns, "lib")]
        return json.dumps(serve_status(api, ns, "lib"), indent=1) + "\n" + "\n".join(pods)

    def settled(expected: dict[str, str]) -> bool:
        status = serve_status(api, ns, "lib")
        states = {a["name"]: a["state"] for a in status.get("adapters", [])}
        return states == expected and status.get("observedGeneration") == api.get(
            MODELSERVES, "lib", ns)["metadata"]["generation"]

    wait_for(lambda: settled({"good-1": "Loaded", "good-2": "Loaded"})
             and condition(serve_status(api, ns, "lib"), "Ready") == "True",
             "two adapters Loaded and the serve Ready", timeout=300, on_timeout=state)
    (pod,) = server_pods(api, ns, "lib")
    uid, containers = pod["metadata"]["uid"], container_ids(pod)
    assert vllm_models(pod) == {"tiny", "good-1", "good-2"}
    answers = {name: complete(pod, name) for name in ("tiny", "good-1", "good-2")}
    assert len(set(answers.values())) == 3, answers  # each adapter changes the answer

    # Hot-load a third, unload the first: same pod, no restart, no rollout.
    api.patch(MODELSERVES, "lib", {"spec": {"adapters": listing(uris, "good-2", "good-3")}}, ns)
    wait_for(lambda: settled({"good-2": "Loaded", "good-3": "Loaded"})
             and vllm_models(server_pods(api, ns, "lib")[0]) == {"tiny", "good-2", "good-3"},
             "good-3 loaded and good-1 unloaded in vLLM", timeout=120, on_timeout=state)
    (pod,) = server_pods(api, ns, "lib")
    assert pod["metadata"]["uid"] == uid and container_ids(pod) == containers
    assert len(replicasets(api, ns, "lib")) == 1
    assert complete(pod, "good-2") == answers["good-2"]

    # Four bad adapters: each refused with its reason; the good ones keep serving.
    bad = ("corrupt", "pickled", "other-base", "over-rank")
    api.patch(MODELSERVES, "lib", {"spec": {"adapters": listing(
        uris, "good-2", "good-3", *bad)}}, ns)
    wait_for(lambda: settled({"good-2": "Loaded", "good-3": "Loaded",
                              **{name: "Failed" for name in bad}}),
             "the four bad adapters Failed", timeout=120, on_timeout=state)
    messages = {name: adapter_state(api, ns, "lib", name)["message"] for name in bad}
    assert "sha256" in messages["corrupt"] or "integrity" in messages["corrupt"], messages
    assert "pickle" in messages["pickled"], messages
    assert "models/other" in messages["other-base"], messages
    assert "32" in messages["over-rank"] and "16" in messages["over-rank"], messages
    status = serve_status(api, ns, "lib")
    assert status["phase"] == "Degraded" and condition(status, "Stalled") == "True"
    assert status["adaptersDisplay"] == "2/6"
    (pod,) = server_pods(api, ns, "lib")
    assert condition(pod["status"], "Ready") == "True"
    assert pod["metadata"]["uid"] == uid and container_ids(pod) == containers
    assert vllm_models(pod) == {"tiny", "good-2", "good-3"}  # no bad adapter reached vLLM
    assert complete(pod, "good-2") == answers["good-2"]
    complete(pod, "good-3")

    # What LoRA-aware routers and Prometheus read: vLLM's metrics on the Service's http
    # port, the agent's on its own.
    vllm_metrics = scrape(pod, PORT)
    for family in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                   "vllm:lora_requests_info"):
        assert family in vllm_metrics, family
    agent_metrics = scrape(pod, 8081)
    assert agent_metrics["kubetune_agent_adapters"]["Failed"] == 4
    assert agent_metrics["kubetune_agent_adapters"]["Loaded"] == 2


def scrape(pod: dict, port: int) -> dict[str, dict[str, float]]:
    """Metric families by name, each {first label value: sample value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics",
                                timeout=10) as answer:
        text = answer.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {
            next(iter(s.labels.values()), ""): s.value for s in family.samples}
    return families
