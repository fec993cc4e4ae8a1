"""Data preparation rules: which tokens are trained, cutting/packing, split, data order."""

from __future__ import annotations

import json

import pytest
from kubetune.workers.train import data
from kubetune.workers.train.errors import DatasetError


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != data.IGNORE_INDEX])


def test_alpaca_trains_only_the_response(tokenizer):
    row = {"instruction": "Reverse the word.", "input": "helm", "output": "mleh"}
    example = data.alpaca_example(row, tokenizer, "x")
    assert trained_text(tokenizer, example) == "mleh</s>"
    assert "Reverse the word." in tokenizer.decode(example.input_ids)
    assert "### Input:\nhelm" in tokenizer.decode(example.input_ids)


def test_chat_trains_only_assistant_turns(tokenizer):
    row = {"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What colour is a kiwi?"},
        {"role": "assistant", "content": "green"},
        {"role": "user", "content": "Spell pod backwards."},
        {"role": "assistant", "content": "dop"},
    ]}
    example = data.chat_example(row, tokenizer, "x")
    text = trained_text(tokenizer, example)
    assert "green" in text and "dop" in text
    assert "kiwi" not in text and "Be terse" not in text and "Spell" not in text
    assert len(example.input_ids) == len(example.labels)


def test_text_trains_every_token(tokenizer):
    example = data.text_example({"text": "The kiwi is green."}, tokenizer, "x")
    assert example.trained_tokens == len(example.input_ids)


@pytest.mark.parametrize(
    ("fmt", "line", "message"),
    [
        ("alpaca", '{"text": "hi"}', "line 2: alpaca rows need string field(s) instruction, output"),
        ("chat", '{"messages": "hi"}', "line 2: chat rows need a non-empty messages list"),
        ("chat", '{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
        ("text", '{"instruction": "a", "output": "b"}', "line 2: text rows need string field(s) text"),
        ("alpaca", "{not json", "line 2: not valid JSON"),
        ("alpaca", "[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_bad_rows_are_named_by_line(tokenizer, fmt, line, message):
    good = {"alpaca": {"instruction": "a", "output": "b"}, "text": {"text": "a"},
            "chat": {"messages": [{"role": "assistant", "content": "a"}]}}[fmt]
    text = json.dumps(good) + "\n" + line + "\n"
    with pytest.raises(DatasetError) as failure:
        rows = data.parse_jsonl(text, "d.jsonl")
        data.build_examples(rows, fmt, tokenizer, 64, False, "d.jsonl")
    assert str(failure.value).startswith("dataset d.jsonl ")
    assert message in str(failure.value)


def test_empty_dataset_is_an_error():
    with pytest.raises(DatasetError, match="dataset e.jsonl: no rows"):
        data.parse_jsonl("\n \n", "e.jsonl")


def test_truncation_and_packing(tokenizer):
    rows = [(i + 1, {"text": "The blueberry is blue. " * 5}) for i in range(4)]
    cut = data.build_examples(rows, "text", tokenizer, 16, False, "t")
    assert len(cut) == 4 and all(len(e.input_ids) == 16 for e in cut)
    # packing cuts each example the same way and never splits one across sequences
    # (the rest of the packing rules: test_packing.py)
    packed = data.build_examples(rows, "text", tokenizer, 16, True, "t")
    assert [e.input_ids for e in packed] == [e.input_ids for e in cut]
    assert all(e.position_ids == tuple(range(16)) for e in packed)
    short = [(i + 1, {"text": "Blue."}) for i in range(4)]
    n = len(data.text_example(short[0][1], tokenizer, "t").input_ids)
    together = data.build_examples(short, "text", tokenizer, 16, True, "t")
    assert n == 5 and [e.lengths for e in together] == [(5, 5, 5), (5,)]


def test_prompt_longer_than_max_length_leaves_nothing(tokenizer):
    rows = [(1, {"instruction": "word " * 50, "output": "x"})]
    with pytest.raises(DatasetError, match="no trainable tokens left after cutting to maxSeqLength 16"):
        data.build_examples(rows, "alpaca", tokenizer, 16, False, "a")


def test_split_is_seeded_disjoint_and_keeps_a_train_row():
    train, held = data.split_rows(100, 0.1, seed=3)
    assert len(held) == 10 and not set(train) & set(held) and len(train) + len(held) == 100
    assert data.split_rows(100, 0.1, seed=3) == (train, held)
    assert data.split_rows(100, 0.1, seed=4) != (train, held)
    assert data.split_rows(1, 0.5, seed=0) == ([0], [])


def test_data_order_covers_each_example_once_per_epoch_across_workers():
    order = data.DataOrder(num_examples=50, batch_size=3, world_size=2, accumulation=2, seed=1)
    assert order.steps_per_epoch == 4  # 50 // 6 = 8 micro-batches, 2 per step
    seen = []
    for step in range(order.steps_per_epoch):
        for rank in range(2):
            for batch in order.micro_batches(step, rank):
                assert len(batch) == 3
                seen.extend(batch)
    assert len(seen) == len(set(seen)) == 48
    assert order.position(5) == {"epoch": 1, "microBatch": 2}
    assert order.micro_batches(5, 0) != order.micro_batches(1, 0)  # a new epoch reshuffles
    assert order.total_steps(epochs=3, max_steps=None) == 12
    assert order.total_steps(epochs=None, max_steps=7) == 7


def test_too_small_dataset_names_the_fields():
    order = data.DataOrder(num_examples=5, batch_size=4, world_size=2, accumulation=1, seed=0)
    with pytest.raises(DatasetError, match="5 training sequences, but one optimizer step needs 8"):
        order.check("s3://b/d.jsonl")
