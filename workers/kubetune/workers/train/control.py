"""Shared state between the driver and the training workers: progress, stop, outcome.

Ray Train workers are separate processes (on other pods in a cluster) and never see the
driver's SIGTERM. So the driver owns one `JobControl`; in production it lives in a named
Ray actor that every worker reaches with `ray.get_actor`, in-process it is the plain
object. Rank 0 polls `stop_requested()` after every optimizer step and broadcasts the
answer to the other ranks, so all workers stop after the same step.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

ACTOR_NAMESPACE = "kubetune"


def actor_name(namespace: str, job: str) -> str:
    """One control actor per job, so jobs sharing a Ray cluster never see each other's stop."""
    return f"job-control/{namespace}/{job}"
PROGRESS_FIELDS = (
    "phase", "step", "totalSteps", "epoch", "loss", "evalLoss", "tokensPerSecond",
    "etaSeconds", "lastCheckpoint",
)


class JobControl:
    """Progress board, stop flag and final outcome of one trainer run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress: dict = {field: None for field in PROGRESS_FIELDS}
        self._progress.update(phase="Starting", step=0, updatedAt=_now())
        self._outcome: dict | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def update(self, fields: dict) -> None:
        unknown = set(fields) - set(PROGRESS_FIELDS)
        if unknown:
            raise KeyError(f"unknown progress fields: {sorted(unknown)}")
        with self._lock:
            self._progress.update(fields)
            self._progress["updatedAt"] = _now()

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._progress)

    def finish(self, outcome: dict) -> None:
        with self._lock:
            self._outcome = outcome

    def outcome(self) -> dict | None:
        with self._lock:
            return self._outcome


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

    def update(self, fields: dict) -> None:
        self._actor.update.remote(fields)

    def snapshot(self) -> dict:
        return self._ray.get(self._actor.snapshot.remote())

    def finish(self, outcome: dict) -> None:
        self._ray.get(self._actor.finish.remote(outcome))

    def outcome(self) -> dict | None:
        return self._ray.get(self._actor.outcome.remote())


def start_control_actor(name: str):
    """Create the named actor holding this run's JobControl (driver side); it lives as
    long as the driver, so a restarted driver starts with a fresh stop flag."""
    import ray

    actor_class = ray.remote(num_cpus=0)(JobControl)
    actor = actor_class.options(
        name=name, namespace=ACTOR_NAMESPACE, lifetime=None, max_concurrency=8
    ).remote()
    return RayControlClient(actor)
