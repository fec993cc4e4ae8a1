"""An adapter loaded by the agent into vLLM gives, token for token, the greedy answer that
transformers + peft give on the same base and prompt, and not the base's own answer."""

import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROMPT = "Kubernetes schedules pods onto nodes"
MAX_TOKENS = 16


def vllm_greedy(vllm, model: str) -> tuple[list[int], list[int]]:
    client = openai.OpenAI(base_url=vllm.url + "/v1", api_key="x", max_retries=0, timeout=60)
    response = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
        # min_tokens: the comparison spans MAX_TOKENS tokens even if a random adapter on
        # the pre-trained base would stop at once (its greedy first token can be EOS).
        extra_body={"return_token_ids": True, "min_tokens": MAX_TOKENS},
    )
    choice = response.choices[0]
    return choice.prompt_token_ids, choice.token_ids


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Up to and including the first end-of-sequence token (both stop there)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def peft_greedy(base_dir, adapter_dir, prompt_ids: list[int]) -> tuple[list[int], set[int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids)),
            do_sample=False, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
            pad_token_id=0,
        )
    return until_eos(output[0, len(prompt_ids):].tolist(), eos), eos


def test_vllm_with_the_adapter_matches_peft_greedy(agents, clean_vllm, stored_adapters,
                                                   tiny_model_path):
    vllm = clean_vllm
    adapter = stored_adapters["good1"]
    agent = agents([adapter.entry("greedy")], vllm.url)
    agent.wait_settled({"greedy": "Loaded"})

    prompt_ids, served = vllm_greedy(vllm, "greedy")
    _, base = vllm_greedy(vllm, "base")
    expected, eos = peft_greedy(tiny_model_path, adapter.path, prompt_ids)
    assert len(served) >= 8, served  # enough tokens for the comparison to mean something
    assert until_eos(served, eos) == expected
    assert served != base  # the adapter matters, so equality above is not vacuous
