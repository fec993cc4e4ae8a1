"""Real training on the tiny model, in-process loop (`--no-ray`) in a real process:
QLoRA 4-bit and LoRA lower eval loss; the adapter loads with peft and changes outputs."""

from __future__ import annotations

import json

import pytest
from trainer_support import BUCKET, adapter_tensors, job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_qlora_lowers_eval_loss_and_writes_a_complete_adapter(baseline, s3):
    summary, _ = baseline
    assert summary["result"] == "Succeeded"
    assert summary["steps"] == summary["totalSteps"] == 24
    assert summary["evalLoss"] < summary["initialEvalLoss"] - 0.3, summary
    client = s3.client()
    prefix = "runs/team-a/baseline/adapter"
    body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read()
    manifest = json.loads(body)
    from kubetune.workers.manifest import sha256_bytes

    assert summary["adapter"]["sha256"] == sha256_bytes(body)
    assert manifest["kind"] == "adapter" and manifest["step"] == 24
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["method"]["type"] == "qlora"
    assert manifest["method"]["quantization"]["quantType"] == "nf4"
    assert manifest["baseModel"]["uri"].startswith("file://")
    assert manifest["metrics"]["steps"] == 24 and manifest["metrics"]["tokens"] > 0
    assert manifest["training"]["learningRate"] == 3e-3


def test_adapter_loads_with_peft_and_changes_outputs(baseline, s3, tiny_model, tmp_path):
    import torch
    from kubetune.workers.objectstore import S3Uri, download_prefix, make_client
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    download_prefix(make_client(s3.endpoint), S3Uri.parse(f"s3://{BUCKET}/runs/team-a/baseline/adapter"),
                    tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = tokenizer("### Instruction:\nReverse the word.\n\n### Input:\nhelm\n\n### Response:\n",
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-2
    assert not torch.equal(after.argmax(-1), before.argmax(-1))


def test_lora_on_chat_data_lowers_eval_loss(start_trainer, tiny_model, s3):
    from trainer_support import REPO

    body = job_spec(tiny_model, "lora-chat", **{
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0,
                                            "targetModules": ["all-linear"]}},
        "dataset.uri": f"file://{REPO}/examples/data/tiny-chat.jsonl",
        "dataset.format": "chat",
        "training.maxSeqLength": 128,
        "training.maxSteps": 20,
    })
    code, summary = start_trainer(body, tag="lora").wait()
    assert code == 0, summary
    assert summary["evalLoss"] < summary["initialEvalLoss"] - 0.3, summary
    manifest = json.loads(s3.client().get_object(
        Bucket=BUCKET, Key="runs/team-a/lora-chat/adapter/manifest.json")["Body"].read())
    assert manifest["method"]["type"] == "lora" and manifest["method"]["quantization"] is None
    assert adapter_tensors(s3.client(), "lora-chat")


def test_base_model_and_packed_text_dataset_from_s3(start_trainer, tiny_model, s3):
    client = s3.client()
    for path in tiny_model.iterdir():
        client.upload_file(str(path), BUCKET, f"models/tiny/{path.name}")
    from trainer_support import REPO

    client.upload_file(str(REPO / "examples/data/tiny-text.jsonl"), BUCKET, "data/text/a.jsonl")
    body = job_spec(tiny_model, "from-s3", **{
        "baseModel.uri": f"s3://{BUCKET}/models/tiny",
        "dataset.uri": f"s3://{BUCKET}/data/text/",
        "dataset.format": "text",
        "training.packing": True,
        "training.maxSteps": 6,
    })
    code, summary = start_trainer(body, tag="s3").wait()
    assert code == 0, summary
    assert summary["steps"] == 6 and summary["evalLoss"] < summary["initialEvalLoss"]
    manifest = json.loads(client.get_object(
        Bucket=BUCKET, Key="runs/team-a/from-s3/adapter/manifest.json")["Body"].read())
    assert manifest["baseModel"] == {"uri": f"s3://{BUCKET}/models/tiny", "revision": None}
    config = json.loads(client.get_object(
        Bucket=BUCKET, Key="runs/team-a/from-s3/adapter/adapter_config.json")["Body"].read())
    assert config["base_model_name_or_path"] == f"s3://{BUCKET}/models/tiny"
