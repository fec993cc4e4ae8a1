"""The model host in-process: 4-bit NF4 base (bitsandbytes on the CPU), an adapter
injected and removed, and the bare base restored exactly once the last adapter goes."""

import pytest
import torch
from conftest import make_adapter
from kubetune.workers.serve.basemodel import ModelLocation
from kubetune.workers.serve.config import BaseModelConfig
from kubetune.workers.serve.engine import ModelHost
from kubetune.workers.serve.verify import verify_adapter

pytest.importorskip("bitsandbytes")


def tokens(host, adapter, prompt_ids):
    return [s.token for s in host.generate(adapter, prompt_ids, 8, 0.0, 1.0, None)]


def test_4bit_base_serves_an_adapter_and_returns_to_the_bare_base(tiny_base, tmp_path):
    torch.set_num_threads(1)
    uri = f"file://{tiny_base}"
    sha = make_adapter(tiny_base, tmp_path / "a", seed=1, base_uri=uri)
    host = ModelHost.load(
        BaseModelConfig(uri=uri, load_in_4bit=True), ModelLocation(str(tiny_base))
    )
    q_proj = host.base.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit"
    assert host.base_linears["model.layers.0.self_attn.k_proj"] == (64, 32)
    verify_adapter(tmp_path / "a", sha, uri, host.base_linears)
    prompt = host.encode_prompt("Reverse the word.")
    bare = tokens(host, None, prompt)
    name = host.add_adapter(tmp_path / "a")
    adapted = tokens(host, name, prompt)
    assert adapted != bare
    assert tokens(host, None, prompt) == bare  # the base name disables the adapter
    host.remove_adapter(name)
    assert host.resident() == []
    assert tokens(host, None, prompt) == bare
    again = host.add_adapter(tmp_path / "a")
    assert tokens(host, again, prompt) == adapted


def test_fast_adapter_switch_gives_the_same_logits_as_peft_own_api(tiny_base, tmp_path):
    torch.set_num_threads(1)
    uri = f"file://{tiny_base}"
    for seed, name in ((1, "a"), (2, "b")):
        make_adapter(tiny_base, tmp_path / name, seed=seed, base_uri=uri)
    host = ModelHost.load(BaseModelConfig(uri=uri), ModelLocation(str(tiny_base)))
    a, b = host.add_adapter(tmp_path / "a"), host.add_adapter(tmp_path / "b")
    assert host._layers, "the fast path is in use"
    ids = torch.tensor([host.encode_prompt("Reverse the word.")])
    peft = host._peft

    def official(name):
        with torch.inference_mode():
            if name is None:
                with peft.disable_adapter():
                    return peft(input_ids=ids).logits
            peft.set_adapter(name)
            return peft(input_ids=ids).logits

    expected = {name: official(name) for name in (a, b, None)}
    assert not torch.equal(expected[a], expected[b])
    assert not torch.equal(expected[a], expected[None])
    host._active = object()  # forget what peft's calls above left active
    for name in (a, None, b, a, b, None, a):
        with torch.inference_mode():
            got = host._forward_locked(name, ids, None).logits
        assert torch.equal(got, expected[name]), name
