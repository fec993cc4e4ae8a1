"""A corpus of malformed FineTuneJobs and ModelServes, each the example from examples/
with one field wrong, applied to the real API server (as `kubectl apply` sends it:
strict field validation) with the operator process running. Each must be

- refused by the API server naming the field (CRD schema and CEL rules), or
- accepted, then Stalled=True naming the field within 30 s (the operator's own checks,
  or the API server refusing a child: a Pod field, a missing ServiceAccount or
  PriorityClass),

and no child of it may exist: no Pod, ConfigMap, Service, Secret or Deployment with its
labels. Every object of the corpus is applied at once, so the operator meets them as a
burst; each case waits from its own creation. Two valid examples (the ServiceAccounts
they name exist) show that the operator does create children here, so an empty
namespace is not the corpus passing by default."""

from __future__ import annotations

import time

import pytest
from example_bodies import FTJ, MS, example, mutate
from ftj_harness import Cluster, wait_for

from kubetune.devenv.controlplane import ADMIN
from kubetune.devenv.kubeapi import (
    CONFIGMAPS,
    DEPLOYMENTS,
    PODS,
    SECRETS,
    SERVICES,
    ApiError,
    Resource,
)

pytestmark = pytest.mark.integration
PLURAL = {FTJ: "finetunejobs", MS: "modelserves"}
LABEL = {FTJ: "kubetune.dev/finetunejob", MS: "kubetune.dev/modelserve"}
STALLED_WITHIN = 30.0
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
EXISTING_ACCOUNTS = ("finetune-irsa", "model-serve-irsa")  # what the examples name
NOT_EXISTS = {"key": "gpu", "operator": "Exists", "value": "yes"}
BAD_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": "pool", "operator": "Sometimes", "values": ["a"]}]}]}}}

