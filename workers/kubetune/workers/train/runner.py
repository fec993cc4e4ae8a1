"""How the loop is launched: Ray Train TorchTrainer (production) or in this process.

Both run on the attempt thread the CLI starts (see `supervisor`), never on the main
thread: ray.init installs its own SIGTERM handler (exit 15, no summary) only when
called there, and a main thread blocked inside Ray's C++ waits runs no Python signal
handler. The driver's `board` (a plain JobControl) is what GET /progress serves and
what SIGTERM sets; under Ray a mirror thread copies the control actor's progress and
outcome to it and passes a stop on, so the HTTP thread never calls Ray (after the run,
a Ray call would start a new Ray session) and the board outlives Ray.
"""

from __future__ import annotations

import logging
import os
import threading

from . import rayhead
from .control import JobControl, actor_name, start_control_actor
from .jobfile import spec_fingerprint
from .loop import train_loop

log = logging.getLogger("kubetune.train")
WAIT_FOR_WORKERS_SECONDS = 900.0
MIRROR_SECONDS = 0.1


def loop_config(job, started_at: float, control_kind: str, sync_checkpoints: bool) -> dict:
    spec = job.spec
    return {
        "spec": job.spec_wire,
        "specSha256": spec_fingerprint(job.spec_wire),
        "namespace": job.namespace,
        "job": job.name,
        "uid": job.uid,
        "startedAt": started_at,
        "control": control_kind,
        "controlActor": actor_name(job.namespace, job.name),
        "useGpu": spec.resources.gpus_per_worker > 0,
        "syncCheckpoints": sync_checkpoints,
    }


def not_started(progress: dict) -> dict:
    """The outcome of an attempt stopped before its first step: nothing trained, nothing
    lost; it reports the checkpoint it resumed from, if it got that far."""
    saved = progress.get("lastCheckpoint")
    return {"status": "preempted", "steps": saved["step"] if saved else None,
            "checkpoint": saved, "wroteCheckpoint": False,
            "stoppedIn": progress.get("phase")}


class InProcessRun:
    """The loop on the attempt thread, using the driver's board as its control."""

    def __init__(self, job, started_at: float, board: JobControl,
                 sync_checkpoints: bool = False) -> None:
        self.board = board
        self.config = loop_config(job, started_at, "local", sync_checkpoints)

    def run(self) -> dict:
        return train_loop(self.config, self.board)

    def abandon(self, timeout: float) -> bool | None:
        return self.board.abandon()


class RayRun:
    """TorchTrainer over spec.resources.workers; joins `address`, the head this pod starts
    (multi-pod jobs), or a local Ray it starts itself."""

    def __init__(self, job, started_at: float, board: JobControl, address: str | None,
                 sync_checkpoints: bool = False) -> None:
        self.job = job
        self.board = board
        self.address = address
        self.config = loop_config(job, started_at, "ray", sync_checkpoints)
        self.head = None
        self._lock = threading.Lock()
        self._remote = None
        self._abandoned = False

    def abandon(self, timeout: float) -> bool | None:
        """True unless training has begun; None when the actor did not answer in time."""
        with self._lock:
            if self._remote is None:
                self._abandoned = True
                return True
            remote = self._remote
        try:
            return remote.abandon(timeout)
        except Exception as exc:  # a timeout, or Ray going away: ask again
            log.info("control actor did not answer abandon: %s", exc)
            return None

    def run(self) -> dict:
        import ray

        try:
            self.connect(ray)
            with self._lock:
                if self._abandoned:
                    return not_started(self.board.snapshot())
                self._remote = start_control_actor(self.config["controlActor"])
            mirror = Mirror(self._remote, self.board)
            mirror.start()
            try:
                return self.fit(ray)
            finally:
                mirror.close()
        finally:
            self.close(ray)

    def connect(self, ray) -> None:
        head_port = os.environ.get(rayhead.HEAD_PORT_ENV)
        if self.address is None and head_port:
            self.head = rayhead.RayHead(int(head_port))
            self.head.connect(ray)
        else:
            ray.init(address=self.address, namespace="kubetune", log_to_driver=True,
                     include_dashboard=False, configure_logging=False)

    def fit(self, ray) -> dict:
        import torch
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        worker_pods = int(os.environ.get(rayhead.WORKER_PODS_ENV) or 0)
        if worker_pods:
            self._remote.update({"phase": "WaitingForWorkers"})
            if not rayhead.wait_for_nodes(ray, 1 + worker_pods, self.board.stop_requested,
                                          WAIT_FOR_WORKERS_SECONDS):
                return not_started(self.board.snapshot())
        resources = self.job.spec.resources
        use_gpu = resources.gpus_per_worker > 0 and torch.cuda.is_available()
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=self.config,
            scaling_config=ScalingConfig(
                num_workers=resources.workers,
                use_gpu=use_gpu,
                resources_per_worker=({"GPU": resources.gpus_per_worker} if use_gpu else None),
            ),
            run_config=RunConfig(
                name=f"{self.job.namespace}-{self.job.name}",
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            trainer.fit()
        except Exception as exc:
            reported = self._remote.outcome()
            message = reported["message"] if reported else _root_message(exc)
            raise WorkerFailure(message) from exc
        outcome = self._remote.outcome()
        if outcome is None:
            raise WorkerFailure("training workers exited without reporting an outcome")
        return outcome

    def close(self, ray) -> None:
        """On the attempt thread: the processes a local ray.init started die with it."""
        if ray.is_initialized():
            ray.shutdown()
        if self.head is not None:
            self.head.stop(timeout=2.0)


class Mirror:
    """Copies the control actor's progress and outcome to the driver's board every
    MIRROR_SECONDS and passes the board's stop on at once."""

    def __init__(self, remote, board: JobControl) -> None:
        self.remote = remote
        self.board = board
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-mirror", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        forwarded = False
        while not self._done.is_set():
            stop = self.board.stop_requested() and not forwarded
            answered = self.sync(stop)
            forwarded = forwarded or (stop and answered)
            if forwarded:
                self._done.wait(MIRROR_SECONDS)
            else:
                self.board.wait_for_stop(MIRROR_SECONDS)

    def sync(self, stop: bool) -> bool:
        try:
            answer = self.remote.exchange(stop, timeout=5.0)
        except Exception as exc:
            log.debug("progress mirror: %s", exc)
            return False
        self.board.replace_progress(answer["progress"])
        if answer["outcome"] is not None:
            self.board.finish(answer["outcome"])
        return True

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        self.sync(stop=False)  # the final progress and outcome


class WorkerFailure(RuntimeError):
    """A Ray worker failed; the message is the worker's own error."""


def _root_message(exc: BaseException) -> str:
    """Ray wraps worker errors several times; the innermost message names the cause."""
    seen = exc
    while True:
        inner = getattr(seen, "__cause__", None) or getattr(seen, "cause", None)
        if inner is None or inner is seen:
            break
        seen = inner
    text = str(seen).strip().splitlines()
    return (text[-1] if text else type(seen).__name__)[:500]
