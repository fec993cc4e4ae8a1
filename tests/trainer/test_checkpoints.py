"""Checkpoints off the training path, and the checkpoint budget the trainer enforces.

A proxy in front of S3 holds a checkpoint's upload: training goes on meanwhile (the
loop waited only for the snapshot), the checkpoint is not reported as saved before its
manifest is written, and the next checkpoint waits for it (one upload at a time, in
step order). When an upload cannot finish within checkpointBudgetSeconds of a SIGTERM,
the trainer still exits 75 within the budget, naming the newest checkpoint that is in
storage.
"""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy, Rule
from trainer_support import job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def proxy(s3):
    server = FaultProxy(s3.endpoint).start()
    yield server
    for rule in server.rules:
        rule.release.set()
    server.stop()


def puts(proxy, part: str) -> list[str]:
    return [path for method, path, _ in proxy.log if method == "PUT" and part in path]


def test_training_goes_on_while_a_checkpoint_uploads_one_at_a_time(start_trainer, tiny_model,
                                                                   proxy):
    job = "background-upload"
    body = job_spec(tiny_model, job, **{"training.maxSteps": 12,
                                        "spot.checkpointIntervalSteps": 4})
    trainer = start_trainer(body, endpoint=proxy.endpoint)
    held = Rule("PUT", f"/{job}/checkpoints/step-000000004/adapter_model", "hold")
    proxy.rules.append(held)
    assert held.hit.wait(120), trainer.log_tail()
    progress = trainer.wait_for(lambda p: p["step"] >= 6)  # trained on past the snapshot
    assert progress["lastCheckpoint"] is None  # not saved until its manifest is written
    trainer.wait_for(lambda p: p["step"] >= 8)  # the next checkpoint is due
    assert puts(proxy, "/checkpoints/step-000000008/") == []  # and waits for the one in flight
    held.release.set()
    code, summary = trainer.wait()
    assert code == 0, trainer.log_tail()
    assert summary["steps"] == 12
    order = [path for path in puts(proxy, "/checkpoints/")]
    last_of_4 = max(i for i, p in enumerate(order) if "step-000000004" in p)
    first_of_8 = min(i for i, p in enumerate(order) if "step-000000008" in p)
    assert order[last_of_4].endswith("step-000000004/manifest.json")  # manifest last
    assert last_of_4 < first_of_8
    assert summary["checkpointUploadSeconds"] > 0 and summary["checkpointSeconds"] > 0
    trainer.assert_nothing_left()


def test_sigterm_exits_75_within_the_budget_even_if_the_upload_cannot_finish(
        start_trainer, tiny_model, proxy):
    job = "budget-spent"
    budget = 6
    body = job_spec(tiny_model, job, **{"spot.checkpointBudgetSeconds": budget})
    held = Rule("PUT", f"/{job}/checkpoints/", "hold", times=-1)
    proxy.rules.append(held)
    trainer = start_trainer(body, endpoint=proxy.endpoint)
    trainer.wait_for(lambda p: p["step"] >= 2)
    code, summary, seconds = trainer.stop()
    assert held.hits >= 1  # the stop's checkpoint was being uploaded when time ran out
    assert code == 75, trainer.log_tail()
    assert seconds < budget, (seconds, summary)
    assert summary["result"] == "Preempted" and summary["budgetExceeded"] is True
    assert summary["checkpoint"] is None and summary["steps"] >= 2  # those steps are lost
    assert f"checkpointBudgetSeconds ({budget}s)" in summary["message"]
    trainer.assert_nothing_left()
