"""How the loop is launched: Ray Train TorchTrainer (production) or in this process.

Both paths give the loop the same config and a JobControl; the driver keeps that
control, serves /progress from it and turns SIGTERM into `request_stop()`.
"""

from __future__ import annotations

import logging
import os

from . import rayhead
from .control import JobControl, actor_name, start_control_actor
from .loop import train_loop

log = logging.getLogger("kubetune.train")
WAIT_FOR_WORKERS_SECONDS = 900.0


def loop_config(job, started_at: float, control_kind: str) -> dict:
    spec = job.spec
    return {
        "spec": job.spec_wire,
        "namespace": job.namespace,
        "job": job.name,
        "uid": job.uid,
        "startedAt": started_at,
        "control": control_kind,
        "controlActor": actor_name(job.namespace, job.name),
        "useGpu": spec.resources.gpus_per_worker > 0,
    }


class InProcessRun:
    """The loop on this thread; the stop flag is a plain Event the signal handler sets."""

    def __init__(self, job, started_at: float) -> None:
        self.control = JobControl()
        self.config = loop_config(job, started_at, "local")

    def run(self) -> dict:
        return train_loop(self.config, self.control)

    def close(self) -> None:
        pass


class RayRun:
    """TorchTrainer over spec.resources.workers; joins `address` or starts a local Ray."""

    def __init__(self, job, started_at: float, address: str | None) -> None:
        import ray

        self.head = None
        head_port = os.environ.get(rayhead.HEAD_PORT_ENV)
        if address is None and head_port:
            self.head = rayhead.RayHead(int(head_port))
            try:
                self.head.connect(ray)
            except BaseException:
                self.head.stop()
                raise
        else:
            ray.init(address=address, namespace="kubetune", log_to_driver=True,
                     include_dashboard=False, configure_logging=False)
        self.job = job
        self.config = loop_config(job, started_at, "ray")
        self.control = start_control_actor(self.config["controlActor"])

    def run(self) -> dict:
        import torch
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        import ray

        worker_pods = int(os.environ.get(rayhead.WORKER_PODS_ENV) or 0)
        if worker_pods and not rayhead.wait_for_nodes(ray, 1 + worker_pods, self.control,
                                                      WAIT_FOR_WORKERS_SECONDS):
            return {"status": "preempted", "steps": 0, "checkpoint": None,
                    "wroteCheckpoint": False}
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
            reported = self.control.outcome()
            message = reported["message"] if reported else _root_message(exc)
            raise WorkerFailure(message) from exc
        outcome = self.control.outcome()
        if outcome is None:
            raise WorkerFailure("training workers exited without reporting an outcome")
        return outcome

    def close(self) -> None:
        import ray

        ray.shutdown()
        if self.head is not None:
            self.head.stop()


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
