"""SIGTERM (the spot notice) at every kind of moment of one job, each followed by a restart.

In-process loop (`--no-ray`) in real processes, so the signal is a real SIGTERM to the
trainer's pid. One job is interrupted six times — right after start-up (before the spec's
model is touched), while the model loads, early in training, mid-training, and while a
checkpoint upload is held in flight by a proxy in front of S3 — and must end with the
same step count and a bitwise identical adapter as the uninterrupted baseline. Every
interrupted attempt exits 75 with a summary within the checkpoint budget, loses no step
it could save, and leaves no process behind.
"""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy, Rule
from trainer_support import BUCKET, adapter_tensors, assert_identical_adapter, job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]
JOB = "preempted"
NOTHING_TO_SAVE_SECONDS = 5.0  # a stop before training has nothing to wait for


def assert_preempted_without_loss(process, code: int, summary: dict, seconds: float,
                                  budget: float) -> None:
    assert code == 75, process.log_tail()
    assert summary["result"] == "Preempted" and "budgetExceeded" not in summary, summary
    assert seconds < budget and summary["secondsAfterSigterm"] < budget, (seconds, summary)
    if summary["steps"]:
        # lost steps = steps done - steps saved: SIGTERM must lose none
        assert summary["checkpoint"]["step"] == summary["steps"], summary
    process.assert_nothing_left()


def assert_stopped_before_training(process, code: int, summary: dict, seconds: float) -> None:
    assert code == 75, process.log_tail()
    assert summary["result"] == "Preempted" and summary["wroteCheckpoint"] is False
    assert summary["steps"] is None and summary["checkpoint"] is None, summary
    assert seconds < NOTHING_TO_SAVE_SECONDS, (seconds, summary)
    process.assert_nothing_left()


def assert_resumed_from(process, step: int) -> None:
    assert f"resumed from s3://kubetune-out/runs/team-a/{JOB}/checkpoints/step-{step:09d}" \
        in process.log_path.read_text()


def test_sigterm_at_any_moment_then_same_adapter_as_uninterrupted(
        baseline, start_trainer, tiny_model, s3):
    _, reference = baseline
    body = job_spec(tiny_model, JOB)
    budget = body["spec"]["spot"]["checkpointBudgetSeconds"]

    # 1. as soon as /progress answers: before the spec's model or data are read
    first = start_trainer(body, tag="starting")
    first.wait_for(lambda p: p["phase"] == "Starting", timeout=60)
    code, summary, seconds = first.stop()
    assert_stopped_before_training(first, code, summary, seconds)
    assert summary["stoppedIn"] in ("Starting", "Loading")

    # 2. while the model loads: the attempt is abandoned at once, nothing to save
    second = start_trainer(body, tag="loading")
    second.wait_for(lambda p: p["phase"] == "Loading")
    code, summary, seconds = second.stop()
    assert_stopped_before_training(second, code, summary, seconds)
    assert summary["stoppedIn"] == "Loading"

    # 3. early in training, before the first periodic checkpoint
    third = start_trainer(body, tag="early")
    third.wait_for(lambda p: p["step"] >= 1)
    code, summary, seconds = third.stop()
    assert_preempted_without_loss(third, code, summary, seconds, budget)
    early_step = summary["checkpoint"]["step"]
    assert 1 <= early_step < 8

    # 4. mid-step, past the periodic checkpoint at 8: the step in flight is finished
    fourth = start_trainer(body, tag="mid")
    progress = fourth.wait_for(lambda p: p["step"] >= 11)
    seen = progress["step"]
    assert {"phase", "step", "totalSteps", "epoch", "loss", "evalLoss", "tokensPerSecond",
            "etaSeconds", "lastCheckpoint", "updatedAt"} <= set(progress)
    assert progress["totalSteps"] == 24 and progress["tokensPerSecond"] > 0
    assert progress["lastCheckpoint"]["uri"].endswith("/checkpoints/step-000000008")
    code, summary, seconds = fourth.stop()
    assert_resumed_from(fourth, early_step)
    assert_preempted_without_loss(fourth, code, summary, seconds, budget)
    mid_step = summary["checkpoint"]["step"]
    assert seen <= mid_step <= seen + 2 and mid_step < 16

    # 5. while the background upload of step 16 is held by the proxy: the trainer
    #    finishes its step, snapshots, waits for the upload in flight, then uploads its own
    proxy = FaultProxy(s3.endpoint).start()
    try:
        fifth = start_trainer(body, tag="upload", endpoint=proxy.endpoint)
        held = Rule("PUT", f"/{JOB}/checkpoints/step-000000016/adapter_model", "hold",
                    on_hit=fifth.sigterm)
        proxy.rules.append(held)
        assert held.hit.wait(120), fifth.log_tail()
        fifth.wait_for(lambda p: p["phase"] == "Checkpointing")
        assert fifth.proc.poll() is None  # waiting for the held upload, not gone without it
        held.release.set()
        code, summary = fifth.wait()
        seconds = summary["secondsAfterSigterm"]
    finally:
        held.release.set()
        proxy.stop()
    assert held.hits == 1
    assert_resumed_from(fifth, mid_step)
    assert_preempted_without_loss(fifth, code, summary, seconds, budget)
    stopped_at = summary["checkpoint"]["step"]
    assert 16 < stopped_at < 24, summary
    keys = {o["Key"] for o in s3.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"runs/team-a/{JOB}/checkpoints/")["Contents"]}
    assert f"runs/team-a/{JOB}/checkpoints/step-000000016/manifest.json" in keys

    # 6. the last restart completes: planned step count, adapter equal to the baseline
    last = start_trainer(body, tag="final")
    code, summary = last.wait()
    assert code == 0, last.log_tail()
    assert_resumed_from(last, stopped_at)
    assert summary["steps"] == summary["totalSteps"] == 24
    assert_identical_adapter(adapter_tensors(s3.client(), JOB), reference)
    last.assert_nothing_left()
