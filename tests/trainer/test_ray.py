"""The production path: the same loop under Ray Train's TorchTrainer (local Ray).

One job is preempted with SIGTERM to the driver (the workers learn of it through the
named JobControl actor), then restarted under Ray: it resumes, completes the planned
steps and yields the same adapter as the in-process baseline with the same seed.
Each Ray fit costs ~40 s of start-up here, so this is the only Ray test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from trainer_support import adapter_tensors, assert_same_adapter, job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def processes_using(path: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", path], capture_output=True, text=True)
    return out.stdout.split()


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A Ray temp dir of our own (short: Ray puts sockets in it), to find our processes."""
    path = tempfile.mkdtemp(prefix="ktt-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_qlora_under_torchtrainer_survives_sigterm_and_resumes(baseline, start_trainer,
                                                               tiny_model, s3, ray_tmpdir):
    body = job_spec(tiny_model, "on-ray")
    first = start_trainer(body, ray=True, tag="ray-first")
    seen = first.wait_for(lambda p: p["step"] >= 10, timeout=240)["step"]
    first.sigterm()
    code, summary = first.wait()
    assert code == 75, first.log_tail()
    assert summary["secondsAfterSigterm"] < body["spec"]["spot"]["checkpointBudgetSeconds"]
    saved = summary["checkpoint"]["step"]
    # lost steps 0: every step done was saved. The driver's signal handler runs only when
    # its main thread leaves Ray's C++ wait, so the stop may land a few steps after `seen`.
    assert summary["steps"] == saved and seen <= saved < 24

    second = start_trainer(body, ray=True, tag="ray-second")
    code, summary = second.wait()
    assert code == 0, second.log_tail()
    assert f"checkpoints/step-{saved:09d} (step {saved} of 24)" in second.log_path.read_text()
    assert summary["steps"] == 24
    assert_same_adapter(adapter_tensors(s3.client(), "on-ray"), baseline[1])
    assert processes_using(ray_tmpdir) == [], "the trainer left Ray processes behind"


def test_head_pod_starts_ray_head_and_waits_for_a_worker_pod(start_trainer, tiny_model, s3,
                                                             ray_tmpdir, monkeypatch, tmp_path):
    """The operator's multi-pod contract: the trainer in the head pod starts a Ray head on
    KUBETUNE_RAY_HEAD_PORT and waits for KUBETUNE_RAY_WORKER_PODS nodes to join; here the
    'worker pod' is a real `ray start --address=...` process on the same machine."""
    import os
    import secrets
    import sys

    from kubetune.devenv.s3 import free_port

    port = free_port()
    monkeypatch.setenv("KUBETUNE_RAY_HEAD_PORT", str(port))
    monkeypatch.setenv("KUBETUNE_RAY_WORKER_PODS", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the pods share a token (a Secret)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    body = job_spec(tiny_model, "two-pods", **{"resources.workers": 2, "training.maxSteps": 6,
                                               "training.batchSize": 4})
    head = start_trainer(body, ray=True, tag="head")
    head.wait_for(lambda p: p["phase"] == "WaitingForWorkers", timeout=120)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    with open(tmp_path / "worker-pod.log", "w") as log:
        worker = subprocess.Popen([ray_cli, "start", f"--address=127.0.0.1:{port}",
                                   "--num-cpus=1", "--block"], stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        code, summary = head.wait()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert code == 0, head.log_tail()
    assert "world_size=2" in head.log_path.read_text()
    assert summary["steps"] == 6 and summary["adapter"]["uri"].endswith("/two-pods/adapter")
    assert processes_using(ray_tmpdir) == [], "Ray processes left behind"
