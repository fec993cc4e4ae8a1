"""S3 faults during checkpoint and adapter uploads, injected by a real HTTP proxy in
front of moto: transient ones are retried and the run completes with the baseline's
adapter; a persistent one fails clearly and leaves no manifest behind."""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy, Rule
from trainer_support import BUCKET, adapter_tensors, assert_same_adapter, job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def proxy(s3):
    server = FaultProxy(s3.endpoint).start()
    yield server
    server.stop()


def test_transient_faults_are_retried_and_the_run_completes(baseline, start_trainer, tiny_model,
                                                            s3, proxy):
    job = "flaky-s3"
    proxy.rules += [
        Rule("PUT", f"/{job}/checkpoints/step-000000008/optimizer.safetensors", "503", times=2),
        Rule("PUT", f"/{job}/checkpoints/step-000000016/manifest.json", "reset", times=1),
        Rule("PUT", f"/{job}/adapter/adapter_model.safetensors", "reset", times=2),
        Rule("PUT", f"/{job}/adapter/manifest.json", "503", times=1),
    ]
    code, summary = start_trainer(job_spec(tiny_model, job), endpoint=proxy.endpoint).wait()
    assert code == 0, summary
    assert [r.hits for r in proxy.rules] == [2, 1, 2, 1]
    assert summary["steps"] == 24
    assert_same_adapter(adapter_tensors(s3.client(), job), baseline[1])


def test_persistent_adapter_upload_failure_is_clear_and_leaves_no_manifest(
        start_trainer, tiny_model, s3, proxy):
    job = "broken-s3"
    proxy.rules.append(Rule("PUT", f"/{job}/adapter/adapter_model.safetensors", "503", times=-1))
    body = job_spec(tiny_model, job, **{"training.maxSteps": 4})
    code, summary = start_trainer(body, endpoint=proxy.endpoint).wait()
    assert code not in (0, 75)
    assert summary["result"] == "Failed"
    assert "adapter_model.safetensors" in summary["message"]
    assert f"s3://{BUCKET}/runs/team-a/{job}/adapter" in summary["message"]
    assert "SlowDown" in summary["message"]
    keys = [o["Key"] for o in s3.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"runs/team-a/{job}/adapter/").get("Contents", [])]
    assert not [k for k in keys if k.endswith("manifest.json")], keys
    assert proxy.rules[0].hits >= 5  # every one of the 5 attempts was refused


def test_checkpoint_upload_failure_never_publishes_that_checkpoint(
        start_trainer, tiny_model, s3, proxy):
    job = "broken-ckpt"
    proxy.rules.append(Rule("PUT", f"/{job}/checkpoints/step-000000004/rng", "reset", times=-1))
    body = job_spec(tiny_model, job, **{"training.maxSteps": 8, "spot.checkpointIntervalSteps": 4})
    code, summary = start_trainer(body, endpoint=proxy.endpoint).wait()
    assert code not in (0, 75)
    assert "checkpoints/step-000000004/rng" in summary["message"]
    keys = [o["Key"] for o in s3.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"runs/team-a/{job}/").get("Contents", [])]
    assert keys and not [k for k in keys if k.endswith("manifest.json")], keys
