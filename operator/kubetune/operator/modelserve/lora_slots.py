"""How many LoRA slots vLLM gets, and how many adapters the agent may give it.

Why this is not simply `--max-loras` from the spec: vLLM's CPU build answers a request
for the base model with another adapter's weights whenever the last LoRA slot holds an
adapter and that request shares a batch with adapter requests. vLLM marks a token that
uses no adapter with slot index -1; its GPU kernels (Triton `lora_shrink`/`lora_expand`)
return early on -1, but the CPU path (`PunicaWrapperCPU` -> `vllm/lora/ops/torch_ops`
`bgmv_shrink`/`bgmv_expand`) gathers `lora_weights[lora_indices]`, and torch reads index
-1 as the last slot. A batch of base requests only is spared (`no_lora` skips the LoRA
step), and so is a batch while the last slot is empty (its weights are zeros).

vLLM puts an adapter in the lowest free slot and only evicts an active one when every
slot is taken, so with `slots` slots and never more than `slots - 1` adapters known to
the engine, the last slot stays empty and index -1 reads zeros: the base stays the base.
On CPU pools kubetune therefore gives the engine one slot per adapter it may hold
(`maxAdaptersInMemory`) plus that empty one, as `--max-loras` and `--max-cpu-loras`
(vLLM wants the second at least the first), and tells the agent to keep at most
`maxAdaptersInMemory` adapters loaded. No spec value reaches the engine unchecked, so no
configuration brings the bug back. On GPU pools the spec's values pass as they are and
vLLM's own LRU swaps adapters in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api import ModelServeSpec


@dataclass(frozen=True)
class LoraSlots:
    """`max_loras` / `max_cpu_loras`: vLLM's flags. `max_loaded`: the most adapters the
    agent keeps loaded in vLLM at once (None: no limit, vLLM swaps them itself)."""

    max_loras: int
    max_cpu_loras: int
    max_loaded: int | None


def lora_slots(spec: ModelServeSpec) -> LoraSlots:
    """The engine's LoRA slots for this ModelServe (see the module docstring)."""
    if spec.resources.gpus_per_worker > 0:
        return LoraSlots(spec.vllm.max_loras, spec.max_adapters_in_memory, None)
    held = spec.max_adapters_in_memory
    return LoraSlots(held + 1, held + 1, held)
