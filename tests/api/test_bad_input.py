"""A table of malformed FineTuneJobs and ModelServes, refused twice over.

Once by the real kube-apiserver with the generated CRDs installed (structural schema and
CEL rules: what `kubectl apply` meets), as a server-side dry run and as a real create, after
which nothing of that name may be stored; and once by the pydantic models (what the operator
does with a body that reached it anyway, e.g. past an older CRD). Each refusal must name the
offending field, because the message is all a user gets to fix their YAML with.
"""

from __future__ import annotations

import pytest
from crd_api import (
    DELETE,
    FTJ,
    MODEL,
    MS,
    assert_refused_naming,
    assert_unknown_field,
    create,
    example,
    mutate,
    refusal,
    stored_names,
)

from kubetune.api import FineTuneJobSpec, SpecError, parse_spec

QUANTITY_FIELDS = ("spec.resources.cpu", "spec.resources.memory")
BAD_QUANTITIES = ("16GiGi", "1.2.3", ".", "0", "-4", "lots", "1e", "4 Gi")

BAD = [
    # (kind, path, value, field the errors must name)
    (FTJ, "spec.training.learningRate", "fast", "spec.training.learningRate"),
    (FTJ, "spec.training.learningRate", 5, "spec.training.learningRate"),
    (FTJ, "spec.training.learningRate", 0, "spec.training.learningRate"),
    (FTJ, "spec.training.batchSize", 0, "spec.training.batchSize"),
    (FTJ, "spec.training.maxSeqLength", 8, "spec.training.maxSeqLength"),
    (FTJ, "spec.training.scheduler", "exponential", "spec.training.scheduler"),
    (FTJ, "spec.training.maxSteps", 100, "spec.training"),  # epochs is set too
    (FTJ, "spec.method.type", "full", "spec.method.type"),
    (FTJ, "spec.method.lora.rank", 0, "spec.method.lora.rank"),
    (FTJ, "spec.method.lora.dropout", 1.0, "spec.method.lora.dropout"),
    (FTJ, "spec.method.lora.targetModules", [], "spec.method.lora.targetModules"),
    (FTJ, "spec.method.quantization.bits", 3, "spec.method.quantization.bits"),
    (FTJ, "spec.method.quantization.quantType", "int4", "spec.method.quantization.quantType"),
    (FTJ, "spec.method.type", "lora", "spec.method"),  # quantization is set: qlora only
    (FTJ, "spec.baseModel", DELETE, "spec.baseModel"),
    (FTJ, "spec.baseModel.uri", "ftp://models/llama", "spec.baseModel.uri"),
    (FTJ, "spec.baseModel.revision", "main", "spec.baseModel"),  # the base is s3://: hf-only
    (FTJ, "spec.dataset.uri", "s3://bucket", "spec.dataset.uri"),
    (FTJ, "spec.dataset.format", "csv", "spec.dataset.format"),
    (FTJ, "spec.dataset.evalFraction", 0.9, "spec.dataset.evalFraction"),
    (FTJ, "spec.output", DELETE, "spec.output"),
    (FTJ, "spec.output.uri", "https://bucket/adapters", "spec.output.uri"),
    (FTJ, "spec.output.endpoint", "minio:9000", "spec.output.endpoint"),
    (FTJ, "spec.output.credentials.secretRef", {"name": "s3-creds"}, "spec.output.credentials"),
    (FTJ, "spec.resources.workers", 0, "spec.resources.workers"),
    (FTJ, "spec.resources.workers", 65, "spec.resources.workers"),
    (FTJ, "spec.resources.gpusPerWorker", 17, "spec.resources.gpusPerWorker"),
    (FTJ, "spec.resources.tolerations[0].effect", "Sometimes", "spec.resources.tolerations[0].effect"),
    (FTJ, "spec.spot.checkpointIntervalSteps", -1, "spec.spot.checkpointIntervalSteps"),
    (FTJ, "spec.spot.strategy", "Pray", "spec.spot.strategy"),
    (FTJ, "spec.spot.backoff", {"initialSeconds": 600, "maxSeconds": 60}, "spec.spot.backoff"),
    (FTJ, "spec.retries.maxErrorRetries", "two", "spec.retries.maxErrorRetries"),
    (FTJ, "spec.evaluation.metrics", ["bleu"], "spec.evaluation.metrics[0]"),
    (FTJ, "spec.evaluation.maxExamples", 0, "spec.evaluation.maxExamples"),
    (FTJ, "spec.evaluation.gate.minGain", DELETE, "spec.evaluation.gate"),  # no bar at all
    (FTJ, "spec.evaluation.gate.threshold", 0.5, "spec.evaluation.gate"),  # two bars
    (FTJ, "spec.evaluation.gate.metric", "exactMatch", "spec.evaluation"),  # not measured
    (FTJ, "spec.evaluation.when.end", False, "spec.evaluation"),  # the gate judges the end
    (FTJ, "spec.evaluation.when.baseline", False, "spec.evaluation"),  # minGain needs it
    (FTJ, "spec.dataset.format", "text", "spec.evaluation.metrics"),  # contains: no answers
    (FTJ, "spec.dataset.evalFraction", 0, "spec.evaluation"),  # no held-out rows left
    (MS, "spec.replicas", -1, "spec.replicas"),
    (MS, "spec.adapters[0].uri", "s3://models/a/adapter", "spec.adapters[0]"),  # has a ref too
    (MS, "spec.adapters[1].uri", DELETE, "spec.adapters[1]"),  # now neither
    (MS, "spec.adapters[1].name", "support-bot-v1", "spec.adapters"),  # duplicate name
    (MS, "spec.adapters[1].name", "llama-3.1-8b", "spec"),  # same as baseModel.servedName
    (MS, "spec.adapters[1].sha256", "not-a-hash", "spec.adapters[1].sha256"),
    (MS, "spec.adapters[1].name", "Bad_Name!", "spec.adapters[1].name"),
    # A FineTuneJob cannot have a name this long (see test_bad_names), so no ref may either.
    (MS, "spec.adapters[0].fineTuneJobRef.name", "a" * 54, "spec.adapters[0].fineTuneJobRef.name"),
    (MS, "spec.port", 80, "spec.port"),
    (MS, "spec.baseModel.loadIn4bit", "yes", "spec.baseModel.loadIn4bit"),
    (MS, "spec.maxAdaptersInMemory", 0, "spec.maxAdaptersInMemory"),
    (MS, "spec.baseModel.uri", DELETE, "spec.baseModel.uri"),
    (MS, "spec.baseModel.uri", "hf://meta-llama/Llama-3.1-8B", "spec.baseModel"),
    (MS, "spec.port", 8081, "spec"),  # the adapter agent's port
    (MS, "spec.maxAdaptersInMemory", 2, "spec"),  # below vllm.maxLoras (4)
    (MS, "spec.vllm.maxLoraRank", 12, "spec.vllm.maxLoraRank"),  # not one of vLLM's sizes
    (MS, "spec.vllm.maxLoras", 0, "spec.vllm.maxLoras"),
    (MS, "spec.vllm.dtype", "int8", "spec.vllm.dtype"),
    (MS, "spec.vllm.gpuMemoryUtilization", 1.5, "spec.vllm.gpuMemoryUtilization"),
    (MS, "spec.resources.gpusPerWorker", 0, "spec"),  # the example's loadIn4bit needs a GPU
] + [
    # Every quantity field of both kinds, with what a new user types by mistake.
    (kind, field, value, field)
    for kind in (FTJ, MS)
    for field in QUANTITY_FIELDS
    for value in BAD_QUANTITIES
]

