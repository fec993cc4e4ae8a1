"""Evaluation in the trainer: held-out rows, their loss, and greedy answers to score.

What users judge a fine-tune by is what the adapter answers, so besides the loss the
trainer generates greedily from each held-out prompt and compares the answer with the
row's reference (exactMatch: equal after trimming whitespace; contains: the reference
appears in the answer). Generation is sharded over the workers and the counts summed,
so N workers evaluate N times faster; a stop request (SIGTERM) is honoured between
batches, abandoning that evaluation, because the checkpoint budget matters more.

Row -> prompt/reference is pure; `score` is the only part that runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from . import data as datamod
from . import family
from .errors import DatasetError


@dataclass(frozen=True)
class EvalItem:
    """One row to answer: the prompt's token ids and the reference answer."""

    prompt_ids: tuple[int, ...]
    reference: str


@dataclass
class EvalSet:
    """Everything one evaluation needs, built once when the session prepares."""

    loss_examples: list[datamod.Example]
    items: list[EvalItem]

    @property
    def size(self) -> int:
        return max(len(self.loss_examples), len(self.items))


def prompt_and_reference(row: dict, fmt: str, tokenizer, where: str) -> EvalItem:
    """The prompt a served model would see and the answer it should give.

    alpaca: the training template up to "### Response:", reference = output. chat: the
    conversation before the last assistant turn with the generation prompt, reference =
    that turn. The prompt is tokenized as training tokenizes it, so the adapter sees at
    evaluation exactly what it learned from (BOS once, even where the template writes it).
    """
    if fmt == "alpaca":
        datamod.alpaca_example(row, tokenizer, where)  # the same checks as training
        template = datamod.ALPACA_PROMPT_WITH_INPUT if row.get("input") else datamod.ALPACA_PROMPT
        ids = datamod.encode_prompt(tokenizer, template.format(**{"input": "", **row}))
        return EvalItem(tuple(ids), row["output"])
    if fmt == "chat":
        datamod.chat_example(row, tokenizer, where)
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        text = tokenizer.apply_chat_template(messages[:last], tokenize=False,
                                             add_generation_prompt=True)
        ids = datamod.encode_prompt(tokenizer, text)
        return EvalItem(tuple(ids), messages[last]["content"])
    raise DatasetError(f"{where}: format {fmt} rows have no reference answer to compare with")


def build_eval_set(rows: list[tuple[int, dict]], fmt: str, tokenizer, max_len: int,
                   metrics: list[str], limit: int, source: str) -> EvalSet:
    """The first `limit` rows; loss examples are never packed (per-row loss), and a
    prompt longer than max_len keeps its last max_len tokens (where the question is)."""
    picked = rows[:limit]
    if not picked:
        return EvalSet([], [])
    loss = datamod.build_examples(picked, fmt, tokenizer, max_len, False, source) \
        if "loss" in metrics else []
    items = []
    if any(m in ("exactMatch", "contains") for m in metrics):
        for number, row in picked:
            item = prompt_and_reference(row, fmt, tokenizer, f"dataset {source} line {number}")
            items.append(EvalItem(item.prompt_ids[-max_len:], item.reference))
    return EvalSet(loss, items)


def judge_answer(answer: str, reference: str) -> tuple[bool, bool]:
    """(exact, contains) after trimming whitespace at both ends."""
    got, want = answer.strip(), reference.strip()
    return got == want, want in got


def greedy_answers(model, tokenizer, prompts: list[tuple[int, ...]], max_new_tokens: int,
                   device) -> list[str]:
    """Greedy completions of left-padded prompts (generation needs the prompt's end
    aligned), decoded without special tokens; they stop on every token the base's
    generation stops on and on its chat template's end-of-turn token."""
    import torch

    stops = family.conventions(tokenizer).stop_ids
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=pad, eos_token_id=list(stops))
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


def score(model, tokenizer, evalset: EvalSet, metrics: list[str], worker, batch_size: int,
          max_new_tokens: int, step: int, loss_fn: Callable[[], float | None],
          stop: Callable[[], bool]) -> dict | None:
    """One evaluation's scores as the API's EvaluationScores wire form, or None if a
    stop request cut it short. Every rank runs the same number of batches (the shards
    differ by at most one row), so the per-batch stop agreement never deadlocks."""
    result: dict = {"step": step, "examples": evalset.size}
    if "loss" in metrics:
        result["loss"] = loss_fn()
    if not evalset.items or not any(m in ("exactMatch", "contains") for m in metrics):
        return result
    shard = evalset.items[worker.rank::worker.world_size]
    batches = math.ceil(math.ceil(len(evalset.items) / worker.world_size) / batch_size)
    exact = contains = 0
    model.eval()
    try:
        for index in range(batches):
            if stop():
                return None
            chunk = shard[index * batch_size:(index + 1) * batch_size]
            if not chunk:
                continue
            answers = greedy_answers(model, tokenizer, [i.prompt_ids for i in chunk],
                                     max_new_tokens, worker.device)
            for answer, item in zip(answers, chunk):
                is_exact, has = judge_answer(answer, item.reference)
                exact += is_exact
                contains += has
    finally:
        model.train()
    exact, contains = worker.all_sum([exact, contains])
    total = len(evalset.items)
    if "exactMatch" in metrics:
        result["exactMatch"] = exact / total
    if "contains" in metrics:
        result["contains"] = contains / total
    return result
