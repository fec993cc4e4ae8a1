"""ModelServe builders: golden manifests per scenario, the rules every child follows, and
the restart-hash contract (adapter-only changes never touch the pod template). One
integration test has the real API server judge every case (schema, Pod Security
`restricted`) by server-side dry runs, beside the pure restricted-profile check.

Regenerate the golden files after an intended change with
`KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/modelserve/test_serve_builders.py`.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubetune.api import ModelServeSpec, SpecError, parse_spec
from kubetune.devenv.pod_security import check_restricted
from kubetune.operator.config import parse_config
from kubetune.operator.modelserve.builders import (
    CONFIG_KEY,
    RESTART_HASH_ANNOTATION,
    ServeMeta,
    build_children,
    build_deployment,
)
from kubetune.operator.modelserve.resolve import Resolution

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"
K8S_VERSION = "1.37.0"
META = ServeMeta(
    name="support-bot", namespace="ml-team", uid="7d1f6a52-3c4b-4f0e-9a55-0b8f1f3e2c10")
SHA = "a" * 64
BASE = {"baseModel": {"uri": "s3://models/llama-3-8b", "loadIn4bit": True}}
ADAPTERS = [
    {"name": "support", "fineTuneJobRef": {"name": "llama-support"}},
    {"name": "legal", "uri": "s3://adapters/legal/v3", "sha256": SHA},
]
RESOLVED = [
    Resolution("support", "Resolved", uri="s3://out/ml-team/llama-support/adapter", sha256="b" * 64,
               job="llama-support"),
    Resolution("legal", "Resolved", uri="s3://adapters/legal/v3", sha256=SHA),
]
PENDING = [
    Resolution("support", "Pending", message="waiting for FineTuneJob llama-support (Running)",
               job="llama-support"),
    RESOLVED[1],
]


def spec(**overrides) -> ModelServeSpec:
    body = {**BASE, "adapters": ADAPTERS, **overrides}
    return parse_spec(ModelServeSpec, body)


CASES = {
    # name: (spec overrides, config, resolutions)
    "single-replica-pending-adapter": ({}, {}, PENDING),
    "three-replicas-secret-credentials": (
        {
            "replicas": 3,
            "storage": {
                "endpoint": "http://minio.storage.svc:9000",
                "credentials": {"secretRef": {"name": "minio-creds"}},
            },
            "vllm": {"maxLoras": 2, "maxModelLen": 4096, "dtype": "bfloat16"},
            "port": 8080,
        },
        {},
        RESOLVED,
    ),
    "spot-gke-irsa": (
        {
            "replicas": 2,
            "resources": {
                "spot": True,
                "gpusPerWorker": 1,
                "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                 "effect": "NoSchedule"}],
                "priorityClassName": "serving-high",
            },
            "storage": {"region": "us-west-2",
                        "credentials": {"serviceAccountName": "llm-server"}},
            "image": "registry.local/vllm/vllm-openai:dev",
            "imagePullPolicy": "Always",
        },
        {"spotProvider": "gke", "storage": {"defaultEndpoint": "http://s3.local:9000"}},
        RESOLVED,
    ),
    "cpu-only-karpenter-on-demand": (
        {"baseModel": {"uri": "s3://models/llama-3-8b"},
         "resources": {"gpusPerWorker": 0, "cpu": "2", "memory": "4Gi"}, "adapters": [],
         "vllm": {"cpuKVCacheGiB": 2, "dtype": "float32"}},
        {"spotProvider": "karpenter"},
        [],
    ),
    "gpu-pool-two-gpus-pvc-base": (
        {"baseModel": {"uri": "pvc://model-store/llama-3-70b"},
         "resources": {"gpusPerWorker": 2, "cpu": "16", "memory": "128Gi",
                       "nodeSelector": {"karpenter.k8s.aws/instance-family": "p5"},
                       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                        "effect": "NoSchedule"}]},
         "vllm": {"maxLoras": 8, "maxLoraRank": 64, "gpuMemoryUtilization": 0.9,
                  "extraArgs": ["--enable-prefix-caching"]},
         "maxAdaptersInMemory": 32},
        {"spotProvider": "karpenter"},
        RESOLVED,
    ),
}


def build_case(name: str) -> list[dict]:
    overrides, config, resolutions = CASES[name]
    return build_children(META, spec(**overrides), parse_config(config), resolutions)


def by_kind(children: list[dict]) -> dict[str, dict]:
    return {child["kind"]: child for child in children}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_golden(name):
    rendered = yaml.safe_dump_all(build_case(name), sort_keys=False, width=100)
    path = GOLDEN_DIR / f"{name}.yaml"
    if UPDATE_GOLDEN:
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with KUBETUNE_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    if rendered != expected:
        diff = "\n".join(difflib.unified_diff(
            expected.splitlines(), rendered.splitlines(), "golden", "built", lineterm=""))
        pytest.fail(
            f"{name} drifted from {path.name} (KUBETUNE_UPDATE_GOLDEN=1 to accept):\n{diff}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_child_is_a_valid_kubernetes_object(name):
    for child in build_case(name):
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_server_pods_meet_restricted_pod_security(name):
    deployment = by_kind(build_case(name))["Deployment"]
    pod_spec = deployment["spec"]["template"]["spec"]
    assert check_restricted(pod_spec) == []
    assert pod_spec["securityContext"]["runAsUser"] == 65532
    assert pod_spec["securityContext"]["runAsGroup"] == 65532


@pytest.fixture
def admitting_namespace(kube_cluster, kube_namespace):
    """The test's restricted namespace with what the cases' pods refer to by name (a
    ServiceAccount, a PriorityClass), which admission looks up."""
    api = kube_cluster.api
    api.request("POST", f"/api/v1/namespaces/{kube_namespace}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "llm-server"}})
    path = "/apis/scheduling.k8s.io/v1/priorityclasses"
    api.request("POST", path, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                               "metadata": {"name": f"serving-high-{kube_namespace}"},
                               "value": 1000})
    yield kube_namespace
    api.delete_path(f"{path}/serving-high-{kube_namespace}")


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_real_api_server_admits_every_child_and_pod(name, kube_cluster, admitting_namespace):
    """Server-side dry runs into a namespace enforcing Pod Security `restricted`: the real
    schema validation takes every child, and the real PodSecurity admission (which only
    warns for Deployments) takes a pod made from the Deployment's template."""
    api, namespace = kube_cluster.api, admitting_namespace
    for child in build_case(name):
        child = json.loads(json.dumps(child).replace('"ml-team"', json.dumps(namespace)))
        resource = {"ConfigMap": "api/v1/configmaps", "Service": "api/v1/services",
                    "Deployment": "apis/apps/v1/deployments",
                    "PodDisruptionBudget": "apis/policy/v1/poddisruptionbudgets"}[child["kind"]]
        group_version, plural = resource.rsplit("/", 1)
        api.request("POST", f"/{group_version}/namespaces/{namespace}/{plural}", child,
                    query={"dryRun": "All", "fieldValidation": "Strict"})
        if child["kind"] == "Deployment":
            template = child["spec"]["template"]
            pod_spec = dict(template["spec"])
            if "priorityClassName" in pod_spec:
                pod_spec["priorityClassName"] = f"serving-high-{namespace}"
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "server", **template["metadata"]}, "spec": pod_spec}
            created = api.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod,
                                  query={"dryRun": "All", "fieldValidation": "Strict"})
            assert created["spec"]["securityContext"]["runAsUser"] == 65532


