"""Shared state between the driver and the training workers: progress, stop, outcome.

Ray Train workers are separate processes (on other pods in a cluster) and never see the
driver's SIGTERM. So the driver owns one `JobControl`; in production a copy lives in a
named Ray actor that every worker reaches with `ray.get_actor`, in-process it is the
plain object. Rank 0 polls `stop_requested()` after every optimizer step and broadcasts
the answer to the other ranks, so all workers stop after the same step.

The start of training is a decision taken in one place: `begin_training()` (the loop,
before its first step) and `abandon()` (the driver, on a stop) exclude each other, so a
stop during start-up ends the attempt at once without racing a first step, and a stop
once training has begun always waits for the checkpoint.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

ACTOR_NAMESPACE = "kubetune"
PROGRESS_FIELDS = (
    "phase", "step", "totalSteps", "epoch", "loss", "evalLoss", "tokensPerSecond",
    "etaSeconds", "lastCheckpoint", "evaluation",
)


def actor_name(namespace: str, job: str) -> str:
    """One control actor per job, so jobs sharing a Ray cluster never see each other's stop."""
    return f"job-control/{namespace}/{job}"


class JobControl:
    """Progress board, stop flag, start-of-training latch and final outcome of one run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._training = False
        self._abandoned = False
        self._progress: dict = {field: None for field in PROGRESS_FIELDS}
        self._progress.update(phase="Starting", step=0, updatedAt=_now())
        self._outcome: dict | None = None

    def request_stop(self) -> None:
        with self._lock:
            if self._stop_at is None:
                self._stop_at = time.time()
        self._stop.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def stop_requested_at(self) -> float | None:
        with self._lock:
            return self._stop_at

    def wait_for_stop(self, timeout: float) -> bool:
        return self._stop.wait(timeout)

    def begin_training(self) -> bool:
        """True when the loop may take its first step; False after a stop or abandon."""
        with self._lock:
            if self._abandoned or self._stop.is_set():
                return False
            self._training = True
            return True

    def abandon(self) -> bool:
        """True (and no step will ever be taken) unless training has already begun."""
        with self._lock:
            if not self._training:
                self._abandoned = True
            return self._abandoned

    def update(self, fields: dict) -> None:
        unknown = set(fields) - set(PROGRESS_FIELDS)
        if unknown:
            raise KeyError(f"unknown progress fields: {sorted(unknown)}")
        with self._lock:
            self._progress.update(fields)
            self._progress["updatedAt"] = _now()

    def replace_progress(self, progress: dict) -> None:
        """Copy another board's progress (the driver mirrors the actor's)."""
        with self._lock:
            self._progress = dict(progress)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._progress)

    def finish(self, outcome: dict) -> None:
        with self._lock:
            self._outcome = outcome

    def outcome(self) -> dict | None:
        with self._lock:
            return self._outcome

    def exchange(self, stop: bool) -> dict:
        """One round trip for the driver's mirror: pass a stop on, read progress and outcome."""
        if stop:
            self.request_stop()
        with self._lock:
            return {"progress": dict(self._progress), "outcome": self._outcome,
                    "training": self._training}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RayControlClient:
    """The workers' view of the driver's JobControl actor (same methods, remote)."""

    def __init__(self, actor=None, name: str | None = None) -> None:
        import ray

        self._ray = ray
        self._actor = actor or ray.get_actor(name, namespace=ACTOR_NAMESPACE)

    def request_stop(self) -> None:
        self._ray.get(self._actor.request_stop.remote())

    def stop_requested(self) -> bool:
        return self._ray.get(self._actor.stop_requested.remote())

    def begin_training(self) -> bool:
        return self._ray.get(self._actor.begin_training.remote())

    def abandon(self, timeout: float) -> bool:
        return self._ray.get(self._actor.abandon.remote(), timeout=timeout)

    def update(self, fields: dict) -> None:
        self._actor.update.remote(fields)

    def snapshot(self) -> dict:
        return self._ray.get(self._actor.snapshot.remote())

    def finish(self, outcome: dict) -> None:
        self._ray.get(self._actor.finish.remote(outcome))

    def outcome(self) -> dict | None:
        return self._ray.get(self._actor.outcome.remote())

    def exchange(self, stop: bool, timeout: float) -> dict:
        return self._ray.get(self._actor.exchange.remote(stop), timeout=timeout)


def start_control_actor(name: str) -> RayControlClient:
    """Create the named actor holding this run's JobControl (driver side); it lives as
    long as the driver, so a restarted driver starts with a fresh stop flag."""
    import ray

    actor_class = ray.remote(num_cpus=0)(JobControl)
    actor = actor_class.options(
        name=name, namespace=ACTOR_NAMESPACE, lifetime=None, max_concurrency=8
    ).remote()
    return RayControlClient(actor)
