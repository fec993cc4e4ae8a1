"""The production path: the same loop under Ray Train's TorchTrainer (local Ray).

One job is preempted with SIGTERM to the trainer (the workers learn of it through the
named JobControl actor), then restarted under Ray: it resumes, completes the planned
steps and yields the same adapter as the in-process baseline with the same seed; after
its run, GET /progress keeps answering at once and never starts Ray again. SIGTERM
before Ray has started and while the workers load the model ends the attempt at once.
No process of any of these trainers (Ray's included) outlives it. Each Ray start costs
~20-40 s here, so these are the only Ray tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from trainer_support import adapter_tensors, assert_same_adapter, job_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]
NOTHING_TO_SAVE_SECONDS = 5.0


def processes_using(path: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", path], capture_output=True, text=True)
    return out.stdout.split()


def ray_sessions(ray_tmpdir: str) -> list[str]:
    """One session directory per ray.init that started a cluster."""
    return sorted(p.name for p in Path(ray_tmpdir).rglob("session_2*") if p.is_dir())


class ProgressPoller:
    """GET /progress every 50 ms from a thread, timing each answer, until the trainer exits."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.answers: list[tuple[float, float, str]] = []  # (when, seconds, phase)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.trainer.status_port}/progress"
        while self.trainer.proc.poll() is None:
            began = time.time()
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    phase = json.loads(answer.read())["phase"]
                self.answers.append((began, time.time() - began, phase))
            except OSError:
                pass
            time.sleep(0.05)

    def join(self) -> None:
        self._thread.join(timeout=30)

    def first(self, phase: str) -> float:
        return min(when for when, _, seen in self.answers if seen == phase)

    def slowest(self) -> float:
        return max(seconds for _, seconds, _ in self.answers)


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
    budget = body["spec"]["spot"]["checkpointBudgetSeconds"]
    first = start_trainer(body, ray=True, tag="ray-first")
    seen = first.wait_for(lambda p: p["step"] >= 10, timeout=240)["step"]
    code, summary, seconds = first.stop()
    assert code == 75, first.log_tail()
    assert seconds < budget and summary["secondsAfterSigterm"] < budget, (seconds, summary)
    saved = summary["checkpoint"]["step"]
    # lost steps 0: every step done was saved; the stop travels trainer -> Ray driver ->
    # control actor -> rank 0, so it may land a few steps after `seen`.
    assert summary["steps"] == saved and seen <= saved < 24
    first.assert_nothing_left()

    second = start_trainer(body, ray=True, tag="ray-second")
    poller = ProgressPoller(second)
    code, summary = second.wait()
    exited = time.time()
    poller.join()
    assert code == 0, second.log_tail()
    assert f"checkpoints/step-{saved:09d} (step {saved} of 24)" in second.log_path.read_text()
    assert summary["steps"] == 24
    assert_same_adapter(adapter_tensors(s3.client(), "on-ray"), baseline[1])
    second.assert_nothing_left()
    assert processes_using(ray_tmpdir) == [], "the trainer left Ray processes behind"
    # after the run: /progress answers at once and Ray is not started again
    assert poller.slowest() < 1.0, poller.slowest()
    assert exited - poller.first("Succeeded") < 15, exited - poller.first("Succeeded")
    assert len(ray_sessions(ray_tmpdir)) == 2, ray_sessions(ray_tmpdir)


def test_sigterm_before_ray_starts_and_while_the_model_loads(start_trainer, tiny_model, s3,
                                                             ray_tmpdir):
    body = job_spec(tiny_model, "ray-startup")
    early = start_trainer(body, ray=True, tag="before-ray")
    early.wait_for(lambda p: p["phase"] == "Starting", timeout=60)
    code, summary, seconds = early.stop()
    assert code == 75, early.log_tail()
    assert summary["result"] == "Preempted" and summary["checkpoint"] is None
    assert seconds < NOTHING_TO_SAVE_SECONDS, (seconds, summary)
    early.assert_nothing_left()

    loading = start_trainer(body, ray=True, tag="ray-loading")
    loading.wait_for(lambda p: p["phase"] == "Loading", timeout=240)  # a Ray Train worker
    code, summary, seconds = loading.stop()
    assert code == 75, loading.log_tail()
    assert summary["stoppedIn"] == "Loading" and summary["checkpoint"] is None, summary
    assert seconds < NOTHING_TO_SAVE_SECONDS, (seconds, summary)
    loading.assert_nothing_left()
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
    head.assert_nothing_left()
    assert processes_using(ray_tmpdir) == [], "Ray processes left behind"
