"""The training loop: one plain function, run by Ray Train workers or in-process.

`train_loop(config)` is what TorchTrainer calls on every worker (`config` is plain
JSON-able data so Ray can ship it); tests and `--no-ray` call it directly with a local
JobControl. Rank 0 alone writes to object storage; all ranks keep identical adapter
weights by averaging gradients after each backward pass.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import data as datamod

log = logging.getLogger("kubetune.train")
LOSS_WINDOW = 10
HEARTBEAT_SECONDS = 5.0


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

    def to_json(self, order: datamod.DataOrder) -> dict:
        return {
            "step": self.step,
            "position": order.position(self.step),
            "tokens": self.tokens,
            "recentLosses": self.recent_losses,
            "initialEvalLoss": self.initial_eval_loss,
            "evalLoss": self.eval_loss,
            "seed": order.seed,
        }

    @classmethod
    def from_json(cls, body: dict) -> RunState:
        return cls(body["step"], body["tokens"], body["recentLosses"],
                   body.get("initialEvalLoss"), body.get("evalLoss"))

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
    """One optimizer step over the accumulated micro-batches; returns (loss, tokens)."""
    import torch

    loss_sum, tokens = 0.0, 0
    for indices in batches:
        batch = {k: v.to(worker.device) for k, v in
                 datamod.collate([examples[i] for i in indices], pad_id).items()}
        loss = model(**batch).loss / len(batches)
        loss.backward()
        loss_sum += float(loss.detach())
        tokens += int(batch["attention_mask"].sum())
    worker.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens * worker.world_size


class Heartbeat:
    """Refreshes progress.updatedAt every few seconds even while a long step runs."""

    def __init__(self, control) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(control,), daemon=True)
        self._thread.start()

    def _run(self, control) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            control.update({})

    def close(self) -> None:
        self._stop.set()


def train_loop(config: dict, control=None) -> dict:
    """Train from config['spec'] (wire form) and return the outcome also given to control.

    The outcome is {"status": "completed", adapter...} or {"status": "preempted",
    checkpoint...}; errors propagate (the CLI turns them into a termination message).
    """
    from .control import RayControlClient
    from .session import TrainingSession

    if control is None:
        control = RayControlClient(name=config["controlActor"])
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    worker = current_worker(config)
    heartbeat = Heartbeat(control) if worker.is_chief else None
    workdir = Path(tempfile.mkdtemp(prefix=f"kubetune-train-{worker.rank}-"))
    try:
        try:
            outcome = TrainingSession(config, control, worker, workdir).run()
        except Exception as exc:
            if worker.is_chief:
                control.finish({"status": "error", "message": error_message(exc)})
            raise
        if worker.is_chief:
            control.finish(outcome)
        return outcome
    finally:
        if heartbeat:
            heartbeat.close()
        shutil.rmtree(workdir, ignore_errors=True)



def error_message(exc: BaseException) -> str:
    """A one-line cause for the termination message; TrainerErrors already name it."""
    from .errors import TrainerError

    if isinstance(exc, TrainerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:1000]
