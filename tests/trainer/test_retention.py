"""Retention never deletes the checkpoint a resume needs.

The scenario that lost a run: the two newest checkpoints are corrupt, so the next
attempt skips them and starts over; the checkpoints it then writes are good but lower
numbered, and pruning "the newest two with a manifest" deleted them, so the attempt after
that started from zero again. Here each attempt keeps what it verified or uploaded, the
third attempt resumes from the second one's checkpoint, and the adapter is bitwise the
uninterrupted run's.
"""

from __future__ import annotations

import pytest
from trainer_support import BUCKET, adapter_tensors, assert_identical_adapter, job_spec

from kubetune.workers.objectstore import make_client
from kubetune.workers.train import storage
from kubetune.workers.train.retention import checkpoints_to_delete

JOB = "corrupt-newest"


@pytest.mark.parametrize("existing, known_good, keep, doomed", [
    ([8, 16, 24], [16, 24], 2, [8]),  # the usual case: keep the two newest
    ([8, 16], [16], 2, []),  # only one known good yet: delete nothing
    ([10, 16, 17, 19], [10, 19], 2, []),  # corrupt 16, 17 skipped: keep 10 and 19
    ([4, 8, 10, 16, 17], [8, 10], 2, [4]),  # unknown 16, 17 above the kept ones: left alone
    ([3, 10, 16, 17, 19, 27], [10, 19, 27], 2, [3, 10, 16, 17]),  # two good newer: all go
    ([4, 8, 12], [8], 1, [4]),  # keep 1: older than the resumed one goes
    ([4, 8], [], 2, []),  # nothing verified (a fresh start): delete nothing
    ([4, 8], [4, 8], 0, []),  # keep 0 is not "delete everything"
])
def test_only_checkpoints_older_than_the_kept_good_ones_are_deleted(existing, known_good,
                                                                     keep, doomed):
    assert checkpoints_to_delete(existing, known_good, keep) == doomed


def checkpoint_steps(s3) -> list[int]:
    location = storage.JobLocation(f"s3://{BUCKET}/runs", "team-a", JOB)
    return storage.checkpoint_steps(make_client(s3.endpoint), location)


def corrupt(s3, step: int) -> None:
    key = f"runs/team-a/{JOB}/checkpoints/step-{step:09d}/adapter_model.safetensors"
    client = s3.client()
    size = len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    client.put_object(Bucket=BUCKET, Key=key, Body=b"\0" * size)  # same size, wrong bytes


@pytest.mark.slow
@pytest.mark.integration
def test_corrupt_newest_checkpoints_never_cost_the_good_ones(baseline, start_trainer,
                                                              tiny_model, s3):
    body = job_spec(tiny_model, JOB)

    first = start_trainer(body, tag="first")
    first.wait_for(lambda p: p["step"] >= 17)
    code, summary, _ = first.stop()
    assert code == 75, first.log_tail()
    newest = summary["checkpoint"]["step"]
    assert checkpoint_steps(s3) == [newest, 16]  # 8 pruned: two known good are newer
    corrupt(s3, newest)
    corrupt(s3, 16)

    second = start_trainer(body, tag="second")
    second.wait_for(lambda p: p["step"] >= 10)
    code, summary, _ = second.stop()
    assert code == 75, second.log_tail()
    log = second.log_path.read_text()
    assert f"skipping checkpoint s3://{BUCKET}/runs/team-a/{JOB}/checkpoints/step-{newest:09d}" in log
    assert "resumed from" not in log  # both corrupt, nothing older: a fresh start
    saved = summary["checkpoint"]["step"]
    assert 10 <= saved < 16 and summary["steps"] == saved
    # what this attempt wrote is kept; the corrupt ones it knows nothing good about stay
    assert checkpoint_steps(s3) == [newest, 16, saved, 8]

    third = start_trainer(body, tag="third")
    code, summary = third.wait()
    assert code == 0, third.log_tail()
    assert f"checkpoints/step-{saved:09d} (step {saved} of 24)" in third.log_path.read_text()
    assert summary["steps"] == 24
    assert_identical_adapter(adapter_tensors(s3.client(), JOB), baseline[1])
    # the corrupt 16 was replaced by this attempt's own step 16
    assert 16 in checkpoint_steps(s3)
