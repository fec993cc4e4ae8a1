"""Dataset rows -> token ids and loss labels, train/eval split and a resumable data order.

Pure logic (no I/O) so that every rule is tested on its own: which tokens carry loss,
how rows are cut or packed, and — the part resume depends on — which examples make up
optimizer step N. The order is a function of (seed, epoch) only, so a restarted run
needs nothing but the step number to continue exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

from .errors import DatasetError

IGNORE_INDEX = -100
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = (
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One training sequence; labels are IGNORE_INDEX where no loss is taken."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def parse_jsonl(text: str, source: str) -> list[tuple[int, dict]]:
    """(line number, row) for each non-blank line; a bad line is named in the error."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            where = f"dataset {source} line {number}"
            raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"dataset {source} line {number}: expected a JSON object")
        rows.append((number, row))
    if not rows:
        raise DatasetError(f"dataset {source}: no rows")
    return rows


def _require_text(row: dict, keys: tuple[str, ...], fmt: str, where: str) -> None:
    missing = [k for k in keys if not isinstance(row.get(k), str)]
    if missing:
        raise DatasetError(
            f"{where}: {fmt} rows need string field(s) {', '.join(missing)} "
            f"(row has: {', '.join(sorted(row)) or 'nothing'})"
        )


def _encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def alpaca_example(row: dict, tokenizer, where: str) -> Example:
    """Prompt tokens carry no loss: the model learns the response, not the instruction."""
    _require_text(row, ("instruction", "output"), "alpaca", where)
    if row.get("input") not in (None, "") and not isinstance(row.get("input"), str):
        raise DatasetError(f"{where}: alpaca field input must be a string")
    template = ALPACA_PROMPT_WITH_INPUT if row.get("input") else ALPACA_PROMPT
    prompt = _encode(tokenizer, template.format(**{"input": "", **row}), True)
    response = _encode(tokenizer, row["output"], False) + [tokenizer.eos_token_id]
    return Example(tuple(prompt + response), tuple([IGNORE_INDEX] * len(prompt) + response))


def text_example(row: dict, tokenizer, where: str) -> Example:
    _require_text(row, ("text",), "text", where)
    ids = _encode(tokenizer, row["text"], True) + [tokenizer.eos_token_id]
    return Example(tuple(ids), tuple(ids))


def chat_example(row: dict, tokenizer, where: str) -> Example:
    """Loss only on assistant turns (as Vicuna computes it).

    Each assistant turn's characters are found by rendering the conversation up to it
    with and without the turn; tokens whose characters fall inside are trained. This
    works with any chat template, not only ones that mark assistant spans.
    """
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: chat rows need a non-empty messages list")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DatasetError(f"{where}: messages[{i}] needs string role and content")
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(f"{where}: format chat needs a tokenizer with a chat template")
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{where}: chat row has no assistant turn to learn from")

    def render(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages[:upto], tokenize=False, add_generation_prompt=generation_prompt
        )

    full = render(len(messages), False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(render(i, True)) if i else 0
            spans.append((start, len(render(i + 1, False))))
    encoded = tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = []
    for token, (begin, end) in zip(ids, encoded["offset_mapping"]):
        inside = end > begin and any(s <= begin < e for s, e in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return Example(tuple(ids), tuple(labels))


FORMATS = {"alpaca": alpaca_example, "chat": chat_example, "text": text_example}


def build_examples(
    rows: list[tuple[int, dict]], fmt: str, tokenizer, max_len: int, packing: bool, source: str
) -> list[Example]:
    """Rows -> sequences of at most `max_len` tokens, truncated or packed.

    Packing concatenates examples and cuts fixed-length windows (examples may attend to
    their neighbours, the usual trade for no padding). Sequences left with no trained
    token (a prompt longer than max_len) are dropped; none left is an error.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"dataset {source}: unknown format {fmt!r}")
    examples = [FORMATS[fmt](row, tokenizer, f"dataset {source} line {n}") for n, row in rows]
    if packing:
        examples = pack(examples, max_len)
    else:
        examples = [Example(e.input_ids[:max_len], e.labels[:max_len]) for e in examples]
    kept = [e for e in examples if e.trained_tokens > 0]
    if not kept:
        raise DatasetError(
            f"dataset {source}: no trainable tokens left after cutting to maxSeqLength {max_len}"
        )
    return kept


def pack(examples: list[Example], max_len: int) -> list[Example]:
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        ids.extend(e.input_ids)
        labels.extend(e.labels)
    return [
        Example(tuple(ids[i : i + max_len]), tuple(labels[i : i + max_len]))
        for i in range(0, len(ids), max_len)
    ]


def split_rows(count: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and eval rows: a seeded shuffle, at least one eval row if asked."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_eval = math.ceil(count * eval_fraction) if eval_fraction > 0 else 0
    n_eval = min(n_eval, count - 1)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


@dataclass(frozen=True)
class DataOrder:
    """Which examples each worker trains on at each optimizer step.

    A global micro-batch is batch_size x world_size examples; an optimizer step takes
    `accumulation` of them; an epoch is a seeded permutation with the incomplete tail
    dropped, so every step has the same shape on every worker.
    """

    num_examples: int
    batch_size: int
    world_size: int
    accumulation: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch // self.accumulation

    def check(self, source: str) -> None:
        if self.steps_per_epoch < 1:
            need = self.global_batch * self.accumulation
            raise DatasetError(
                f"dataset {source}: {self.num_examples} training sequences, but one optimizer "
                f"step needs {need} (batchSize x workers x gradientAccumulationSteps)"
            )

    def total_steps(self, epochs: int | None, max_steps: int | None) -> int:
        return max_steps if max_steps is not None else (epochs or 1) * self.steps_per_epoch

    def permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_examples))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def position(self, step: int) -> dict:
        """Where optimizer step `step` (0-based) starts: stored in checkpoints for humans."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "microBatch": in_epoch * self.accumulation}

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Example indices for this worker, one list per accumulated micro-batch."""
        position = self.position(step)
        order = self.permutation(position["epoch"])
        batches = []
        for micro in range(position["microBatch"], position["microBatch"] + self.accumulation):
            start = micro * self.global_batch + rank * self.batch_size
            batches.append(order[start : start + self.batch_size])
        return batches


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-padded tensors; padding carries no loss and no attention."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
