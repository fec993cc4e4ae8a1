"""The agent's checks on real files: the base's Linear shapes from safetensors headers,
the rank limit, and no torch anywhere in the agent (its image has none)."""

import json
import subprocess
import sys

import pytest
from kubetune.workers.agent.basemodel import base_linears
from kubetune.workers.agent.verify import AdapterRejected, check_rank, verify_adapter
from lora_adapters import make_adapter

SERVED = "s3://bucket/models/tiny"


def test_base_linears_from_headers_match_the_models_linear_layers(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    expected = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    linears = base_linears(tiny_model_path)
    assert linears["model.layers.0.self_attn.q_proj"] == (128, 128)
    assert linears["model.layers.0.self_attn.k_proj"] == (128, 64)  # one KV head of 64
    assert linears["model.layers.1.mlp.down_proj"] == (256, 128)
    assert {k: v for k, v in linears.items() if k in expected} == expected
    assert set(linears) - set(expected) == {"model.embed_tokens"}  # 2-D, but no Linear


def test_base_linears_needs_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        base_linears(tmp_path)


@pytest.mark.parametrize("config, limit, fails", [
    ({"r": 16}, 16, False),
    ({"r": 32}, 16, True),
    ({"r": 8, "rank_pattern": {"q_proj": 64}}, 16, True),
])
def test_rank_limit(config, limit, fails):
    if not fails:
        check_rank(config, limit)
        return
    with pytest.raises(AdapterRejected, match=f"exceeds this server's maxLoraRank {limit}"):
        check_rank(config, limit)


def test_peft_adapter_passes_and_over_rank_one_is_refused(tmp_path, tiny_model_path):
    linears = base_linears(tiny_model_path)
    sha = make_adapter(tiny_model_path, tmp_path / "ok", seed=1, rank=8, base_uri=SERVED)
    _, identity = verify_adapter(tmp_path / "ok", sha, SERVED, linears, max_rank=16)
    assert identity == sha
    sha = make_adapter(tiny_model_path, tmp_path / "big", seed=2, rank=32, base_uri=SERVED)
    with pytest.raises(AdapterRejected, match="LoRA rank 32 exceeds this server's maxLoraRank 16"):
        verify_adapter(tmp_path / "big", sha, SERVED, linears, max_rank=16)


def test_shapes_checked_against_the_headers_catch_another_base(tmp_path, tiny_model_path):
    """An adapter made for a base of another width names the same modules with other
    shapes; the headers of the served base are enough to refuse it."""
    from kubetune.devenv.tinymodel import TinyModelConfig, tiny_model_dir

    other = tiny_model_dir(TinyModelConfig(hidden_size=32, intermediate_size=64, pretrain_steps=0))
    sha = make_adapter(other, tmp_path / "other", seed=3, base_uri=SERVED)
    with pytest.raises(AdapterRejected, match="made for a different base model"):
        verify_adapter(tmp_path / "other", sha, SERVED, base_linears(tiny_model_path), 16)


def test_the_agent_never_imports_torch(tmp_path, tiny_model_path):
    """Everything the agent runs, including the header reads, in a fresh interpreter."""
    sha = make_adapter(tiny_model_path, tmp_path / "a", seed=1, base_uri=SERVED)
    script = f"""
import json, sys
from pathlib import Path
import kubetune.workers.agent.__main__, kubetune.workers.agent.reconciler
import kubetune.workers.agent.httpapi
from kubetune.workers.agent.basemodel import base_linears
from kubetune.workers.agent.verify import verify_adapter
linears = base_linears(Path({str(tiny_model_path)!r}))
verify_adapter(Path({str(tmp_path / "a")!r}), {sha!r}, {SERVED!r}, linears, 16)
print(json.dumps({{"torch": "torch" in sys.modules, "linears": len(linears)}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"torch": False, "linears": 16}