# (case name, kind, dotted path in the example, value, the field to be named)
CASES = [
    # label syntax (nodeSelector keys and values)
    ("ftj-ns-key-space", FTJ, "spec.resources.nodeSelector", {"node type": "gpu"},
     "spec.resources.nodeSelector"),
    ("ftj-ns-key-prefix", FTJ, "spec.resources.nodeSelector", {"Bad_Prefix/pool": "gpu"},
     "spec.resources.nodeSelector"),
    ("ftj-ns-key-empty-name", FTJ, "spec.resources.nodeSelector", {"example.com/": "gpu"},
     "spec.resources.nodeSelector"),
    ("ftj-ns-value-64", FTJ, "spec.resources.nodeSelector", {"pool": "g" * 64},
     "spec.resources.nodeSelector"),
    ("ftj-ns-value-chars", FTJ, "spec.resources.nodeSelector", {"pool": "gpu pool"},
     "spec.resources.nodeSelector"),
    ("ms-ns-key-space", MS, "spec.resources.nodeSelector", {"node type": "gpu"},
     "spec.resources.nodeSelector"),
    ("ms-ns-value-64", MS, "spec.resources.nodeSelector", {"pool": "g" * 64},
     "spec.resources.nodeSelector"),
    # cross-field rules
    ("ftj-spot-fallback-never", FTJ, "spec.spot.fallbackAfterPreemptions", 11, "spec.spot"),
    ("ftj-ns-vs-capacity", FTJ, "spec.resources.nodeSelector",
     {"karpenter.sh/capacity-type": "on-demand"}, "spec.resources.nodeSelector"),
    ("ftj-two-credentials", FTJ, "spec.output.credentials.secretRef", {"name": "s3-creds"},
     "spec.output.credentials"),
    ("ftj-gate-unmeasured", FTJ, "spec.evaluation.gate.metric", "exactMatch",
     "spec.evaluation"),
    ("ms-duplicate-adapters", MS, "spec.adapters[1].name", "support-bot-v1", "spec.adapters"),
    # references to objects that do not exist
    ("ftj-sa-missing", FTJ, "spec.output.credentials.serviceAccountName", "nobody-irsa",
     "spec.output.credentials.serviceAccountName"),
    ("ftj-priority-missing", FTJ, "spec.resources.priorityClassName", "no-such-class",
     "spec.resources.priorityClassName"),
    ("ms-sa-missing", MS, "spec.storage.credentials.serviceAccountName", "nobody-irsa",
     "spec.storage.credentials.serviceAccountName"),
    ("ms-priority-missing", MS, "spec.resources.priorityClassName", "no-such-class",
     "spec.resources.priorityClassName"),
    # pod fields only the Pod validation judges
    ("ftj-toleration-exists-value", FTJ, "spec.resources.tolerations", [NOT_EXISTS],
     "spec.resources.tolerations"),
    ("ftj-toleration-seconds", FTJ, "spec.resources.tolerations",
     [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
     "spec.resources.tolerations"),
    ("ftj-affinity-operator", FTJ, "spec.resources.affinity", BAD_AFFINITY,
     "spec.resources.affinity"),
    ("ftj-secret-key", FTJ, "spec.output.credentials",
     {"secretRef": {"name": "s3-creds", "accessKeyIdKey": "bad key"}},
     "spec.output.credentials.secretRef"),
    ("ms-toleration-exists-value", MS, "spec.resources.tolerations", [NOT_EXISTS],
     "spec.resources.tolerations"),
    ("ms-affinity-operator", MS, "spec.resources.affinity", BAD_AFFINITY,
     "spec.resources.affinity"),
    # bad quantities and numbers
    ("ftj-cpu-words", FTJ, "spec.resources.cpu", "8 cores", "spec.resources.cpu"),
    ("ftj-memory-negative", FTJ, "spec.resources.memory", "-48Gi", "spec.resources.memory"),
    ("ftj-gpu-name", FTJ, "spec.resources.gpuResourceName", "nvidia.com/GPU!",
     "spec.resources.gpuResourceName"),
    ("ftj-workers-zero", FTJ, "spec.resources.workers", 0, "spec.resources.workers"),
    ("ftj-learning-rate", FTJ, "spec.training.learningRate", -1, "spec.training.learningRate"),
    ("ftj-eval-fraction", FTJ, "spec.dataset.evalFraction", 1.5, "spec.dataset.evalFraction"),
    ("ftj-lora-rank", FTJ, "spec.method.lora.rank", 0, "spec.method.lora.rank"),
    ("ftj-budget-negative", FTJ, "spec.spot.checkpointBudgetSeconds", -5,
     "spec.spot.checkpointBudgetSeconds"),
    ("ms-cpu-words", MS, "spec.resources.cpu", "lots", "spec.resources.cpu"),
    ("ms-max-loras", MS, "spec.vllm.maxLoras", 0, "spec.vllm.maxLoras"),
    ("ms-replicas", MS, "spec.replicas", -1, "spec.replicas"),
    ("ms-port", MS, "spec.port", 70000, "spec.port"),
    # bad URIs, names and enums
    ("ftj-base-ftp", FTJ, "spec.baseModel.uri", "ftp://models/llama", "spec.baseModel.uri"),
    ("ftj-dataset-bare", FTJ, "spec.dataset.uri", "tickets.jsonl", "spec.dataset.uri"),
    ("ftj-output-https", FTJ, "spec.output.uri", "https://bucket/adapters", "spec.output.uri"),
    ("ftj-endpoint-bare", FTJ, "spec.output.endpoint", "minio:9000", "spec.output.endpoint"),
    ("ftj-sa-name-bad", FTJ, "spec.output.credentials.serviceAccountName", "Bad_Name",
     "spec.output.credentials.serviceAccountName"),
    ("ftj-strategy", FTJ, "spec.spot.strategy", "Sometimes", "spec.spot.strategy"),
    ("ftj-retention", FTJ, "spec.retention.checkpoints", "Forever",
     "spec.retention.checkpoints"),
    ("ftj-field-typo", FTJ, "spec.resources.nodeSelectr", {"pool": "gpu"},
     "spec.resources.nodeSelectr"),
    ("ms-base-ftp", MS, "spec.baseModel.uri", "ftp://models/llama", "spec.baseModel.uri"),
    ("ms-adapter-uri", MS, "spec.adapters[1].uri", "https://adapters/sql", "spec.adapters[1].uri"),
    ("ms-adapter-sha", MS, "spec.adapters[1].sha256", "xyz", "spec.adapters[1].sha256"),
    ("ms-job-ref-name", MS, "spec.adapters[0].fineTuneJobRef.name", "Bad_Name",
     "spec.adapters[0].fineTuneJobRef.name"),
]


def apply(cluster: Cluster, body: dict):
    """POST as `kubectl apply` does; (ApiError or None, when the API server answered)."""
    path = f"/apis/kubetune.dev/v1alpha1/namespaces/{cluster.namespace}/{PLURAL[body['kind']]}"
    try:
        cluster.api.request("POST", path, body, query={"fieldValidation": "Strict"})
    except ApiError as exc:
        return exc, time.monotonic()
    return None, time.monotonic()


@pytest.fixture(scope="module")
def corpus(kube_cluster, tmp_path_factory):
    """One namespace, the operator, and every case applied at once: name -> (refusal
    or None, when it was answered)."""
    namespace = kube_cluster.namespace("refusal-corpus")
    kubeconfig = kube_cluster.control_plane.kubeconfig(ADMIN, namespace)
    cluster = Cluster(kube_cluster.api, kubeconfig, tmp_path_factory.mktemp("corpus"),
                      namespace, kube_cluster.control_plane)
    for account in EXISTING_ACCOUNTS:
        cluster.api.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": account}}, namespace)
    operator = cluster.operator().start()
    try:
        answers = {"ftj-valid": apply(cluster, example(FTJ, "ftj-valid")),
                   "ms-valid": apply(cluster, example(MS, "ms-valid"))}
        for name, kind, path, value, _ in CASES:
            answers[name] = apply(cluster, mutate(example(kind, name), path, value))
        yield cluster, answers
    finally:
        operator.stop()
        kube_cluster.delete_namespace(namespace, force_pods=True)


def children(cluster: Cluster, kind: str, name: str) -> list[str]:
    selector = f"{LABEL[kind]}={name}"
    return [f"{res.plural}/{item['metadata']['name']}"
            for res in (PODS, CONFIGMAPS, SERVICES, SECRETS, DEPLOYMENTS)
            for item in cluster.api.list(res, cluster.namespace, selector)]


def stalled(cluster: Cluster, kind: str, name: str) -> dict | None:
    path = (f"/apis/kubetune.dev/v1alpha1/namespaces/{cluster.namespace}/"
            f"{PLURAL[kind]}/{name}")
    status = cluster.api.request("GET", path).get("status") or {}
    found = next((c for c in status.get("conditions") or [] if c["type"] == "Stalled"), {})
    return found if found.get("status") == "True" else None


def test_the_valid_examples_do_get_children(corpus):
    cluster, answers = corpus
    assert answers["ftj-valid"][0] is None and answers["ms-valid"][0] is None
    wait_for(lambda: any(p.startswith("pods/") for p in children(cluster, FTJ, "ftj-valid")),
             60, "the valid job's pods")
    wait_for(lambda: any(d.startswith("deployments/")
                         for d in children(cluster, MS, "ms-valid")), 60,
             "the valid serve's Deployment")


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, kind, path, value, field", CASES, ids=[c[0] for c in CASES])
def test_refused_or_stalled_naming_the_field_and_nothing_created(corpus, name, kind, path,
                                                                 value, field):
    cluster, answers = corpus
    refusal, answered = answers[name]
    if refusal is not None:
        message = refusal.body.get("message", "") if isinstance(refusal.body, dict) \
            else str(refusal.body)
        assert refusal.status in (400, 422), (refusal.status, message)
        assert field in message, message
    else:
        deadline = answered + STALLED_WITHIN
        condition = None
        while condition is None and time.monotonic() < deadline:
            condition = stalled(cluster, kind, name)
            time.sleep(0.2)
        assert condition is not None, f"{kind} {name} accepted, not Stalled within " \
            f"{STALLED_WITHIN:.0f} s; children: {children(cluster, kind, name)}"
        assert field in condition["message"], condition
    assert children(cluster, kind, name) == []
