"""Each model family's tiny base, as built and as the trainer loads it: its own model
class and tokenizer conventions, LoRA targets resolved to its real linear layers (Phi-3's
fused projections included), a clear refusal of a target that matches nothing, eager
attention where the config soft-caps attention scores (packing too), and a short real
LoRA run through `python -m kubetune.workers.train` for two non-Llama families."""

from __future__ import annotations

import json

import pytest
from kubetune.devenv.families import FAMILIES
from trainer_support import BUCKET, REPO, job_spec

NAMES = list(FAMILIES)
ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
PHI3_ALL_LINEAR = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
TEMPLATE_WRITES_BOS = {"llama3", "gemma2", "gemma3"}


def spec_for(path, packing: bool = False, **lora):
    from kubetune.api import FineTuneJobSpec, parse_spec

    return parse_spec(FineTuneJobSpec, {
        "baseModel": {"uri": f"file://{path}"}, "dataset": {"uri": "file:///rows.jsonl"},
        "method": {"type": "lora", "lora": {"dropout": 0.0, **lora}},
        "training": {"packing": packing}, "output": {"uri": "s3://out/adapters"}})


def adapted(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}


def load(path, spec):
    import torch
    from kubetune.workers.train import modeling

    return modeling.load_peft_model(str(path), spec, torch.device("cpu"))


@pytest.mark.parametrize("name", NAMES)
def test_each_base_is_its_familys_class_with_its_conventions(family_bases, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fam, path = FAMILIES[name], family_bases[name]
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [fam.model_class]
    assert config.get("head_dim", config["hidden_size"] // config["num_attention_heads"]) == 64
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == fam.model_class
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) == fam.tied
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (tokenizer.bos_token, tokenizer.eos_token) == (fam.bos, fam.eos)
    settings = json.loads((path / "tokenizer_config.json").read_text())
    assert settings["add_bos_token"] == fam.adds_bos
    assert (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id) == fam.adds_bos
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered.startswith(fam.bos or "\0") == (name in TEMPLATE_WRITES_BOS)


@pytest.mark.parametrize("name", NAMES)
def test_all_linear_and_the_default_targets_are_the_models_own_layers(family_bases, name):
    """all-linear: every linear layer but the output head; the default (q/k/v/o_proj):
    the attention projections, which Phi-3 fuses into qkv_proj."""
    phi = name == "phi3"
    everything = load(family_bases[name], spec_for(family_bases[name],
                                                   targetModules=["all-linear"]))
    assert adapted(everything) == (PHI3_ALL_LINEAR if phi else ALL_LINEAR)
    default = load(family_bases[name], spec_for(family_bases[name]))
    assert adapted(default) == ({"qkv_proj", "o_proj"} if phi else
                                {"q_proj", "k_proj", "v_proj", "o_proj"})


def test_a_target_that_matches_nothing_names_the_field_and_the_models_layers(family_bases):
    from kubetune.workers.train.errors import ModelSourceError

    path = family_bases["phi3"]
    with pytest.raises(ModelSourceError) as failure:
        load(path, spec_for(path, targetModules=["qkv_proj", "q_proj"]))
    message = str(failure.value)
    assert message.startswith("spec.method.lora.targetModules: q_proj match(es) no module")
    assert "down_proj, gate_up_proj, o_proj, qkv_proj" in message


def test_a_soft_capping_base_trains_with_eager_attention_packed_or_not(family_bases):
    """Gemma 2 soft-caps attention scores, which sdpa cannot: eager, also when packing,
    where the packed boolean mask must still keep examples apart."""
    import torch
    from kubetune.workers.train import data
    from transformers import AutoTokenizer

    path = family_bases["gemma2"]
    model = load(path, spec_for(path, packing=True)).eval()
    assert model.config._attn_implementation == "eager"
    assert load(path, spec_for(path)).config._attn_implementation == "eager"
    sdpa = family_bases["gemma3"]  # no attention soft-capping: packing keeps sdpa
    assert load(sdpa, spec_for(sdpa, packing=True)).config._attn_implementation == "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(path)
    lines = (REPO / "examples/data/tiny-alpaca.jsonl").read_text().splitlines()[:8]
    rows = [(i, json.loads(line)) for i, line in enumerate(lines, 1)]
    examples = data.build_examples(rows, "alpaca", tokenizer, 128, False, "a")
    packed = data.pack(examples, 128)
    alone = [data.Example(e.input_ids, (data.IGNORE_INDEX,) + e.labels[1:]) for e in examples]
    assert len(packed) < len(alone)
    with torch.no_grad():
        loss_packed = model(**data.collate(packed, tokenizer.pad_token_id)).loss
        loss_alone = model(**data.collate(alone, tokenizer.pad_token_id)).loss
    assert float(loss_packed) == pytest.approx(float(loss_alone), rel=1e-4)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("name", "fmt", "rows", "extra", "targets"), [
    ("phi3", "chat", "tiny-chat.jsonl", {}, {"qkv_proj", "o_proj"}),
    ("gemma2", "alpaca", "tiny-alpaca.jsonl",
     {"method.lora.targetModules": ["all-linear"], "training.packing": True}, ALL_LINEAR),
])
def test_a_short_lora_run_on_a_non_llama_family(start_trainer, family_bases, s3, name, fmt,
                                               rows, extra, targets):
    body = job_spec(family_bases[name], f"family-{name}", **{
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
        "dataset.uri": f"file://{REPO}/examples/data/{rows}", "dataset.format": fmt,
        "training.maxSteps": 3, "training.batchSize": 4, "training.maxSeqLength": 128,
        **extra})
    code, summary = start_trainer(body, tag=name).wait()
    assert code == 0, summary
    assert summary["result"] == "Succeeded" and summary["steps"] == 3, summary
    config = json.loads(s3.client().get_object(
        Bucket=BUCKET, Key=f"runs/team-a/family-{name}/adapter/adapter_config.json")["Body"].read())
    assert set(config["target_modules"]) == targets
