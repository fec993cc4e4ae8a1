"""A table of malformed FineTuneJobs and ModelServes.

Each is refused twice over: by the generated CRD (structural schema + CEL, as the API
server would refuse `kubectl apply`) and by the pydantic models (as the operator would
refuse a body that reached it anyway). Each refusal must name the offending field.
Rules on change (immutability) only exist in the CRD, since only the API server sees
the old object.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from kubetune.api import FineTuneJobSpec, ModelServeSpec, SpecError, parse_spec
from kubetune.devenv.admission import AdmissionError

DELETE = object()
GROUP = "kubetune.dev"
PLURAL = {"FineTuneJob": "finetunejobs", "ModelServe": "modelserves"}
MODEL = {"FineTuneJob": FineTuneJobSpec, "ModelServe": ModelServeSpec}


def example(repo, kind: str) -> dict:
    name = {"FineTuneJob": "finetune.yaml", "ModelServe": "modelserve.yaml"}[kind]
    return yaml.safe_load((repo / "examples" / name).read_text())


def mutate(body: dict, path: str, value) -> dict:
    """Set (or DELETE) a dotted path; `[i]` indexes lists."""
    body = copy.deepcopy(body)
    parts = path.replace("[", ".[").split(".")
    node = body
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    key = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return body


FTJ = "FineTuneJob"
MS = "ModelServe"
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
    (FTJ, "spec.baseModel.uri", "s3://models/llama", "spec.baseModel"),  # revision is hf-only
    (FTJ, "spec.dataset.uri", "s3://bucket", "spec.dataset.uri"),
    (FTJ, "spec.dataset.format", "csv", "spec.dataset.format"),
    (FTJ, "spec.dataset.evalFraction", 0.9, "spec.dataset.evalFraction"),
    (FTJ, "spec.output", DELETE, "spec.output"),
    (FTJ, "spec.output.uri", "https://bucket/adapters", "spec.output.uri"),
    (FTJ, "spec.output.endpoint", "minio:9000", "spec.output.endpoint"),
    (FTJ, "spec.output.credentials.secretRef", {"name": "s3-creds"}, "spec.output.credentials"),
    (FTJ, "spec.resources.workers", 0, "spec.resources.workers"),
    (FTJ, "spec.resources.gpusPerWorker", 17, "spec.resources.gpusPerWorker"),
    (FTJ, "spec.resources.memory", "lots", "spec.resources.memory"),
    (FTJ, "spec.resources.tolerations[0].effect", "Sometimes", "spec.resources.tolerations[0].effect"),
    (FTJ, "spec.spot.checkpointIntervalSteps", -1, "spec.spot.checkpointIntervalSteps"),
    (FTJ, "spec.spot.strategy", "Pray", "spec.spot.strategy"),
    (FTJ, "spec.spot.backoff", {"initialSeconds": 600, "maxSeconds": 60}, "spec.spot.backoff"),
    (FTJ, "spec.retries.maxErrorRetries", "two", "spec.retries.maxErrorRetries"),
    (FTJ, "spec.trainng", {"epochs": 1}, "spec.trainng"),
    (FTJ, "spec.training.learningrate", 0.001, "spec.training.learningrate"),
    (MS, "spec.replicas", -1, "spec.replicas"),
    (MS, "spec.adapters[0].uri", "s3://models/a/adapter", "spec.adapters[0]"),  # has a ref too
    (MS, "spec.adapters[1].uri", DELETE, "spec.adapters[1]"),  # now neither
    (MS, "spec.adapters[1].name", "support-bot-v1", "spec.adapters"),  # duplicate name
    (MS, "spec.adapters[1].name", "llama-3.1-8b", "spec"),  # same as baseModel.servedName
    (MS, "spec.adapters[1].sha256", "not-a-hash", "spec.adapters[1].sha256"),
    (MS, "spec.adapters[1].name", "Bad_Name!", "spec.adapters[1].name"),
    (MS, "spec.port", 80, "spec.port"),
    (MS, "spec.baseModel.loadIn4bit", "yes", "spec.baseModel.loadIn4bit"),
    (MS, "spec.maxAdaptersInMemory", 0, "spec.maxAdaptersInMemory"),
    (MS, "spec.baseModel.uri", DELETE, "spec.baseModel.uri"),
]


@pytest.mark.parametrize("kind,path,value,field", BAD, ids=[f"{k}:{p}={v!r}"[:80] for k, p, v, _ in BAD])
def test_bad_input_refused_by_crd_and_models_naming_the_field(repo, admission, kind, path, value, field):
    body = mutate(example(repo, kind), path, value)

    with pytest.raises(AdmissionError) as crd_refusal:
        admission.admit(GROUP, PLURAL[kind], body)
    assert any(c["field"] == field or c["field"].startswith(field + ".") or c["field"].startswith(field + "[")
               for c in crd_refusal.value.causes), crd_refusal.value.message
    assert field in crd_refusal.value.message

    with pytest.raises(SpecError) as model_refusal:
        parse_spec(MODEL[kind], body["spec"])
    named = str(model_refusal.value)
    assert field in named or field.replace("spec.", "", 1) in named, named


IMMUTABLE = [
    ("spec.dataset.uri", "s3://ml-team-data/support/other.jsonl", "spec.dataset"),
    ("spec.method.lora.rank", 64, "spec.method"),
    ("spec.baseModel.revision", "main", "spec.baseModel"),
    ("spec.output.uri", "s3://elsewhere/adapters", "spec.output"),
    ("spec.training.learningRate", 0.001, "spec.training"),
]


@pytest.mark.parametrize("path,value,field", IMMUTABLE, ids=[p for p, _, _ in IMMUTABLE])
def test_changing_what_a_job_trains_on_is_refused_on_update(repo, admission, path, value, field):
    old = admission.admit(GROUP, "finetunejobs", example(repo, FTJ))
    new = mutate(old, path, value)
    with pytest.raises(AdmissionError) as refusal:
        admission.admit(GROUP, "finetunejobs", new, old=old)
    assert [c["field"] for c in refusal.value.causes] == [field]
    assert "is immutable" in refusal.value.message


def test_operational_fields_may_change_on_update(repo, admission):
    old = admission.admit(GROUP, "finetunejobs", example(repo, FTJ))
    new = mutate(old, "spec.spot.maxRecoveries", 3)
    new = mutate(new, "spec.resources.workers", 4)
    assert admission.admit(GROUP, "finetunejobs", new, old=old)["spec"]["spot"]["maxRecoveries"] == 3


@pytest.mark.parametrize("kind", [FTJ, MS])
def test_examples_are_accepted_and_defaulted(repo, admission, kind):
    body = example(repo, kind)
    admitted = admission.admit(GROUP, PLURAL[kind], body)
    spec = parse_spec(MODEL[kind], admitted["spec"])
    # Defaults the API server fills in agree with the models' defaults.
    assert spec.to_wire() == parse_spec(MODEL[kind], body["spec"]).to_wire()
    if kind == FTJ:
        assert admitted["spec"]["baseModel"]["trustRemoteCode"] is False
        assert spec.method.effective_quantization().quant_type == "nf4"
    else:
        assert admitted["spec"]["port"] == 8000


def test_minimal_finetunejob_takes_all_defaults(admission):
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
    admission.admit(GROUP, "finetunejobs", body)
    spec = parse_spec(FineTuneJobSpec, body["spec"])
    assert (spec.method.type, spec.method.lora.rank, spec.training.epochs) == ("qlora", 16, None)
    assert spec.spot.enabled is False and spec.retries.max_error_retries == 2
