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

from . import family
from .errors import DatasetError

IGNORE_INDEX = -100
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = (
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One training sequence; labels are IGNORE_INDEX where no loss is taken.

    A packed sequence (see `pack`) also has `position_ids`, restarting at 0 where each of
    its examples begins; None means one example at positions 0..n-1.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    position_ids: tuple[int, ...] | None = None

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Token count of each example in the sequence (one entry unless packed)."""
        if self.position_ids is None:
            return (len(self.input_ids),)
        starts = [i for i, p in enumerate(self.position_ids) if p == 0] + [len(self.input_ids)]
        return tuple(b - a for a, b in zip(starts, starts[1:]))


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


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a text that opens a sequence: BOS once, as `family.encode` rules."""
    return family.encode(tokenizer, text)


def alpaca_example(row: dict, tokenizer, where: str) -> Example:
    """Prompt tokens carry no loss: the model learns the response, not the instruction.
    The response ends with a token this base's generation stops on (`family`)."""
    _require_text(row, ("instruction", "output"), "alpaca", where)
    if row.get("input") not in (None, "") and not isinstance(row.get("input"), str):
        raise DatasetError(f"{where}: alpaca field input must be a string")
    template = ALPACA_PROMPT_WITH_INPUT if row.get("input") else ALPACA_PROMPT
    prompt = encode_prompt(tokenizer, template.format(**{"input": "", **row}))
    stop = family.conventions(tokenizer).stop_id
    response = list(tokenizer(row["output"], add_special_tokens=False)["input_ids"]) + [stop]
    return Example(tuple(prompt + response), tuple([IGNORE_INDEX] * len(prompt) + response))


def text_example(row: dict, tokenizer, where: str) -> Example:
    _require_text(row, ("text",), "text", where)
    ids = encode_prompt(tokenizer, row["text"]) + [family.conventions(tokenizer).stop_id]
    return Example(tuple(ids), tuple(ids))


def chat_example(row: dict, tokenizer, where: str) -> Example:
    """Loss only on assistant turns (as Vicuna computes it): each answer plus the token
    that ends its turn, so the model learns to stop.

    The conversation is rendered once with the base's own chat template and each
    assistant turn is located in that final render (`family.assistant_spans`); tokens
    whose characters begin inside a turn are trained. This works with any template,
    including ones that render earlier turns differently once later turns exist.
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
    full, spans = family.assistant_spans(tokenizer, messages, where)
    ids, offsets = family.encode(tokenizer, full, with_offsets=True)
    labels = []
    for token, (begin, end) in zip(ids, offsets):
        inside = end > begin and any(s <= begin < e for s, e in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return Example(tuple(ids), tuple(labels))


FORMATS = {"alpaca": alpaca_example, "chat": chat_example, "text": text_example}


def build_examples(
    rows: list[tuple[int, dict]], fmt: str, tokenizer, max_len: int, packing: bool, source: str
) -> list[Example]:
    """Rows -> sequences of at most `max_len` tokens: one example each, or packed.

    Each example is first cut to `max_len`. Unpacked, each is a sequence of its own;
    packed (`pack`), whole examples share sequences but never see each other. Examples
    left with no trained token (a prompt longer than max_len) are dropped; none left is
    an error.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"dataset {source}: unknown format {fmt!r}")
    examples = [FORMATS[fmt](row, tokenizer, f"dataset {source} line {n}") for n, row in rows]
    examples = [Example(e.input_ids[:max_len], e.labels[:max_len]) for e in examples]
    if packing:
        examples = pack(examples, max_len)
    kept = [e for e in examples if e.trained_tokens > 0]
    if not kept:
        raise DatasetError(
            f"dataset {source}: no trainable tokens left after cutting to maxSeqLength {max_len}"
        )
    return kept


