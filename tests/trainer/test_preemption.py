"""SIGTERM (the spot notice) at several points of one job, each followed by a restart.

In-process loop (`--no-ray`) in real processes, so the signal is a real SIGTERM to the
trainer's pid. One job is interrupted four times — during start-up, early in training,
mid-step, and while a checkpoint upload is in flight (held by a proxy in front of S3) —
and must end with the same step count and adapter as the uninterrupted baseline.
"""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy, Rule
from trainer_support import adapter_tensors, assert_identical_adapter, job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]
JOB = "preempted"


def assert_preempted_without_loss(code: int, summary: dict, budget: float) -> None:
    assert code == 75, summary
    assert summary["result"] == "Preempted"
    assert summary["secondsAfterSigterm"] < budget, summary
    if summary["steps"]:
        # lost steps = steps done - steps saved: SIGTERM must lose none
        assert summary["checkpoint"]["step"] == summary["steps"], summary


def assert_resumed_from(process, step: int) -> None:
    assert f"resumed from s3://kubetune-out/runs/team-a/{JOB}/checkpoints/step-{step:09d}" \
        in process.log_path.read_text()


def test_sigterm_at_four_points_then_same_adapter_as_uninterrupted(
        baseline, start_trainer, tiny_model, s3):
    _, reference = baseline
    body = job_spec(tiny_model, JOB)
    budget = body["spec"]["spot"]["checkpointBudgetSeconds"]

    # 1. during start-up: nothing trained, nothing to save, still "preempted"
    first = start_trainer(body, tag="startup")
    first.wait_for(lambda p: p["phase"] in ("Starting", "Loading"))
    first.sigterm()
    code, summary = first.wait()
    assert_preempted_without_loss(code, summary, budget)
    assert summary["steps"] == 0 and summary["checkpoint"] is None

    # 2. early in training, before the first periodic checkpoint
    second = start_trainer(body, tag="early")
    second.wait_for(lambda p: p["step"] >= 1)
    second.sigterm()
    code, summary = second.wait()
    assert_preempted_without_loss(code, summary, budget)
    early_step = summary["checkpoint"]["step"]
    assert 1 <= early_step < 8

    # 3. mid-step, past the periodic checkpoint at 8: the step in flight is finished
    third = start_trainer(body, tag="mid")
    progress = third.wait_for(lambda p: p["step"] >= 11)
    seen = progress["step"]
    assert {"phase", "step", "totalSteps", "epoch", "loss", "evalLoss", "tokensPerSecond",
            "etaSeconds", "lastCheckpoint", "updatedAt"} <= set(progress)
    assert progress["totalSteps"] == 24 and progress["tokensPerSecond"] > 0
    assert progress["lastCheckpoint"]["uri"].endswith("/checkpoints/step-000000008")
    third.sigterm()
    code, summary = third.wait()
    assert_resumed_from(third, early_step)
    assert_preempted_without_loss(code, summary, budget)
    mid_step = summary["checkpoint"]["step"]
    assert seen <= mid_step <= seen + 1 and mid_step < 16

    # 4. while the periodic checkpoint at step 16 is uploading (the proxy holds the PUT)
    proxy = FaultProxy(s3.endpoint).start()
    try:
        fourth = start_trainer(body, tag="upload", endpoint=proxy.endpoint)
        proxy.rules.append(Rule("PUT", f"/{JOB}/checkpoints/step-000000016/adapter_model",
                                "delay", delay=1.0, on_hit=fourth.sigterm))
        code, summary = fourth.wait()
    finally:
        proxy.stop()
    assert proxy.rules[0].hits == 1
    assert_resumed_from(fourth, mid_step)
    assert_preempted_without_loss(code, summary, budget)
    assert summary["checkpoint"]["step"] == 16

    # 5. the last restart completes: planned step count, adapter equal to the baseline
    last = start_trainer(body, tag="final")
    code, summary = last.wait()
    assert code == 0, last.log_tail()
    assert_resumed_from(last, 16)
    assert summary["steps"] == summary["totalSteps"] == 24
    assert_identical_adapter(adapter_tensors(s3.client(), JOB), reference)
