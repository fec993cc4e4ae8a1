"""What one optimizer step, one evaluation and the counters that survive a restart are.

The pieces the training session composes, kept apart from it (and from `loop`, the
entry point Ray Train calls) so that neither imports the other: the session uses these,
the loop starts the session. `Worker` says where this copy runs and how ranks agree;
`RunState` is what trainer_state.json holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import data as datamod

LOSS_WINDOW = 10


@dataclass
class Worker:
    """Where this copy of the loop runs: rank, world size, device, and how to sync."""

    rank: int = 0
    world_size: int = 1
    device: object = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        import torch.distributed as dist

        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def average_gradients(self, params) -> None:
        import torch.distributed as dist

        if self.distributed:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size

    def agree(self, flag: bool) -> bool:
        """Rank 0's answer for every rank, so all stop after the same step."""
        import torch
        import torch.distributed as dist

        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0])
        dist.broadcast(value, src=0)
        return bool(value.item())

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks (counts from sharded evaluation)."""
        import torch
        import torch.distributed as dist

        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor]

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.distributed:
            dist.barrier()


@dataclass
class RunState:
    """Counters that survive restarts (stored in trainer_state.json)."""

    step: int = 0
    tokens: int = 0
    recent_losses: list = field(default_factory=list)
    initial_eval_loss: float | None = None
    eval_loss: float | None = None
    # spec.evaluation results ({"baseline", "latest", "final"}: EvaluationScores wire
    # form), kept across restarts so a resumed attempt still knows its baseline.
    evaluation: dict = field(default_factory=dict)

    def to_json(self, order: datamod.DataOrder) -> dict:
        return {
            "step": self.step,
            "position": order.position(self.step),
            "tokens": self.tokens,
            "recentLosses": self.recent_losses,
            "initialEvalLoss": self.initial_eval_loss,
            "evalLoss": self.eval_loss,
            "evaluation": self.evaluation,
            "seed": order.seed,
        }

    @classmethod
    def from_json(cls, body: dict) -> RunState:
        return cls(body["step"], body["tokens"], body["recentLosses"],
                   body.get("initialEvalLoss"), body.get("evalLoss"),
                   dict(body.get("evaluation") or {}))

    @property
    def train_loss(self) -> float | None:
        window = self.recent_losses[-LOSS_WINDOW:]
        return sum(window) / len(window) if window else None


def current_worker(config: dict) -> Worker:
    import torch

    if config.get("control") == "ray":
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        return Worker(context.get_world_rank(), context.get_world_size(),
                      ray.train.torch.get_device())
    use_gpu = config.get("useGpu") and torch.cuda.is_available()
    return Worker(0, 1, torch.device("cuda" if use_gpu else "cpu"))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate(model, examples, pad_id: int, batch_size: int, device) -> float | None:
    """Mean loss per label token over the eval examples (dropout off, no grad)."""
    import torch

    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in
                     datamod.collate(examples[start : start + batch_size], pad_id).items()}
            n = int((batch["labels"][:, 1:] != datamod.IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * n
            count += n
    model.train()
    return total / count if count else None


def train_step(model, optimizer, scheduler, examples, batches, params, worker, training, pad_id):
    """One optimizer step over the accumulated micro-batches; returns (loss, tokens).

    Tokens are the real (not padding) tokens fed, counted from the examples: a packed
    batch's attention_mask is 4D, so its sum is no token count. Packed batches need sdpa
    attention (see `data.packed_attention_mask`), which `modeling.load_peft_model` asks
    for when packing is on.
    """
    import torch

    loss_sum, tokens = 0.0, 0
    for indices in batches:
        picked = [examples[i] for i in indices]
        batch = {k: v.to(worker.device) for k, v in datamod.collate(picked, pad_id).items()}
        loss = model(**batch).loss / len(batches)
        loss.backward()
        loss_sum += float(loss.detach())
        tokens += sum(len(e.input_ids) for e in picked)
    worker.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens * worker.world_size
