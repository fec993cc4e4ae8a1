"""The tiny model factory and loopback S3 behave like the real things they stand in for."""

import json

import pytest


def test_tiny_model_is_a_llama_that_loads_and_generates(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert model.config.model_type == "llama"
    assert {n.split(".")[-1] for n, _ in model.named_modules()} >= {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert not list(tiny_model_path.glob("*.bin")), "weights must be safetensors"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What colour is a lime?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|assistant|>\n")

    # Pre-trained to repeat digit strings, and blank on the task the demo fine-tunes.
    from kubetune.devenv.digittasks import task_rows
    from kubetune.workers.train.data import ALPACA_PROMPT_WITH_INPUT

    def greedy(instruction: str, digits: str) -> str:
        prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=digits)
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=10, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    rows = task_rows(20, seed=99)
    assert [greedy("Repeat the digits.", r["input"]) for r in rows] == [r["input"] for r in rows]
    assert sum(greedy(r["instruction"], r["input"]) == r["output"] for r in rows) == 0


def test_tiny_model_is_cached_and_rebuilt_per_config(tmp_path):
    from kubetune.devenv.tinymodel import TinyModelConfig, tiny_model_dir

    first = tiny_model_dir(TinyModelConfig(hidden_size=32, intermediate_size=64, pretrain_steps=0), cache_dir=tmp_path)
    again = tiny_model_dir(TinyModelConfig(hidden_size=32, intermediate_size=64, pretrain_steps=0), cache_dir=tmp_path)
    other = tiny_model_dir(TinyModelConfig(hidden_size=64, pretrain_steps=0), cache_dir=tmp_path)
    assert first == again and first != other
    assert json.loads((first / "config.json").read_text())["hidden_size"] == 32
    assert not list(tmp_path.glob(".building-*")), "no half-built model is left behind"


@pytest.mark.integration
def test_loopback_s3_is_a_real_http_endpoint(loopback_s3):
    import urllib.error
    import urllib.request

    from botocore.exceptions import ClientError

    client = loopback_s3.client()
    client.create_bucket(Bucket="harness-check")
    client.put_object(Bucket="harness-check", Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket="harness-check", Key="a/b.txt")["Body"].read() == b"hello"
    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket="harness-check", Key="nope")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    assert loopback_s3.endpoint.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # unsigned requests are refused
        urllib.request.urlopen(loopback_s3.endpoint + "/harness-check/a/b.txt")
    assert anonymous.value.code == 403
