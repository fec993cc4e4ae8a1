"""An evaluation pass must not change how later training steps compute.

Resume is exact only if a step's result depends on the checkpointed state alone, not on
what this process did before. bitsandbytes, on a CPU with AVX512-BF16, repacks a 4-bit
layer's weight for inference on its first eval-mode no_grad forward, for good: later
training forwards then use an inference kernel without autograd (no gradient through
the frozen layers) and bfloat16 block scales. An uninterrupted run evaluates at step 0,
a resumed attempt does not, so the two trained differently. On CPUs without the feature
or on GPUs the repacking never happens and this test holds trivially.
"""

from __future__ import annotations

import pytest
from trainer_support import job_spec

pytestmark = pytest.mark.slow


def test_evaluate_leaves_4bit_layers_and_training_numerics_unchanged(tiny_model):
    import bitsandbytes as bnb
    import torch
    from kubetune.api import FineTuneJobSpec, parse_spec
    from kubetune.workers.train import data as datamod
    from kubetune.workers.train import modeling
    from kubetune.workers.train.steps import evaluate, seed_everything

    spec = parse_spec(FineTuneJobSpec, job_spec(tiny_model, "eval-exact")["spec"])
    cpu = torch.device("cpu")
    tokenizer = modeling.load_tokenizer(str(tiny_model), spec)
    rows = [(n, {"instruction": f"Repeat {word}.", "output": word * 3})
            for n, word in enumerate(["helm", "pod", "node", "ray"], start=1)]
    examples = datamod.build_examples(rows, "alpaca", tokenizer, 64, False, "test")
    batch = datamod.collate(examples, tokenizer.pad_token_id)
    seed_everything(7)
    model = modeling.load_peft_model(str(tiny_model), spec, cpu)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # lora_B starts at zero: give the adapters a path of their own
        for p in params:
            p.add_(torch.randn_like(p) * 0.01)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    rng = torch.get_rng_state()

    def step():
        torch.set_rng_state(rng)  # same dropout masks
        loss = model(**batch).loss
        loss.backward()
        grads = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    loss_before, grads_before = step()
    evaluate(model, examples, tokenizer.pad_token_id, 2, cpu)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in layers)
    loss_after, grads_after = step()
    assert torch.equal(loss_before, loss_after)
    for before, after in zip(grads_before, grads_after):
        assert torch.equal(before, after)
