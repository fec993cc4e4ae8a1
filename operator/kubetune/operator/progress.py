"""Trainer progress: poll the head pod's GET /progress and fold it into the job's status.

The operator holds no S3 credentials, so the trainer's own HTTP endpoint is where it
learns the step, loss and newest checkpoint. Lost steps are measured when a new attempt
resumes: the step the previous attempt reached (its exit summary, else the last poll)
minus the checkpoint step the new attempt resumed from. That is exact when the old pod
left a summary and never an over-count when it vanished with its node.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime

from kubetune.api.finetunejob_status import CheckpointRef, FineTuneJobStatus, TrainingProgress

from .pod_state import parse_time

POLL_TIMEOUT_SECONDS = 2.0
# Trainer phases before it has loaded its checkpoint: its step is not yet meaningful.
# Phases before the trainer has resumed from its checkpoint; a multi-pod head waits for
# its worker pods' Ray nodes first.
STARTING_PHASES = {"Starting", "Loading", "WaitingForWorkers", None}


def fetch(pod: dict, port: int, timeout: float = POLL_TIMEOUT_SECONDS) -> dict | None:
    """The head's progress JSON, or None while it is not serving (starting, gone)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/progress", timeout=timeout) as answer:
            body = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _number(value, kind=float):
    return kind(value) if isinstance(value, (int, float)) and value == value else None


def _rounded(value) -> float | None:
    """Four decimals: what a person reads in `kubectl get`, and fewer needless status writes."""
    number = _number(value)
    return round(number, 4) if number is not None else None


def to_progress(polled: dict) -> TrainingProgress:
    """The status form of the trainer's JSON, with a display string for `kubectl get`."""
    step = _number(polled.get("step"), int) or 0
    total = _number(polled.get("totalSteps"), int)
    percent = round(100.0 * step / total, 1) if total else None
    display = f"{step}/{total} ({percent:.0f}%)" if total else str(step)
    eta = _number(polled.get("etaSeconds"))
    return TrainingProgress(
        step=max(0, step), total_steps=total, epoch=_nonneg(polled.get("epoch")),
        percent=min(100.0, percent) if percent is not None else None, display=display,
        loss=_rounded(polled.get("loss")), eval_loss=_rounded(polled.get("evalLoss")),
        tokens_per_second=_nonneg(polled.get("tokensPerSecond")),
        eta_seconds=int(eta) if eta is not None and eta >= 0 else None,
        updated_at=parse_time(polled.get("updatedAt")) if polled.get("updatedAt") else None,
    )


def _nonneg(value) -> float | None:
    number = _number(value)
    return number if number is not None and number >= 0 else None


def checkpoint_of(reported) -> CheckpointRef | None:
    if isinstance(reported, dict) and isinstance(reported.get("step"), int) \
            and isinstance(reported.get("uri"), str) and reported["uri"]:
        return CheckpointRef(step=reported["step"], uri=reported["uri"])
    return None


def fold(status: FineTuneJobStatus, polled: dict, pod_started: datetime | None
         ) -> FineTuneJobStatus:
    """`status` updated with a poll of the current attempt's head (a new copy).

    The stored progress belongs to an earlier attempt when it predates the pod; then the
    first poll after the trainer resumed adds the steps that attempt will redo.
    """
    stored = status.progress
    earlier = stored is not None and stored.updated_at is not None and \
        pod_started is not None and stored.updated_at < pod_started
    if earlier and polled.get("phase") in STARTING_PHASES:
        return status  # keep the previous attempt's step until this one has resumed
    update: dict = {"progress": to_progress(polled)}
    checkpoint = checkpoint_of(polled.get("lastCheckpoint"))
    if checkpoint is not None:
        update["last_checkpoint"] = checkpoint
    if earlier:
        resumed = checkpoint.step if checkpoint is not None else 0
        update["lost_steps"] = status.lost_steps + max(0, stored.step - resumed)
    return status.model_copy(update=update)


def fold_summary(status: FineTuneJobStatus, summary: dict) -> FineTuneJobStatus:
    """Record what an ended attempt's exit summary says it reached and saved."""
    update: dict = {}
    steps = summary.get("steps")
    if isinstance(steps, int) and status.progress is not None:
        update["progress"] = status.progress.model_copy(update={"step": steps})
    checkpoint = checkpoint_of(summary.get("checkpoint"))
    if checkpoint is not None:
        update["last_checkpoint"] = checkpoint
    return status.model_copy(update=update) if update else status
