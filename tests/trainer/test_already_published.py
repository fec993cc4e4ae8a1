"""A job whose adapter is already published (its last attempt finished while its pod was
being taken away) is not trained again: the next attempt reports that adapter at once.
Another job of the same name (a different uid, or without uids a different spec) is never
mistaken for it. The race: a trainer stopped right after its adapter's manifest landed,
before it heard back from S3 — by SIGTERM (it finishes: exit 0) or SIGKILL (it never
knew) — and a spec file without a uid, as a user writes by hand."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from faultproxy import FaultProxy, Rule
from trainer_support import BUCKET, job_spec

from kubetune.workers.train.jobfile import load_job
from kubetune.workers.train.published import finished_adapter


def test_a_finished_job_is_not_trained_again(baseline, tiny_model, start_trainer, s3,
                                             tmp_path, monkeypatch):
    first_summary, _ = baseline
    started = time.monotonic()
    again = start_trainer(job_spec(tiny_model, "baseline"), tag="again")
    code, summary = again.wait(timeout=120)
    assert code == 0 and summary["result"] == "Succeeded" and summary["alreadyPublished"]
    assert summary["adapter"] == first_summary["adapter"]
    assert summary["steps"] == first_summary["steps"] == 24
    assert time.monotonic() - started < 30  # no model was loaded, nothing trained

    body = job_spec(tiny_model, "baseline")
    body["metadata"]["uid"] = "u-another-job-of-the-same-name"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(body))
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    assert finished_adapter(load_job(path)) is None


def stored_manifest_sha(s3, job: str) -> str:
    from kubetune.workers.manifest import sha256_bytes

    return sha256_bytes(s3.client().get_object(
        Bucket=BUCKET, Key=f"runs/team-a/{job}/adapter/manifest.json")["Body"].read())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopped_right_after_publishing_then_the_next_attempt_notices(
        signum, start_trainer, tiny_model, s3, tmp_path, monkeypatch):
    job = f"published-{signum.name.lower()}"
    body = job_spec(tiny_model, job, **{"training.maxSteps": 4, "spot.checkpointIntervalSteps": 2})
    del body["metadata"]["uid"]  # a spec file written by hand
    proxy = FaultProxy(s3.endpoint).start()
    try:
        first = start_trainer(body, endpoint=proxy.endpoint, tag="first")
        proxy.rules.append(Rule("PUT", f"/{job}/adapter/manifest.json", "after",
                                after=lambda: os.kill(first.proc.pid, signum)))
        code = first.proc.wait(timeout=240)
    finally:
        proxy.stop()
    assert proxy.rules[0].hits == 1, first.log_tail()
    if signum == signal.SIGTERM:  # the adapter is published: that is a success
        code, summary = first.wait()
        assert code == 0 and summary["result"] == "Succeeded", first.log_tail()
        assert summary["adapter"]["sha256"] == stored_manifest_sha(s3, job)
    else:
        assert code == -signal.SIGKILL
    first.assert_nothing_left()

    started = time.monotonic()
    again = start_trainer(body, tag="again")
    code, summary = again.wait(timeout=120)
    assert code == 0 and summary["alreadyPublished"], again.log_tail()
    assert summary["adapter"]["sha256"] == stored_manifest_sha(s3, job)
    assert summary["steps"] == 4
    assert "resumed from" not in again.log_path.read_text()  # not re-run from a checkpoint
    assert time.monotonic() - started < 30

    other = dict(body, spec={**body["spec"], "training": {**body["spec"]["training"],
                                                          "learningRate": 1e-3}})
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    assert finished_adapter(load_job(path)) is None  # same name, another spec: not this job
