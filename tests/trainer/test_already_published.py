"""A job whose adapter is already published (its last attempt finished while its pod was
being taken away) is not trained again: the next attempt reports that adapter at once.
Another job of the same name (a different uid) is never mistaken for it."""

from __future__ import annotations

import json
import time

from trainer_support import job_spec

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