@pytest.mark.parametrize("name", sorted(CASES))
def test_children_are_owned_selected_and_probed(name):
    overrides, _, _ = CASES[name]
    serve = spec(**overrides)
    children = build_case(name)
    kinds = [child["kind"] for child in children]
    expected = ["ConfigMap", "Service", "Deployment"]
    assert kinds == expected + (["PodDisruptionBudget"] if serve.replicas > 1 else [])
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("ModelServe", META.name, META.uid)
        assert owner["controller"] is True
    found = by_kind(children)
    deployment = found["Deployment"]
    template = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert found["Service"]["spec"]["selector"] == selector
    (vllm,) = template["spec"]["containers"]
    assert vllm["name"] == "vllm"
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert vllm["ports"][0]["containerPort"] == serve.port
    args = vllm["args"]
    assert args[args.index("--port") + 1] == str(serve.port)
    assert "--enable-lora" in args
    init = {c["name"]: c for c in template["spec"]["initContainers"]}
    agent = init["adapter-agent"]
    assert agent["restartPolicy"] == "Always"  # a native sidecar: up before vLLM
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "agent"}
    assert agent["command"][agent["command"].index("--vllm-url") + 1] == (
        f"http://127.0.0.1:{serve.port}")
    fetches = serve.base_model.uri.startswith("s3://")
    assert ("fetch-base" in init) == fetches
    if fetches:  # the fetch runs first, so vLLM never sees an unverified base
        assert list(init) == ["fetch-base", "adapter-agent"]
    service_ports = {p["name"]: p["port"] for p in found["Service"]["spec"]["ports"]}
    assert service_ports == {"http": serve.port, "agent": 8081}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_configmap_serves_only_resolved_adapters_in_spec_order():
    configmap = by_kind(build_case("single-replica-pending-adapter"))["ConfigMap"]
    document = json.loads(configmap["data"][CONFIG_KEY])
    assert document["adapters"] == [
        {"name": "legal", "uri": "s3://adapters/legal/v3", "sha256": SHA}]
    assert document["baseModel"] == {
        "uri": "s3://models/llama-3-8b", "loadIn4bit": True, "servedName": "base",
        "trustRemoteCode": False,
    }
    resolved = by_kind(build_case("three-replicas-secret-credentials"))["ConfigMap"]
    document = json.loads(resolved["data"][CONFIG_KEY])
    assert [a["name"] for a in document["adapters"]] == ["support", "legal"]
    assert document["storage"] == {"endpoint": "http://minio.storage.svc:9000"}
    assert document["maxLoraRank"] == 16