def pack(examples: list[Example], max_len: int) -> list[Example]:
    """Whole examples (each at most max_len) into as few sequences of <= max_len as fits.

    Boundaries are kept the way padding-free training does it: positions restart at 0
    for each example (`collate` turns them into block-diagonal causal attention), and
    each example's first label is ignored, so no token is trained to predict the start
    of the next example from the end of the one before. That first label never counts
    unpacked either (the loss compares token t's prediction with label t+1), so the
    loss of each example is the same packed or not. An example with no trained token
    left is dropped rather than packed.

    Placement is first-fit decreasing: longest first, each into the first sequence with
    room, else a new one. It wastes far less than greedy filling in data order (a long
    example no longer closes a half-empty sequence), is deterministic (a stable sort;
    ties keep data order) and loses nothing of the data order that matters, since the
    training order is a seeded shuffle of the sequences anyway. Inside a sequence the
    examples keep their data order.
    """
    members = []
    for e in examples:
        if len(e.input_ids) > max_len:
            raise ValueError(f"pack: an example of {len(e.input_ids)} tokens > max_len {max_len}")
        labels = (IGNORE_INDEX,) + e.labels[1:]
        if any(label != IGNORE_INDEX for label in labels):
            members.append(Example(e.input_ids, labels))
    longest_first = sorted(range(len(members)), key=lambda i: -len(members[i].input_ids))
    room = _FirstFit(len(members), max_len)
    bins: list[list[int]] = []
    for i in longest_first:
        b = room.place(len(members[i].input_ids))
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
    packed = []
    for indices in bins:
        parts = [members[i] for i in sorted(indices)]
        packed.append(Example(
            tuple(t for p in parts for t in p.input_ids),
            tuple(t for p in parts for t in p.labels),
            tuple(pos for p in parts for pos in range(len(p.input_ids))),
        ))
    return packed


class _FirstFit:
    """The first of `count` sequences with room for n tokens, in O(log count).

    A max-tree over the room left in each sequence (all `capacity` at first, so the
    first untouched one is where a new sequence starts): descend to the leftmost leaf
    with room >= n, take n from it, update the maxima above it.
    """

    def __init__(self, count: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(count, 1):
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def place(self, n: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= n else 2 * node + 1
        self.tree[node] -= n
        index = node - self.size
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return index


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
    """Right-padded tensors; padding carries no loss and no attention.

    Unpacked: input_ids, labels and a 2D attention_mask. Packed: input_ids, labels,
    position_ids and a 4D bool attention_mask (`packed_attention_mask`).
    """
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
    if all(e.position_ids is None for e in examples):
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        positions[row, :n] = torch.tensor(e.position_ids or range(n))
    return {"input_ids": ids, "labels": labels, "position_ids": positions,
            "attention_mask": packed_attention_mask(positions, mask)}


def packed_attention_mask(positions, real):
    """(batch, 1, seq, seq) bool mask, True where a token may attend: causal, and only
    inside its own example.

    Why not just position_ids and no mask, which transformers (5.x) turns into this
    same block-diagonal mask itself: it does so only when no KV cache is passed, and
    the model makes one whenever use_cache is on (the config default) — in eval mode,
    or in training without gradient checkpointing — and then silently lets examples
    attend to each other. A 4D mask is used as given whatever the cache. Bool, not an
    additive float mask: sdpa (what the trainer loads) takes bool with a query of any
    dtype, while a float32 mask against a bf16 query is refused by CUDA's
    memory-efficient kernel. Eager attention would add a bool mask to the scores, so a
    family that needs eager (attention soft-capping) gets it turned additive before the
    decoder runs (`modeling.additive_packed_masks`).

    Each padding token is its own one-token block, so no row is fully masked (which
    would give NaN) and no real token sees padding.
    """
    import torch

    batch, width = positions.shape
    starts = (positions == 0) & (real == 1)
    block = torch.cumsum(starts.long(), dim=1)
    pad_block = -torch.arange(1, width + 1).expand(batch, width)
    block = torch.where(real == 1, block, pad_block)
    same = block[:, :, None] == block[:, None, :]
    return (same & torch.ones((width, width), dtype=torch.bool).tril())[:, None]
