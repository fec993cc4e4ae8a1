"""Shared fixtures: the tiny model, a moto S3 server, spec files and trainer processes.

Trainer runs are real processes (`python -m kubetune.workers.train`) talking real HTTP
to moto; the baseline run is trained once per session and reused by every test that
compares adapters against it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from trainer_support import (BUCKET, MARK_ENV, PYTHON, REPO, ProcessWatch, adapter_tensors,
                             job_spec, marked_processes)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from kubetune.devenv.tinymodel import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def family_bases() -> dict[str, Path]:
    """The tiny base of each model family (devenv.families), built once and cached."""
    from kubetune.devenv.families import FAMILIES, family_model_dir

    return {name: family_model_dir(name) for name in FAMILIES}


@pytest.fixture(scope="session")
def s3():
    from kubetune.devenv.s3 import LoopbackS3

    with LoopbackS3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@dataclass
class TrainerProcess:
    """A running trainer; `wait()` returns (exit code, termination summary)."""

    proc: subprocess.Popen
    status_port: int
    termination_log: Path
    log_path: Path
    mark: str = ""
    watch: ProcessWatch | None = field(default=None, repr=False)

    def progress(self) -> dict | None:
        try:
            url = f"http://127.0.0.1:{self.status_port}/progress"
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def wait_for(self, predicate, timeout: float = 120.0) -> dict:
        """Poll /progress until predicate(progress) holds; the process must still run."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            progress = self.progress()
            if progress is not None and predicate(progress):
                return progress
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.02)
        raise AssertionError(f"progress condition not reached in {timeout}s: {self.log_tail()}")

    def sigterm(self) -> float:
        self.proc.send_signal(signal.SIGTERM)
        return time.time()

    def wait(self, timeout: float = 240.0) -> tuple[int, dict]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"trainer did not exit in {timeout}s: {self.log_tail()}")
        summary = json.loads(self.termination_log.read_text())
        return code, summary

    def stop(self, timeout: float = 240.0) -> tuple[int, dict, float]:
        """SIGTERM, then (exit code, summary, seconds from the signal to the exit)."""
        signalled = self.sigterm()
        code, summary = self.wait(timeout)
        return code, summary, time.time() - signalled

    def assert_nothing_left(self) -> None:
        """No process the trainer started outlives it: none of its descendants seen while
        it ran, and no process carrying its environment mark (Ray's included); nor does
        its scratch folder (model downloads, snapshots) when it exited by itself."""
        assert self.proc.poll() is not None, "the trainer is still running"
        survivors = self.watch.survivors() if self.watch else []
        marked = marked_processes(self.mark)
        assert survivors == [] and marked == [], (survivors, marked, self.log_tail())
        if self.proc.returncode >= 0:
            scratch = list(Path(tempfile.gettempdir()).glob(f"kubetune-trainer-{self.proc.pid}-*"))
            assert scratch == [], scratch

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def start_trainer(tmp_path, s3):
    """Start `python -m kubetune.workers.train` on a spec; kills leftovers at teardown."""
    from kubetune.devenv.s3 import free_port

    started: list[TrainerProcess] = []

    def start(body: dict, *, ray: bool = False, endpoint: str | None = None,
              tag: str = "run", extra: tuple[str, ...] = ()) -> TrainerProcess:
        spec_path = tmp_path / f"{tag}-spec.json"
        spec_path.write_text(json.dumps(body))
        port = free_port()
        term = tmp_path / f"{tag}-termination.json"
        log_path = tmp_path / f"{tag}.log"
        mark = uuid.uuid4().hex
        env = {**os.environ, **s3.env(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "RAY_DISABLE_USAGE_STATS": "1", MARK_ENV: mark}
        if endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
        args = [PYTHON, "-m", "kubetune.workers.train", "--spec", str(spec_path),
                "--status-port", str(port), "--termination-log", str(term), *extra]
        if not ray:
            args.append("--no-ray")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        process = TrainerProcess(proc, port, term, log_path, mark, ProcessWatch(proc.pid))
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
        for pid in marked_processes(process.mark):  # a failed test must not leave Ray behind
            os.kill(pid, signal.SIGKILL)
        for scratch in Path(tempfile.gettempdir()).glob(f"kubetune-trainer-{process.proc.pid}-*"):
            shutil.rmtree(scratch, ignore_errors=True)  # a trainer killed outright leaves it


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, tiny_model, s3):
    """The uninterrupted reference run, trained once: (summary, adapter tensors)."""
    from kubetune.devenv.s3 import free_port

    workdir = tmp_path_factory.mktemp("baseline")
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(job_spec(tiny_model, "baseline")))
    term = workdir / "termination.json"
    env = {**os.environ, **s3.env(), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [PYTHON, "-m", "kubetune.workers.train", "--spec", str(spec_path), "--no-ray",
         "--status-port", str(free_port()), "--termination-log", str(term)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(term.read_text()), adapter_tensors(s3.client(), "baseline")
