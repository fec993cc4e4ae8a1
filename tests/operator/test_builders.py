"""Builders: golden manifests per scenario, plus the rules every child must follow.

Regenerate the golden files after an intended change with
`KUBETUNE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/test_builders.py`.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from operator_specs import make_spec

from kubetune.api import FineTuneJobSpec, SpecError, parse_spec
from kubetune.devenv.pod_security import check_restricted
from kubetune.operator.builders import (
    JobMeta,
    build_children,
    build_head_pod,
    build_worker_pod,
)
from kubetune.operator.config import OperatorConfig, parse_config

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"
K8S_VERSION = "1.37.0"
JOB = JobMeta(name="llama-alpaca", namespace="ml-team", uid="0f5c2c1e-8d1a-4a43-9b1e-1f0c7c9b2a11")
TOKEN = "golden-ray-token"  # the operator passes secrets.token_urlsafe(32)

SPOT_3 = {"spot": {"enabled": True}, "resources": {"workers": 3, "gpusPerWorker": 2}}
CASES = {
    # name: (spec overrides, config, attempt, capacity type)
    "default-qlora": ({}, {}, 1, "on-demand"),
    "spot-karpenter-3-workers": (SPOT_3, {"spotProvider": "karpenter"}, 1, "spot"),
    "spot-eks-3-workers": (SPOT_3, {"spotProvider": "eks"}, 1, "spot"),
    "spot-gke-3-workers": (SPOT_3, {"spotProvider": "gke"}, 1, "spot"),
    "spot-aks-3-workers": (SPOT_3, {"spotProvider": "aks"}, 1, "spot"),
    "credentials-irsa": (
        {"output": {"region": "us-west-2", "credentials": {"serviceAccountName": "llm-trainer"}}},
        {},
        1,
        "on-demand",
    ),
    "credentials-secret": (
        {
            "output": {
                "endpoint": "http://minio.storage.svc:9000",
                "credentials": {"secretRef": {"name": "minio-creds", "accessKeyIdKey": "user"}},
            },
            "images": {"trainer": "registry.local/kubetune/trainer:dev", "pullPolicy": "Always"},
        },
        {"storage": {"defaultEndpoint": "http://ignored.example:9000"}},
        1,
        "on-demand",
    ),
    "ondemand-fallback-gke": (
        {
            "spot": {
                "enabled": True,
                "strategy": "FallbackToOnDemand",
                "checkpointBudgetSeconds": 100,
            },
            "resources": {
                "workers": 2,
                "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "priorityClassName": "batch-low",
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 10,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchLabels": {"kubetune.dev/finetunejob": "llama-alpaca"}
                                    },
                                },
                            }
                        ]
                    }
                },
            },
        },
        {"spotProvider": "gke"},
        4,
        "on-demand",
    ),
}


def build_case(name: str) -> list[dict]:
    overrides, config, attempt, capacity = CASES[name]
    return build_children(
        JOB, make_spec(**overrides), parse_config(config), attempt, capacity, TOKEN
    )


def pods_of(children: list[dict]) -> list[dict]:
    return [child for child in children if child["kind"] == "Pod"]


def env_of(pod: dict) -> dict:
    return {entry["name"]: entry for entry in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_golden(name):
    rendered = yaml.safe_dump_all(build_case(name), sort_keys=False, width=100)
    path = GOLDEN_DIR / f"{name}.yaml"
    if UPDATE_GOLDEN:
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with KUBETUNE_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    if rendered != expected:
        diff = "\n".join(
            difflib.unified_diff(
                expected.splitlines(), rendered.splitlines(), "golden", "built", lineterm=""
            )
        )
        pytest.fail(
            f"{name} drifted from {path.name} (KUBETUNE_UPDATE_GOLDEN=1 to accept):\n{diff}"
        )


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_child_is_a_valid_kubernetes_object(name):
    for child in build_case(name):
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_pod_meets_restricted_pod_security(name):
    for pod in pods_of(build_case(name)):
        assert check_restricted(pod["spec"]) == [], pod["metadata"]["name"]


def test_restricted_checker_catches_violations():
    pod = pods_of(build_case("default-qlora"))[0]
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert len(check_restricted(pod["spec"])) == 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_children_are_owned_labelled_and_never_restarted(name):
    overrides, _, attempt, capacity = CASES[name]
    spec = make_spec(**overrides)
    children = build_case(name)
    auth = ["Secret"] if spec.resources.workers > 1 else []
    assert [c["kind"] for c in children] == ["ConfigMap", "Service", *auth, "Pod"] + ["Pod"] * (
        spec.resources.workers - 1
    )
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": JOB.name,
            "uid": JOB.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == JOB.namespace
        assert child["metadata"]["labels"]["kubetune.dev/finetunejob"] == JOB.name
    for pod in pods_of(children):
        assert pod["spec"]["restartPolicy"] == "Never"
        assert (
            pod["spec"]["terminationGracePeriodSeconds"] == spec.spot.checkpoint_budget_seconds + 5
        )
        assert pod["metadata"]["labels"]["kubetune.dev/attempt"] == str(attempt)
        assert pod["metadata"]["labels"]["kubetune.dev/capacity-type"] == capacity


@pytest.mark.parametrize("name", sorted(CASES))
def test_credentials_only_by_reference(name):
    for pod in pods_of(build_case(name)):
        env = env_of(pod)
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if variable in env:
                assert "value" not in env[variable]
                assert "secretKeyRef" in env[variable]["valueFrom"]


def test_secret_and_irsa_credentials():
    secret_pod = pods_of(build_case("credentials-secret"))[0]
    env = env_of(secret_pod)
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-creds",
        "key": "user",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-creds",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert "serviceAccountName" not in secret_pod["spec"]

    irsa_pod = pods_of(build_case("credentials-irsa"))[0]
    assert irsa_pod["spec"]["serviceAccountName"] == "llm-trainer"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & env_of(irsa_pod).keys()
    assert env_of(irsa_pod)["AWS_REGION"]["value"] == "us-west-2"


@pytest.mark.parametrize(
    "spec_endpoint, default_endpoint, expected",
    [
        ("http://minio:9000", "http://default:9000", "http://minio:9000"),
        (None, "http://default:9000", "http://default:9000"),
        (None, "", None),
    ],
)
def test_endpoint_precedence(spec_endpoint, default_endpoint, expected):
    output = {"endpoint": spec_endpoint} if spec_endpoint else {}
    children = build_children(
        JOB,
        make_spec(output=output),
        parse_config({"storage": {"defaultEndpoint": default_endpoint}}),
        1,
        "on-demand",
    )
    assert env_of(pods_of(children)[0]).get("AWS_ENDPOINT_URL", {}).get("value") == expected
    document = json.loads(children[0]["data"]["spec.json"])
    assert document["spec"]["output"].get("endpoint") == expected


def test_spec_configmap_is_the_resolved_spec_the_trainer_reads():
    configmap = build_case("default-qlora")[0]
    document = json.loads(configmap["data"]["spec.json"])
    assert document["metadata"] == {"name": JOB.name, "namespace": JOB.namespace, "uid": JOB.uid}
    resolved = parse_spec(FineTuneJobSpec, document["spec"])
    assert resolved.training.epochs == 1
    assert (
        resolved.method.quantization is not None
        and resolved.method.quantization.quant_type == "nf4"
    )
    assert resolved.images.trainer == "ghcr.io/kubetune/trainer:0.1.0"
    head = pods_of(build_case("default-qlora"))[0]
    command = head["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "kubetune.workers.train"]
    assert command[command.index("--spec") + 1] == "/etc/kubetune/spec.json"
    assert command[command.index("--namespace") + 1] == JOB.namespace
    assert command[command.index("--job") + 1] == JOB.name
    assert command[command.index("--status-port") + 1] == "8080"
    mount = next(m for m in head["spec"]["containers"][0]["volumeMounts"] if m["name"] == "spec")
    volume = next(v for v in head["spec"]["volumes"] if v["name"] == "spec")
    assert (
        mount["mountPath"] == "/etc/kubetune"
        and volume["configMap"]["name"] == configmap["metadata"]["name"]
    )


def test_workers_join_the_head_service():
    children = build_case("spot-karpenter-3-workers")
    service = children[1]
    workers = pods_of(children)[1:]
    assert [w["metadata"]["name"] for w in workers] == [
        "llama-alpaca-worker-1",
        "llama-alpaca-worker-2",
    ]
    for worker in workers:
        name = service["metadata"]["name"]
        assert worker["spec"]["containers"][0]["command"] == [
            "python", "-m", "kubetune.workers.train.rayworker",
            f"--address={name}:6379",
            # The head's status port takes the worker's spot notice (POST /stop).
            f"--stop-url=http://{name}:8080/stop",
            "--wait-seconds=25",
        ]
    assert service["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in service["spec"]["ports"]} == {6379, 8080}
    head = pods_of(children)[0]
    assert service["spec"]["selector"].items() <= head["metadata"]["labels"].items()



def test_multi_worker_pods_share_the_ray_token_by_reference():
    children = build_case("spot-karpenter-3-workers")
    (secret,) = [c for c in children if c["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "llama-alpaca-ray-auth"
    assert secret["immutable"] is True and "stringData" not in secret
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    assert children.index(secret) < children.index(pods_of(children)[0])
    for pod in pods_of(children):
        env = env_of(pod)
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}
        assert env["RAY_AUTH_TOKEN"] == {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "llama-alpaca-ray-auth", "key": "token"}},
        }
        assert TOKEN not in json.dumps(pod)


def test_single_worker_job_has_no_ray_token():
    children = build_children(JOB, make_spec(), OperatorConfig(), 1, "on-demand")
    assert "Secret" not in [c["kind"] for c in children]
    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & env_of(pods_of(children)[0]).keys()


def test_multi_worker_job_without_a_token_is_refused():
    spec = make_spec(resources={"workers": 2})
    with pytest.raises(ValueError, match="Ray auth token"):
        build_children(JOB, spec, OperatorConfig(), 1, "on-demand")
    with pytest.raises(ValueError, match="Ray auth token"):
        build_children(JOB, spec, OperatorConfig(), 1, "on-demand", "")


def test_ray_token_secret_name_stays_a_valid_label_for_long_job_names():
    long_job = JobMeta(name="a." * 100 + "b", namespace="ml-team", uid="u")
    children = build_children(
        long_job, make_spec(resources={"workers": 2}), OperatorConfig(), 1, "spot", TOKEN
    )
    (secret,) = [c for c in children if c["kind"] == "Secret"]
    name = secret["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-ray-auth")
    ref = env_of(pods_of(children)[1])["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == name

@pytest.mark.parametrize(
    "provider, capacity, selector, toleration_keys",
    [
        ("karpenter", "spot", {"karpenter.sh/capacity-type": "spot"}, []),
        ("karpenter", "on-demand", {"karpenter.sh/capacity-type": "on-demand"}, []),
        ("eks", "spot", {"eks.amazonaws.com/capacityType": "SPOT"}, []),
        ("eks", "on-demand", {"eks.amazonaws.com/capacityType": "ON_DEMAND"}, []),
        ("gke", "spot", {"cloud.google.com/gke-spot": "true"}, ["cloud.google.com/gke-spot"]),
        ("gke", "on-demand", {}, []),
        (
            "aks",
            "spot",
            {"kubernetes.azure.com/scalesetpriority": "spot"},
            ["kubernetes.azure.com/scalesetpriority"],
        ),
        ("aks", "on-demand", {}, []),
    ],
)
def test_placement_per_provider_and_capacity(provider, capacity, selector, toleration_keys):
    spec = make_spec(
        spot={"enabled": True},
        resources={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
    )
    pod = build_head_pod(JOB, spec, OperatorConfig(spot_provider=provider), 1, capacity)
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu", **selector}
    assert [t["key"] for t in pod["spec"]["tolerations"]] == ["nvidia.com/gpu", *toleration_keys]


def test_selector_contradicting_the_capacity_type_is_refused():
    spec = make_spec(resources={"nodeSelector": {"karpenter.sh/capacity-type": "spot"}})
    with pytest.raises(
        SpecError, match=r"spec.resources.nodeSelector\[karpenter.sh/capacity-type\]"
    ) as refused:
        build_head_pod(JOB, spec, OperatorConfig(), 1, "on-demand")
    assert "chosen by spec.spot," in str(refused.value)
    agreeing = build_head_pod(JOB, spec, OperatorConfig(), 1, "spot")
    assert agreeing["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}


@pytest.mark.parametrize(
    "resources, expected",
    [
        ({}, {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}),
        ({"gpusPerWorker": 0, "cpu": "2", "memory": "8Gi"}, {"cpu": "2", "memory": "8Gi"}),
        (
            {"gpusPerWorker": 8, "gpuResourceName": "amd.com/gpu"},
            {"cpu": "4", "memory": "16Gi", "amd.com/gpu": "8"},
        ),
    ],
)
def test_resources_are_guaranteed(resources, expected):
    pod = build_head_pod(JOB, make_spec(resources=resources), OperatorConfig(), 1, "on-demand")
    assert pod["spec"]["containers"][0]["resources"] == {"requests": expected, "limits": expected}


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(SpecError, match="metadata.uid"):
        JobMeta.from_meta({"name": "x", "namespace": "y"})
    assert JobMeta.from_meta(
        {"name": "x", "namespace": "y", "uid": "u", "generation": 3}
    ) == JobMeta("x", "y", "u")
    with pytest.raises(ValueError, match="worker index 3"):
        build_worker_pod(JOB, make_spec(resources={"workers": 3}), OperatorConfig(), 1, "spot", 3)
    with pytest.raises(ValueError, match="attempt"):
        build_children(JOB, make_spec(), OperatorConfig(), 0, "spot")
