"""Base model, LoRA adapter, optimizer and schedule, built from the spec.

qlora loads the frozen base with bitsandbytes (4-bit NF4/FP4 with optional double
quantization, or 8-bit) and runs `prepare_model_for_kbit_training`; lora loads it
unquantized. Both enable gradient checkpointing, trading compute for activation memory.
"""

from __future__ import annotations

from . import family
from .errors import ModelSourceError

DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def quantization_config(method):
    """BitsAndBytesConfig for the spec's method, or None for plain lora."""
    import torch
    from transformers import BitsAndBytesConfig

    quant = method.effective_quantization()
    if quant is None:
        return None
    compute = getattr(torch, DTYPES[quant.compute_dtype])
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def load_tokenizer(model_dir: str, spec):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir,
            revision=spec.base_model.revision,
            trust_remote_code=spec.base_model.trust_remote_code,
        )
    except Exception as exc:
        raise ModelSourceError(f"baseModel {spec.base_model.uri}: tokenizer: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_peft_model(model_dir: str, spec, device):
    """The base model with a fresh LoRA adapter; only adapter weights require grad.

    What depends on the family is read off the base (`family`): the attention
    implementation from its config, the LoRA targets from its own linear layers.
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    quant = quantization_config(spec.method)
    source = {"revision": spec.base_model.revision,
              "trust_remote_code": spec.base_model.trust_remote_code}
    kwargs = {}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": str(device)}
    else:
        kwargs["dtype"] = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        config = AutoConfig.from_pretrained(model_dir, **source)
        attention = family.attention_implementation(config, spec.training.packing)
        if attention:
            kwargs["attn_implementation"] = attention
        model = AutoModelForCausalLM.from_pretrained(model_dir, **source, **kwargs)
    except Exception as exc:
        raise ModelSourceError(f"baseModel {spec.base_model.uri}: {exc}") from exc
    if attention == "eager" and spec.training.packing:
        additive_packed_masks(model)
    targets = family.resolve_target_modules(model, spec.method.lora.target_modules)
    checkpointing = {"use_reentrant": False}
    if quant is not None:
        keep_cpu_4bit_trainable(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing
        )
    else:
        model.to(device)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    lora = spec.method.lora
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelSourceError(f"{family.TARGETS_FIELD}: {exc}") from exc


def additive_packed_masks(model) -> None:
    """Let eager attention read packed batches' boolean masks.

    Packed batches carry a 4D bool "may attend" mask (data.packed_attention_mask) that
    sdpa reads as such; eager attention adds the mask to the scores, so a bool mask
    would add 0/1 and let examples see each other. Eager is what soft-capping families
    need (`family.attention_implementation`): before the decoder runs, a 4D bool mask
    becomes the additive form (0 where allowed, the dtype's minimum elsewhere) in the
    model's activation dtype.
    """
    import torch

    def to_additive(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dtype != torch.bool or mask.dim() != 4:
            return None
        dtype = module.get_input_embeddings().weight.dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        kwargs["attention_mask"] = additive.masked_fill(~mask, torch.finfo(dtype).min)
        return args, kwargs

    model.get_decoder().register_forward_pre_hook(to_additive, with_kwargs=True)


def keep_cpu_4bit_trainable(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights; returns layers changed.

    On a CPU with AVX512-BF16, `Linear4bit.forward` in eval mode under no_grad (our
    `evaluate`) rewrites the layer's weight in place into an inference-only layout: absmax
    rounded to bfloat16, double quantization undone, and every later forward, training
    included, runs `gemv_4bit`, which has no autograd kernel, so no gradient flows back
    through the frozen layers. The change is one-way, so training after the first eval
    would differ from training before it: a resumed attempt (no initial eval) and an
    uninterrupted run (initial eval at step 0) would diverge. GPUs never take this path.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def make_optimizer(model, training, device):
    """Paged 8-bit AdamW on GPU; torch AdamW on CPU.

    Paged optimizers page state through CUDA unified memory and the 8-bit state needs
    CUDA kernels, so neither exists on a CPU; the adapter's state is tiny there anyway.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(
            params, lr=training.learning_rate, weight_decay=training.weight_decay
        )
    return torch.optim.AdamW(
        params, lr=training.learning_rate, weight_decay=training.weight_decay, foreach=False
    )


def make_scheduler(optimizer, training, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(
        training.scheduler,
        optimizer=optimizer,
        num_warmup_steps=training.warmup_steps,
        num_training_steps=total_steps,
    )