UNKNOWN = [
    (FTJ, "spec.trainng", {"epochs": 1}),
    (FTJ, "spec.training.learningrate", 0.001),
    (MS, "spec.adapters[0].fineTuneJobref", {"name": "x"}),
    (MS, "spec.limits", {"maxTokens": 256}),  # the former engine's; vLLM has maxModelLen
    (MS, "spec.vllm.maxLora", 2),
]


def _ids(table):
    return [f"{row[0]}:{row[1]}={row[2]!r}"[:80] for row in table]


def _bad_body(kind: str, index: int, path: str, value) -> dict:
    return mutate(example(kind, f"bad-{kind.lower()}-{index}"), path, value)


def _assert_models_refuse(kind: str, body: dict, field: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(MODEL[kind], body["spec"])
    named = str(refused.value)
    assert field in named or field.removeprefix("spec.") in named, named


@pytest.mark.parametrize("index", range(len(BAD)), ids=_ids(BAD))
def test_bad_input_refused_by_the_api_server_and_the_models(kube_cluster, api_namespace, index):
    kind, path, value, field = BAD[index]
    body = _bad_body(kind, index, path, value)

    for dry_run in (True, False):
        assert_refused_naming(refusal(kube_cluster.api, api_namespace, body, dry_run), field)
    assert body["metadata"]["name"] not in stored_names(kube_cluster.api, api_namespace, kind)

    _assert_models_refuse(kind, body, field)


@pytest.mark.parametrize("index", range(len(UNKNOWN)), ids=_ids(UNKNOWN))
def test_unknown_fields_refused_by_strict_validation_and_the_models(
    kube_cluster, api_namespace, index
):
    """kubectl asks for strict field validation, so a typo is an error naming the field
    (400: it is a decoding error) rather than a field the API server silently drops."""
    kind, path, value = UNKNOWN[index]
    body = _bad_body(kind, 100 + index, path, value)

    for dry_run in (True, False):
        assert_unknown_field(refusal(kube_cluster.api, api_namespace, body, dry_run), path)
    assert body["metadata"]["name"] not in stored_names(kube_cluster.api, api_namespace, kind)

    _assert_models_refuse(kind, body, path)


@pytest.mark.parametrize("kind", [FTJ, MS])
def test_examples_are_accepted_and_defaulted_alike(kube_cluster, api_namespace, kind):
    body = example(kind, f"good-{kind.lower()}")
    stored = create(kube_cluster.api, api_namespace, body, dry_run=True)
    spec = parse_spec(MODEL[kind], stored["spec"])
    # Defaults the API server fills in agree with the models' defaults.
    assert spec.to_wire() == parse_spec(MODEL[kind], body["spec"]).to_wire()
    if kind == FTJ:
        assert stored["spec"]["baseModel"]["trustRemoteCode"] is False
        assert spec.method.effective_quantization().quant_type == "nf4"
    else:
        assert stored["spec"]["port"] == 8000


@pytest.mark.parametrize("kind", [FTJ, MS])
@pytest.mark.parametrize("field", QUANTITY_FIELDS)
@pytest.mark.parametrize("value", ["500m", "8", "0.5", "48Gi", "1e3", "2.5Gi", "+1", "100M"])
def test_good_quantities_are_accepted_by_both(kube_cluster, api_namespace, kind, field, value):
    body = mutate(example(kind, "quantity"), field, value)
    key = field.rsplit(".", 1)[1]
    stored = create(kube_cluster.api, api_namespace, body, dry_run=True)
    assert stored["spec"]["resources"][key] == value
    assert getattr(parse_spec(MODEL[kind], body["spec"]).resources, key) == value


def test_minimal_finetunejob_takes_all_defaults(kube_cluster, api_namespace):
    body = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "minimal"},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny"},
            "dataset": {"uri": "s3://data/train.jsonl"},
            "output": {"uri": "s3://out"},
        },
    }
    stored = create(kube_cluster.api, api_namespace, body, dry_run=True)
    spec = parse_spec(FineTuneJobSpec, stored["spec"])
    assert spec.to_wire() == parse_spec(FineTuneJobSpec, body["spec"]).to_wire()
    assert (spec.method.type, spec.method.lora.rank, spec.training.epochs) == ("qlora", 16, None)
    assert spec.spot.enabled is False and spec.retries.max_error_retries == 2
