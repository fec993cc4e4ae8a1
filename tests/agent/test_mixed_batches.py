"""A request gets exactly the adapter it names (or the base), whatever shares its batch.

vLLM's CPU build gives base-model tokens in a batch with adapter requests the weights of
its last LoRA slot when that slot is taken (see kubetune.operator.modelserve.lora_slots).
Here vLLM runs with the flags kubetune derives for a CPU pool and the agent loads the
adapters under the cap it derives: every combination of base and adapters, sent
concurrently over several rounds, answers each request with its solo greedy answer.
With the spec's own --max-loras/--max-cpu-loras (the flags before the rule) the
all-slots-full case answers the base with an adapter's completion."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from agent_support import VllmProcess, vllm_python
from kubetune.api import ModelServeSpec
from kubetune.operator.modelserve.lora_slots import lora_slots

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROMPTS = ["Kubernetes schedules pods onto nodes", "Add the numbers. 3 and 4"]
MAX_TOKENS = 12
ROUNDS = 3
COPIES = 2  # requests per model in each concurrent batch


def cpu_serve(max_loras: int, in_memory: int) -> ModelServeSpec:
    return ModelServeSpec.model_validate({
        "baseModel": {"uri": "s3://models/tiny"}, "resources": {"gpusPerWorker": 0},
        "maxAdaptersInMemory": in_memory, "vllm": {"maxLoras": max_loras}})


def greedy(client: openai.OpenAI, model: str, prompt: str) -> tuple[int, ...]:
    response = client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"return_token_ids": True, "min_tokens": MAX_TOKENS})
    return tuple(response.choices[0].token_ids)


@pytest.fixture
def cpu_vllm(request, tiny_model_path, tmp_path):
    """vLLM with the LoRA flags kubetune derives for a CPU-pool ModelServe with
    vllm.maxLoras and maxAdaptersInMemory as given; the session's vLLM when it is the
    default ModelServe's (maxLoras 4, maxAdaptersInMemory 8), else one of its own."""
    max_loras, in_memory = request.param
    slots = lora_slots(cpu_serve(max_loras, in_memory))
    if (max_loras, in_memory) == (4, 8):
        yield request.getfixturevalue("clean_vllm"), slots
        return
    server = VllmProcess(vllm_python(), tiny_model_path, tmp_path / "vllm.log",
                         max_loras=slots.max_loras, max_cpu_loras=slots.max_cpu_loras).start()
    try:
        yield server, slots
    finally:
        server.stop()


@pytest.mark.parametrize("adapters, cpu_vllm", [
    (2, (2, 2)),  # maxLoras equal to the adapters: every slot of the spec's engine taken
    (3, (4, 8)),  # maxLoras larger than the adapters (the default ModelServe's settings)
], ids=["slots-equal-adapters", "slots-above-adapters"], indirect=["cpu_vllm"])
def test_every_mix_of_base_and_adapters_answers_as_each_alone(adapters, cpu_vllm, agents,
                                                             stored_adapters):
    vllm, slots = cpu_vllm
    names = [f"good{i}" for i in range(1, adapters + 1)]
    agent = agents([stored_adapters[n].entry() for n in names], vllm.url,
                   max_loaded_adapters=slots.max_loaded)
    agent.wait_settled(dict.fromkeys(names, "Loaded"))
    client = openai.OpenAI(base_url=vllm.url + "/v1", api_key="x", max_retries=0, timeout=120)
    models = ["base", *names]
    solo = {(m, p): greedy(client, m, p) for m in models for p in PROMPTS}
    for prompt in PROMPTS:  # the adapters really differ from the base and from each other
        assert len({solo[(m, prompt)] for m in models}) == len(models)

    wrong = []
    mixes = [mix for size in range(2, len(models) + 1)
             for mix in itertools.combinations(models, size)]
    with ThreadPoolExecutor(max_workers=COPIES * len(models) * len(PROMPTS)) as pool:
        for round_, mix in itertools.product(range(ROUNDS), mixes):
            requests = [(m, p) for m in mix for p in PROMPTS for _ in range(COPIES)]
            answers = list(pool.map(lambda r: greedy(client, *r), requests))
            wrong += [(round_, mix, r) for r, a in zip(requests, answers) if a != solo[r]]
    total = ROUNDS * sum(len(mix) for mix in mixes) * COPIES * len(PROMPTS)
    assert not wrong, f"{len(wrong)} of {total} answers differ from their solo answer: {wrong[:5]}"
