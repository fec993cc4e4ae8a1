"""Regenerate the tiny example datasets (deterministic): `python examples/data/generate.py`.

Three small, learnable tasks in the three supported formats, so a few hundred optimizer
steps on the tiny model measurably lower eval loss and adapters trained on different
data answer differently.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
FRUIT_COLOURS = {
    "banana": "yellow", "cherry": "red", "lime": "green", "plum": "purple", "orange": "orange",
    "blueberry": "blue", "lemon": "yellow", "grape": "purple", "kiwi": "green", "apple": "red",
}
WORDS = ["kube", "pod", "node", "spot", "ray", "lora", "gpu", "helm", "flux", "argo", "train"]


def alpaca_rows(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(80):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"instruction": "Add the numbers.", "input": f"{a} and {b}", "output": str(a + b)})
    for _ in range(60):
        word = rng.choice(WORDS)
        rows.append({"instruction": "Reverse the word.", "input": word, "output": word[::-1]})
    for _ in range(60):
        fruit = rng.choice(sorted(FRUIT_COLOURS))
        rows.append({"instruction": "Name the colour of the fruit.", "input": fruit,
                     "output": FRUIT_COLOURS[fruit]})
    rng.shuffle(rows)
    return rows


def chat_rows(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(120):
        fruit = rng.choice(sorted(FRUIT_COLOURS))
        word = rng.choice(WORDS)
        rows.append({"messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": f"What colour is a {fruit}?"},
            {"role": "assistant", "content": f"A {fruit} is {FRUIT_COLOURS[fruit]}."},
            {"role": "user", "content": f"Spell {word} backwards."},
            {"role": "assistant", "content": word[::-1]},
        ]})
    return rows


def text_rows(rng: random.Random) -> list[dict]:
    return [{"text": f"The {f} is {c}. " * 3} for f, c in
            (rng.choice(sorted(FRUIT_COLOURS.items())) for _ in range(120))]


def main() -> None:
    for name, make in (("tiny-alpaca", alpaca_rows), ("tiny-chat", chat_rows), ("tiny-text", text_rows)):
        rows = make(random.Random(7))
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
