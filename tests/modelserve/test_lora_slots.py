"""The LoRA slots vLLM is started with: on CPU pools one more than the adapters a server
may hold, so vLLM's last slot (where its CPU path sends base-model tokens) stays empty;
on GPU pools the spec's values (vLLM's GPU kernels skip base tokens)."""

import pytest
from kubetune.api import ModelServeSpec
from kubetune.operator.config import OperatorConfig
from kubetune.operator.modelserve.builders import agent_config
from kubetune.operator.modelserve.lora_slots import LoraSlots, lora_slots
from kubetune.operator.modelserve.podspec import vllm_args

BASE = {"baseModel": {"uri": "s3://models/base"}}


def serve(gpus: int, max_loras: int, in_memory: int) -> ModelServeSpec:
    return ModelServeSpec.model_validate({
        **BASE, "resources": {"gpusPerWorker": gpus}, "maxAdaptersInMemory": in_memory,
        "vllm": {"maxLoras": max_loras}})


def flag(args: list[str], name: str) -> int:
    return int(args[args.index(name) + 1])


@pytest.mark.parametrize("max_loras, in_memory, expected", [
    (1, 1, LoraSlots(2, 2, 1)),
    (2, 2, LoraSlots(3, 3, 2)),
    (2, 8, LoraSlots(9, 9, 8)),
    (8, 8, LoraSlots(9, 9, 8)),
])
def test_cpu_pools_keep_the_last_slot_empty(max_loras, in_memory, expected):
    spec = serve(0, max_loras, in_memory)
    slots = lora_slots(spec)
    assert slots == expected
    assert slots.max_loaded < slots.max_loras <= slots.max_cpu_loras
    args = vllm_args(spec)
    assert (flag(args, "--max-loras"), flag(args, "--max-cpu-loras")) == (
        slots.max_loras, slots.max_cpu_loras)
    assert agent_config(spec, OperatorConfig(), [])["maxLoadedAdapters"] == slots.max_loaded


def test_gpu_pools_take_the_spec_as_written():
    spec = serve(1, 4, 8)
    assert lora_slots(spec) == LoraSlots(4, 8, None)
    args = vllm_args(spec)
    assert (flag(args, "--max-loras"), flag(args, "--max-cpu-loras")) == (4, 8)
    assert "maxLoadedAdapters" not in agent_config(spec, OperatorConfig(), [])