def test_credentials_only_by_reference_and_only_where_objects_are_read():
    pod = by_kind(build_case("three-replicas-secret-credentials"))[
        "Deployment"]["spec"]["template"]["spec"]
    for container in pod["initContainers"]:  # fetch-base and the adapter agent
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
            "secretKeyRef": {"name": "minio-creds", "key": "AWS_ACCESS_KEY_ID"}}}
        assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    # vLLM reads only local files: it gets no object-store credentials at all.
    assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith("AWS_")]
    irsa = by_kind(build_case("spot-gke-irsa"))["Deployment"]["spec"]["template"]["spec"]
    assert irsa["serviceAccountName"] == "llm-server"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & {
        e["name"] for c in irsa["initContainers"] + irsa["containers"] for e in c["env"]}


def test_images_and_gpus_per_capacity():
    def vllm_of(name: str) -> dict:
        return by_kind(build_case(name))["Deployment"]["spec"]["template"]["spec"][
            "containers"][0]

    gpu = vllm_of("gpu-pool-two-gpus-pvc-base")
    assert gpu["image"] == "vllm/vllm-openai:v0.32.0"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert gpu["args"][gpu["args"].index("--tensor-parallel-size") + 1] == "2"
    assert gpu["args"][gpu["args"].index("--model") + 1] == "/models/pvc/llama-3-70b"
    assert gpu["args"][-1] == "--enable-prefix-caching"
    cpu = vllm_of("cpu-only-karpenter-on-demand")
    assert cpu["image"] == "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"} in cpu["env"]
    assert "--quantization" not in cpu["args"]
    four_bit = vllm_of("single-replica-pending-adapter")
    assert four_bit["args"][four_bit["args"].index("--quantization") + 1] == "bitsandbytes"
    assert vllm_of("spot-gke-irsa")["image"] == "registry.local/vllm/vllm-openai:dev"


