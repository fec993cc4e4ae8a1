"""The training loop's entry point: one plain function, run by Ray Train workers or in-process.

`train_loop(config)` is what TorchTrainer calls on every worker (`config` is plain
JSON-able data so Ray can ship it); tests and `--no-ray` call it with a local
JobControl. Rank 0 alone writes to object storage; all ranks keep identical adapter
weights by averaging gradients after each backward pass. The phases themselves are in
`session`, the step arithmetic in `steps`; this module only wires them to a control.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .control import RayControlClient
from .errors import error_message
from .session import TrainingSession
from .steps import current_worker

log = logging.getLogger("kubetune.train")
HEARTBEAT_SECONDS = 5.0
SCRATCH_ENV = "KUBETUNE_SCRATCH"  # the trainer's scratch folder, removed when it exits


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
    if control is None:
        control = RayControlClient(name=config["controlActor"])
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    worker = current_worker(config)
    heartbeat = Heartbeat(control) if worker.is_chief else None
    scratch = os.environ.get(SCRATCH_ENV)
    workdir = Path(tempfile.mkdtemp(prefix=f"kubetune-train-{worker.rank}-",
                                    dir=scratch if scratch and os.path.isdir(scratch) else None))
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
