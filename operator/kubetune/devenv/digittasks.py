"""Digit-string tasks with exact answers, for a tiny base that can really learn.

No model hub is reachable here, so the embedded base is built locally: a randomly
initialised Llama that would learn nothing useful in a minute. It is therefore
pre-trained briefly on one task, repeating a string of digits (one token per digit),
which teaches it the prompt format and to read the input digit by digit. The fine-tune
task is another, which the base has never seen: add one to each digit (9 wraps to 0),
in the spirit of Goat's per-digit arithmetic. Its answers are exact, so exact match on
held-out strings says whether an adapter learned it; the base, which only ever copied,
scores 0 on it. (A second pre-training task, reversing, made the build slow and
unreliable: the model sat for hundreds of steps unable to tell the two apart.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LENGTH = 4
PRETRAINING = {"Repeat the digits.": lambda digits: digits}
TASK_INSTRUCTION = "Add one to each digit."
DATASET = Path(__file__).resolve().parents[3] / "examples" / "data" / "digits-add-one.jsonl"
EVAL_DATASET = DATASET.with_name("digits-add-one-eval.jsonl")


def add_one(digits: list[str]) -> list[str]:
    return [str((int(d) + 1) % 10) for d in digits]


def _digits(rng: random.Random) -> list[str]:
    return [rng.choice("0123456789") for _ in range(LENGTH)]


def row(instruction: str, digits: list[str], answer: list[str]) -> dict:
    """An alpaca row: digits separated by spaces, so each is a token of its own."""
    return {"instruction": instruction, "input": " ".join(digits), "output": " ".join(answer)}


def pretraining_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    tasks = sorted(PRETRAINING.items())
    rows = []
    for _ in range(count):
        instruction, transform = rng.choice(tasks)
        digits = _digits(rng)
        rows.append(row(instruction, digits, transform(digits)))
    return rows


def task_rows(count: int, seed: int) -> list[dict]:
    """Distinct inputs: a held-out split then holds inputs the training never saw."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < count:
        digits = _digits(rng)
        if "".join(digits) not in seen:
            seen.add("".join(digits))
            rows.append(row(TASK_INSTRUCTION, digits, add_one(digits)))
    return rows


def write_dataset(path: Path = DATASET, count: int = 400, seed: int = 7) -> Path:
    """The shipped fine-tune dataset (examples/data/digits-add-one.jsonl)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in task_rows(count, seed)))
    return path


def held_out_rows(count: int, trained: Path = DATASET, seed: int = 2026) -> list[dict]:
    """Task rows whose inputs the training file does not hold."""
    seen = {json.loads(line)["input"] for line in trained.read_text().splitlines()}
    return [r for r in task_rows(count + len(seen), seed) if r["input"] not in seen][:count]


def write_eval_dataset(path: Path = EVAL_DATASET, count: int = 100) -> Path:
    """examples/data/digits-add-one-eval.jsonl: the demo's evaluation rows, unseen inputs."""
    path.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows(count)))
    return path


if __name__ == "__main__":
    print(write_dataset())
    print(write_eval_dataset())
