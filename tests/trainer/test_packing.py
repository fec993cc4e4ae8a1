"""Boundary-aware packing: whole examples share sequences but never see each other.

The layout tests pin the rules (no example split, <= max_len, positions restarting,
first label of each example ignored, deterministic first-fit-decreasing placement);
the model tests prove on the tiny Llama that each example's loss is the same packed as
one per row — with rows of different lengths right-padded in one batch, in eval mode
(where the model makes a KV cache) and in training with gradient checkpointing — and
that the negative controls (naive concatenation; position_ids alone under a cache) do
differ, so the equality is not vacuous.
"""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
from kubetune.workers.train import data, steps
from kubetune.workers.train.errors import DatasetError
from trainer_support import REPO

IGNORE = data.IGNORE_INDEX
MAX_LEN = 96


def synthetic(lengths: list[int], seed: int = 0) -> list[data.Example]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = tuple(rng.randrange(5, 500) for _ in range(n))
        out.append(data.Example(ids, ids))
    return out


def segments(example: data.Example) -> list[tuple[tuple, tuple, tuple]]:
    """(input_ids, labels, position_ids) of each example inside a packed sequence."""
    out, start = [], 0
    for n in example.lengths:
        end = start + n
        out.append((example.input_ids[start:end], example.labels[start:end],
                    example.position_ids[start:end]))
        start = end
    return out


# layout ---------------------------------------------------------------------------


def test_pack_keeps_whole_examples_within_max_len_with_restarting_positions():
    rng = random.Random(3)
    examples = synthetic([rng.randint(2, 30) for _ in range(200)], seed=3)
    packed = data.pack(examples, 64)
    assert all(len(p.input_ids) == len(p.labels) == len(p.position_ids) <= 64 for p in packed)
    found = []
    for p in packed:
        for ids, labels, positions in segments(p):
            assert positions == tuple(range(len(ids)))
            assert labels[0] == IGNORE and labels[1:] == ids[1:]  # text: all else trained
            found.append(ids)
    assert sorted(found) == sorted(e.input_ids for e in examples)  # each once, unsplit
    # as few sequences as the token count allows (greedy in data order would need 62)
    assert len(packed) == math.ceil(sum(map(len, found)) / 64) == 52
    assert data.pack(examples, 64) == packed


def test_pack_is_first_fit_decreasing_and_keeps_data_order_inside_a_sequence():
    examples = synthetic([3, 6, 2, 5, 4])
    packed = data.pack(examples, 10)
    # longest first: 6 -> A, 5 -> B, 4 -> A (full), 3 -> B, 2 -> B (full); greedy in data
    # order would need three sequences (3+6, 2+5, 4).
    assert [p.lengths for p in packed] == [(6, 4), (3, 2, 5)]
    assert packed[1].input_ids == examples[0].input_ids + examples[2].input_ids + \
        examples[3].input_ids


def test_pack_drops_examples_that_train_nothing_and_refuses_overlong_ones():
    ids = (7, 8, 9)
    only_first = data.Example(ids, (7, IGNORE, IGNORE))  # its one label predicts nothing
    prompt_only = data.Example(ids, (IGNORE,) * 3)
    kept = data.Example((10, 11), (10, 11))
    packed = data.pack([only_first, prompt_only, kept], 8)
    assert [p.input_ids for p in packed] == [(10, 11)]
    assert packed[0].labels == (IGNORE, 11) and packed[0].trained_tokens == 1
    with pytest.raises(ValueError, match="9 tokens > max_len 8"):
        data.pack(synthetic([9]), 8)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_build_examples_packs_cut_examples_and_keeps_the_error(tokenizer):
    long_text = {"text": "The blueberry is blue. " * 20}
    rows = [(1, long_text), (2, {"text": "A kiwi."}), (3, {"text": "The lemon is yellow."})]
    packed = data.build_examples(rows, "text", tokenizer, 16, True, "t")
    cut = data.build_examples(rows, "text", tokenizer, 16, False, "t")
    assert [p.lengths for p in packed] == [(16,), tuple(len(e.input_ids) for e in cut[1:])]
    assert packed[0].input_ids == cut[0].input_ids  # cut once to max_len, not split on
    prompt_too_long = [(1, {"instruction": "word " * 50, "output": "x"})]
    with pytest.raises(DatasetError) as failure:
        data.build_examples(prompt_too_long, "alpaca", tokenizer, 16, True, "a")
    assert str(failure.value) == "dataset a: no trainable tokens left after cutting to " \
        "maxSeqLength 16"
    mixed = prompt_too_long + [(2, {"instruction": "Hi.", "output": "yes"})]
    alone = data.build_examples(mixed, "alpaca", tokenizer, 40, False, "a")
    assert len(alone) == 1  # the prompt-only one is dropped either way
    assert [p.lengths for p in data.build_examples(mixed, "alpaca", tokenizer, 40, True, "a")] \
        == [(len(alone[0].input_ids),)]


