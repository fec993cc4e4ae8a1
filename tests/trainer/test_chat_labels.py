"""Labels per model family, decoded: what each family's base is trained on.

Every family's tiny base (devenv.families) carries its real tokenizer conventions and
chat template, so these check the data rules where they differ between families: BOS
written once, each assistant turn trained as its answer plus the family's end-of-turn
token (not the newline after it, nor the next turn), templates that drop earlier
reasoning (Qwen 3), and rows that end with a token that stops that family's generation.
"""

from __future__ import annotations

import json

import pytest
from kubetune.devenv.families import FAMILIES
from kubetune.workers.train import data, evaluation, family
from kubetune.workers.train.errors import DatasetError

NAMES = list(FAMILIES)
END_OF_TURN = {"llama3": "<|eot_id|>", "mistral": "</s>", "qwen2.5": "<|im_end|>",
               "qwen3": "<|im_end|>", "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>",
               "phi3": "<|end|>"}
# Qwen 3 writes a (here empty) <think> block into every assistant turn after the last
# user turn: part of the answer as rendered, so trained.
LAST_ANSWER_OPENS = {"qwen3": "<think>\n\n</think>\n\n"}
BOS = {"llama3": "<|begin_of_text|>", "mistral": "<s>", "gemma2": "<bos>", "gemma3": "<bos>"}
CONVERSATION = [
    {"role": "user", "content": "What colour is a kiwi?"},
    {"role": "assistant", "content": "A kiwi is green."},
    {"role": "user", "content": "Spell pod backwards."},
    {"role": "assistant", "content": "dop"},
]


@pytest.fixture(scope="module")
def tokenizers(family_bases):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(path) for name, path in family_bases.items()}


def trained_runs(tokenizer, example) -> list[str]:
    """Each run of consecutive trained tokens, decoded with its special tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != data.IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for r in runs]


def assert_bos_once(tokenizer, ids, name) -> None:
    """Families whose sequences open with BOS have exactly one, first; others none."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    if name in BOS:
        assert tokens[0] == BOS[name] and tokens.count(BOS[name]) == 1, tokens[:4]
    else:
        assert tokenizer.bos_token is None or tokenizer.bos_token not in tokens, tokens[:4]


def stop_tokens(path) -> set[int]:
    eos = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
    return {eos} if isinstance(eos, int) else set(eos)


@pytest.mark.parametrize("name", NAMES)
def test_chat_trains_each_answer_and_its_end_of_turn_with_one_bos(tokenizers, name):
    tokenizer = tokenizers[name]
    example = data.chat_example({"messages": CONVERSATION}, tokenizer, "x")
    eot, opens = END_OF_TURN[name], LAST_ANSWER_OPENS.get(name, "")
    assert trained_runs(tokenizer, example) == ["A kiwi is green." + eot, opens + "dop" + eot]
    assert_bos_once(tokenizer, example.input_ids, name)


@pytest.mark.parametrize("name", ["llama3", "qwen2.5", "qwen3", "phi3"])
def test_an_opening_assistant_turn_trains_only_its_answer(tokenizers, name):
    """The header the template writes before it (and Qwen 2.5's default system prompt)
    is no part of the answer."""
    tokenizer = tokenizers[name]
    row = {"messages": [{"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Hi."}]}
    example = data.chat_example(row, tokenizer, "x")
    assert trained_runs(tokenizer, example) == ["Hello." + END_OF_TURN[name]]


def test_qwen3_first_turn_does_not_run_over_the_next_user_turn(tokenizers):
    """Qwen 3 drops an assistant turn's <think> block once a later user turn exists: the
    first answer is placed in the final render, where its reasoning is gone."""
    tokenizer = tokenizers["qwen3"]
    row = {"messages": [
        {"role": "user", "content": "Spell pod backwards."},
        {"role": "assistant", "content": "<think>\nReverse p-o-d.\n</think>\n\ndop"},
        {"role": "user", "content": "And node?"},
        {"role": "assistant", "content": "<think>\nReverse n-o-d-e.\n</think>\n\nedon"},
    ]}
    example = data.chat_example(row, tokenizer, "x")
    runs = trained_runs(tokenizer, example)
    assert "<|im_start|>user" not in runs[0]
    assert runs == ["dop<|im_end|>", "<think>\nReverse n-o-d-e.\n</think>\n\nedon<|im_end|>"]


def test_a_turn_the_template_rewrites_later_is_refused_naming_the_row(family_bases):
    """A template that hides earlier answers leaves nothing to place them by: a
    DatasetError naming the row and message, never labels on the wrong tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_bases["qwen3"])
    tokenizer.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ '(earlier answer)' if m['role'] == 'assistant' and not loop.last else m['content'] }}"
        "<|im_end|>\n{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")
    rows = [(7, {"messages": CONVERSATION})]
    with pytest.raises(DatasetError, match=r"dataset d.jsonl line 7: messages\[1\]"):
        data.build_examples(rows, "chat", tokenizer, 128, False, "d.jsonl")


def test_a_conversation_the_template_refuses_is_a_dataset_error(tokenizers):
    """Gemma 2 has no system role: its template raises, and the row is named."""
    rows = [(3, {"messages": [{"role": "system", "content": "Be terse."}, *CONVERSATION]})]
    with pytest.raises(DatasetError, match="dataset d.jsonl line 3: the base's chat template "
                                           "refuses this conversation: Gemma 2 has no system"):
        data.build_examples(rows, "chat", tokenizers["gemma2"], 128, False, "d.jsonl")


@pytest.mark.parametrize("name", NAMES)
def test_alpaca_and_text_rows_end_with_a_token_that_stops_generation(tokenizers,
                                                                     family_bases, name):
    tokenizer = tokenizers[name]
    stops = stop_tokens(family_bases[name])
    row = {"instruction": "Reverse the word.", "input": "helm", "output": "mleh"}
    example = data.alpaca_example(row, tokenizer, "x")
    assert example.input_ids[-1] in stops
    stop = tokenizer.convert_ids_to_tokens(example.input_ids[-1])
    assert trained_runs(tokenizer, example) == ["mleh" + stop]
    assert_bos_once(tokenizer, example.input_ids, name)
    text = data.text_example({"text": "The kiwi is green."}, tokenizer, "x")
    assert text.input_ids[-1] in stops and text.trained_tokens == len(text.input_ids)
    assert_bos_once(tokenizer, text.input_ids, name)


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_prompts_carry_one_bos_and_generation_stops_at_the_turn_end(tokenizers,
                                                                               name):
    tokenizer = tokenizers[name]
    item = evaluation.prompt_and_reference({"messages": CONVERSATION}, "chat", tokenizer, "x")
    assert item.reference == "dop"
    assert_bos_once(tokenizer, item.prompt_ids, name)
    stops = family.conventions(tokenizer).stop_ids
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN[name]) in stops


def test_the_row_stop_token_is_one_generation_stops_on():
    """A tokenizer whose EOS its generation_config does not stop on (the first Llama 3
    Instruct release) would teach a model an end it never stops at."""
    assert family.stop_token_id(5, [7, 9]) == 7
    assert family.stop_token_id(9, [7, 9]) == 9
    assert family.stop_token_id(5, None) == 5