def test_spot_placement_only_when_spot_is_allowed():
    spot = by_kind(build_case("spot-gke-irsa"))["Deployment"]["spec"]["template"]["spec"]
    assert spot["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
            "effect": "NoSchedule"} in spot["tolerations"]
    on_demand = by_kind(build_case("cpu-only-karpenter-on-demand"))["Deployment"]
    pod = on_demand["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand"}
    assert "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


def test_conflicting_capacity_label_is_refused():
    bad = spec(resources={
        "spot": True, "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}})
    with pytest.raises(SpecError, match="capacity") as refused:
        build_children(META, bad, parse_config({}), [])
    message = str(refused.value)
    assert "spec.resources.nodeSelector[karpenter.sh/capacity-type]" in message
    assert "chosen by spec.resources.spot," in message  # the ModelServe's field


# The restart contract -------------------------------------------------------------------

HOT_CHANGES = {
    "adapter added": {"adapters": [*ADAPTERS, {"name": "extra", "uri": "s3://adapters/extra"}]},
    "adapter removed": {"adapters": ADAPTERS[1:]},
    "adapter pinned": {"adapters": [ADAPTERS[0], {**ADAPTERS[1], "sha256": "c" * 64}]},
    "replicas": {"replicas": 4},
}
ROLLING_CHANGES = {
    "base model": {"baseModel": {"uri": "s3://models/llama-3-8b-v2", "loadIn4bit": True}},
    "4-bit loading": {"baseModel": {"uri": "s3://models/llama-3-8b"}},
    "served name": {"baseModel": {**BASE["baseModel"], "servedName": "llama"}},
    "image": {"image": "registry.local/vllm/vllm-openai:2"},
    "max adapters in memory": {"maxAdaptersInMemory": 16},
    "vllm max loras": {"vllm": {"maxLoras": 2}},
    "vllm extra args": {"vllm": {"extraArgs": ["--enforce-eager"]}},
    "resources": {"resources": {"memory": "32Gi"}},
    "storage endpoint": {"storage": {"endpoint": "http://minio:9000"}},
    "port": {"port": 9000},
}


@pytest.mark.parametrize("change", sorted(HOT_CHANGES))
def test_hot_changes_leave_the_pod_template_unchanged(change):
    config = parse_config({})
    before = build_deployment(META, spec(), config)["spec"]["template"]
    after = build_deployment(META, spec(**HOT_CHANGES[change]), config)["spec"]["template"]
    assert after == before


def test_adapter_resolution_changes_only_the_configmap():
    config = parse_config({})
    pending = by_kind(build_children(META, spec(), config, PENDING))
    resolved = by_kind(build_children(META, spec(), config, RESOLVED))
    assert pending["Deployment"] == resolved["Deployment"]
    assert pending["Service"] == resolved["Service"]
    assert pending["ConfigMap"]["data"] != resolved["ConfigMap"]["data"]


@pytest.mark.parametrize("change", sorted(ROLLING_CHANGES))
def test_base_image_resource_changes_roll_the_deployment(change):
    config = parse_config({})
    before = build_deployment(META, spec(), config)["spec"]["template"]
    after = build_deployment(META, spec(**ROLLING_CHANGES[change]), config)["spec"]["template"]
    assert after != before


def test_restart_hash_tracks_what_lives_only_in_the_configmap():
    config = parse_config({})

    def digest(**overrides):
        template = build_deployment(META, spec(**overrides), config)["spec"]["template"]
        return template["metadata"]["annotations"][RESTART_HASH_ANNOTATION]

    assert digest() == digest(**HOT_CHANGES["adapter added"])
    assert digest() != digest(**ROLLING_CHANGES["base model"])
    assert digest() != digest(**ROLLING_CHANGES["storage endpoint"])
    default_endpoint = build_deployment(META, spec(), parse_config(
        {"storage": {"defaultEndpoint": "http://s3.local:9000"}}))["spec"]["template"]
    assert default_endpoint["metadata"]["annotations"][RESTART_HASH_ANNOTATION] != digest()