def test_collate_packed_mask_is_causal_inside_each_example_and_pads_see_themselves():
    import torch

    packed = data.pack(synthetic([3, 2, 4]), 5)  # rows: (4,) and (3, 2)
    batch = data.collate(packed, pad_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["labels"][0, 4] == IGNORE and batch["input_ids"][0, 4] == 0
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                         [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                         [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


def test_collate_unpacked_is_unchanged():
    batch = data.collate([data.Example((5, 6, 7), (IGNORE, 6, 7)), data.Example((8,), (8,))], 3)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# the model ------------------------------------------------------------------------


def mixed_examples(tokenizer) -> list[data.Example]:
    """Distinct examples of widely varying length: text rows (every token trained) cut to
    1..40 words, and alpaca rows (response only) with their answer repeated 1..30 times;
    3 to 76 tokens."""
    rng = random.Random(5)
    texts = [json.loads(line) for line in
             (REPO / "examples/data/tiny-text.jsonl").read_text().splitlines()[:12]]
    for row in texts:
        words = (row["text"] * 8).split()
        row["text"] = " ".join(words[: rng.choice([1, 2, 3, 5, 10, 20, 40])])
    alpaca = [json.loads(line) for line in
              (REPO / "examples/data/tiny-alpaca.jsonl").read_text().splitlines()[:4]]
    for row in alpaca:
        row["output"] = " ".join([row["output"]] * rng.choice([1, 4, 12, 30]))
    built = [e for rows, fmt in ((texts, "text"), (alpaca, "alpaca"))
             for e in data.build_examples(list(enumerate(rows, 1)), fmt, tokenizer, MAX_LEN,
                                          False, "m")]
    return list({e.input_ids: e for e in built}.values())


def load(tiny_model, attention="sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                                attn_implementation=attention)


@pytest.fixture(scope="module")
def model(tiny_model):
    return load(tiny_model)


def summed_losses(model, batch, rows: list[data.Example], train: bool = False):
    """Each example's summed token loss, keyed by its input_ids, and the model's loss.

    Computed from the logits, by each example's span in its row (`rows[i].lengths`):
    the token at t is scored against label t+1, so an example of n tokens owns the n-1
    predictions from its own tokens. Eval mode is the case where the model makes a KV
    cache; train mode uses gradient checkpointing, as the trainer does.
    """
    import torch

    model.train(train)
    if train:
        model.activation_checkpointing_enable()  # use_reentrant=False by default
    try:
        with torch.no_grad():
            out = model(**batch)
    finally:
        model.activation_checkpointing_disable()
        model.eval()
    per_token = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE,
        reduction="none")
    sums = {}
    for row, example in enumerate(rows):
        start = 0
        for n in example.lengths:
            key = example.input_ids[start : start + n]
            sums[key] = float(per_token[row, start : start + n - 1].sum())
            start += n
    return sums, float(out.loss)


@pytest.mark.parametrize("train", [False, True], ids=["eval-with-kv-cache", "train-checkpointed"])
def test_each_examples_loss_is_the_same_packed_and_unpacked(tokenizer, model, train):
    examples = mixed_examples(tokenizer)
    lengths = sorted(len(e.input_ids) for e in examples)
    assert lengths[0] <= 5 and lengths[-1] >= 70  # the mix is really mixed
    packed = data.pack(examples, MAX_LEN)
    assert len(packed) >= 3 and max(len(p.lengths) for p in packed) >= 3
    assert len({len(p.input_ids) for p in packed}) > 1  # rows of different lengths, padded

    pad = tokenizer.pad_token_id
    alone, _ = summed_losses(model, data.collate(examples, pad), examples, train)
    together, mean = summed_losses(model, data.collate(packed, pad), packed, train)
    assert len(together) == len(alone) == len(examples)
    for key, loss in alone.items():
        assert together[key] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    trained = sum(sum(1 for label in e.labels[1:] if label != IGNORE) for e in examples)
    assert mean == pytest.approx(sum(alone.values()) / trained, rel=1e-5)


@pytest.mark.parametrize("control", ["naive-concatenation", "position-ids-only"])
def test_negative_controls_do_differ(tokenizer, model, control):
    """Naive: positions run on and attention is plain causal across the row (the old
    `pack`). Position ids alone, no mask: transformers' own packed-sequence detection,
    which the KV cache the model makes in eval mode defeats."""
    import torch

    examples = mixed_examples(tokenizer)
    packed = data.pack(examples, MAX_LEN)
    alone, _ = summed_losses(model, data.collate(examples, tokenizer.pad_token_id), examples)
    batch = data.collate(packed, tokenizer.pad_token_id)
    if control == "naive-concatenation":
        del batch["position_ids"]
        real = torch.zeros_like(batch["input_ids"])
        for row, p in enumerate(packed):
            real[row, : len(p.input_ids)] = 1
        batch["attention_mask"] = real
    else:
        del batch["attention_mask"]
    wrong, _ = summed_losses(model, batch, packed)
    later = [ids for p in packed for ids, _, _ in segments(p)[1:]]  # a row's first is exact
    diffs = [abs(wrong[k] - alone[k]) / abs(alone[k]) for k in later]
    assert len(diffs) >= 3 and max(diffs) > 0.05, diffs


# train_step -----------------------------------------------------------------------


def one_step(model, examples, pad_id):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    worker = steps.Worker(device=torch.device("cpu"))
    return steps.train_step(model, optimizer, scheduler, examples, [list(range(len(examples)))],
                            params, worker, SimpleNamespace(max_grad_norm=1.0), pad_id)


def test_train_step_counts_real_tokens_packed_and_unpacked(tokenizer, model):
    examples = mixed_examples(tokenizer)
    packed = data.pack(examples, MAX_LEN)
    real = sum(len(e.input_ids) for e in examples)
    width = max(len(p.input_ids) for p in packed)
    assert real < len(packed) * width  # padding exists, and must not be counted
    loss_packed, tokens_packed = one_step(model, packed, tokenizer.pad_token_id)
    loss_alone, tokens_alone = one_step(model, examples, tokenizer.pad_token_id)
    assert tokens_packed == tokens_alone == real
    assert loss_packed == pytest.approx(loss_alone, rel=1e-4)


def test_the_trainers_model_keeps_packed_examples_apart(tokenizer, tiny_model):
    """The model as the trainer loads it for a packing spec (LoRA on the tiny base, which
    asks for sdpa) gives the same loss for a packed step as for one example per row."""
    import torch
    from kubetune.api import FineTuneJobSpec, parse_spec
    from kubetune.workers.train import modeling

    spec = parse_spec(FineTuneJobSpec, {
        "baseModel": {"uri": f"file://{tiny_model}"}, "dataset": {"uri": "file:///rows.jsonl"},
        "method": {"type": "lora", "lora": {"dropout": 0.0}},
        "training": {"packing": True}, "output": {"uri": "s3://out/adapters"}})
    trained = modeling.load_peft_model(str(tiny_model), spec, torch.device("cpu"))
    examples = mixed_examples(tokenizer)
    loss_packed, _ = one_step(trained, data.pack(examples, MAX_LEN), tokenizer.pad_token_id)
    loss_alone, _ = one_step(trained, examples, tokenizer.pad_token_id)
    assert loss_packed == pytest.approx(loss_alone, rel=1e-4)
