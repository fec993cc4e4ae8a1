"""Choosing the next token: greedy at temperature 0, else temperature + nucleus (top_p)
sampling from a per-request seeded generator so `seed` reproduces an answer."""

from __future__ import annotations


def choose_token(logits, temperature: float, top_p: float, generator) -> int:
    import torch

    if temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())
