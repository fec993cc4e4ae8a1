"""Folding the trainer's /progress into status: lost steps are counted when a new
attempt resumes, from the step the previous one reached to the checkpoint it resumed."""

from __future__ import annotations

from datetime import datetime, timezone

from kubetune.api import FineTuneJobStatus
from kubetune.operator import progress

OLD_POD = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
NEW_POD = datetime(2026, 11, 1, 12, 5, tzinfo=timezone.utc)


def polled(step, checkpoint=None, phase="Training", at="2026-11-01T12:06:00Z", **extra):
    body = {"phase": phase, "step": step, "totalSteps": 40, "loss": 1.5, "updatedAt": at, **extra}
    if checkpoint is not None:
        body["lastCheckpoint"] = {"step": checkpoint, "uri": f"s3://b/ckpt/step-{checkpoint}"}
    return body


def previous_attempt(step: int) -> FineTuneJobStatus:
    first = progress.fold(FineTuneJobStatus(), polled(step, 8, at="2026-11-01T12:01:00Z"),
                          OLD_POD)
    assert first.lost_steps == 0 and first.progress.display == f"{step}/40 ({step * 2.5:.0f}%)"
    return first


def test_resuming_behind_the_reached_step_counts_the_difference():
    status = progress.fold(previous_attempt(13), polled(9, 8), NEW_POD)
    assert status.lost_steps == 5 and status.last_checkpoint.step == 8
    again = progress.fold(status, polled(11, 8, at="2026-11-01T12:07:00Z"), NEW_POD)
    assert again.lost_steps == 5  # counted once per attempt


def test_a_starting_trainer_does_not_overwrite_the_previous_attempts_step():
    before = previous_attempt(13)
    status = progress.fold(before, polled(0, phase="Loading"), NEW_POD)
    assert status.progress.step == 13 and status.lost_steps == 0


def test_a_head_waiting_for_its_workers_has_not_resumed_yet():
    """Found end to end: a two-worker job's new head reports WaitingForWorkers before it
    resumes; counting then would call every step since the start lost."""
    ended = progress.fold_summary(previous_attempt(13), {
        "result": "Preempted", "steps": 15, "checkpoint": {"step": 15, "uri": "s3://b/c/15"}})
    waiting = progress.fold(ended, polled(0, phase="WaitingForWorkers"), NEW_POD)
    assert waiting.progress.step == 15 and waiting.lost_steps == 0
    resumed = progress.fold(waiting, polled(16, 15), NEW_POD)
    assert resumed.lost_steps == 0 and resumed.progress.step == 16


def test_exit_summary_makes_a_checkpoint_on_sigterm_cost_nothing():
    ended = progress.fold_summary(previous_attempt(13), {
        "result": "Preempted", "steps": 15, "checkpoint": {"step": 15, "uri": "s3://b/c/15"}})
    assert ended.progress.step == 15 and ended.last_checkpoint.step == 15
    assert progress.fold(ended, polled(15, 15), NEW_POD).lost_steps == 0


def test_garbage_from_the_trainer_is_ignored_not_fatal():
    status = progress.fold(FineTuneJobStatus(), {"phase": "Training", "step": "x",
                                                 "loss": float("nan"), "tokensPerSecond": -3,
                                                 "lastCheckpoint": {"step": 1, "uri": None}},
                           OLD_POD)
    assert status.progress.step == 0 and status.progress.loss is None
    assert status.progress.tokens_per_second is None and status.last_checkpoint is None
