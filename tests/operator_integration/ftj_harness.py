"""The pieces of a cluster for the operator tests: a namespace of the real control plane,
the operator as a `python -m kubetune.operator` subprocess (logged in through a
kubeconfig), a small FineTuneJob on the tiny model, and polling helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import polling

from kubetune.devenv.kubeapi import FINETUNEJOBS, PODS, ApiError, KubeHttp

REPO = Path(__file__).resolve().parents[2]
BUCKET = "ftj-out"
SPOT = {"karpenter.sh/capacity-type": "spot"}
ON_DEMAND = {"karpenter.sh/capacity-type": "on-demand"}
INTERVAL = "2"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """tests/polling.py's poller, with the timeout first as these tests pass it."""
    return polling.wait_for(predicate, what, timeout=timeout, interval=interval)


def finetunejob(name: str, model: Path | str, endpoint: str, **overrides) -> dict:
    """A small QLoRA run on the tiny model: 12 steps, checkpoint every 4, spot."""
    spec = {
        "baseModel": {"uri": f"file://{model}"},
        "dataset": {"uri": f"file://{REPO}/examples/data/tiny-alpaca.jsonl",
                    "format": "alpaca", "evalFraction": 0.1},
        "method": {"type": "qlora", "lora": {"rank": 4, "alpha": 8}},
        "training": {"maxSteps": 12, "learningRate": 3e-3, "batchSize": 4,
                     "maxSeqLength": 64, "seed": 7},
        "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"},
        "spot": {"enabled": True, "checkpointIntervalSteps": 4, "checkpointBudgetSeconds": 20,
                 "strategy": "StayOnSpot", "backoff": {"initialSeconds": 1, "maxSeconds": 2}},
        "retries": {"maxErrorRetries": 1, "backoff": {"initialSeconds": 1, "maxSeconds": 2}},
        "output": {"uri": f"s3://{BUCKET}/runs", "endpoint": endpoint, "region": "us-east-1",
                   "credentials": {"secretRef": {"name": "s3-creds"}}},
    }
    for path, value in overrides.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name}, "spec": spec}


@dataclass
class OperatorProcess:
    """The operator as its own process; `restart()` kills it hard and starts it again."""

    kubeconfig: Path
    workdir: Path
    namespace: str
    env: dict
    proc: subprocess.Popen | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = self.workdir / f"operator-{self.starts}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetune.operator", "--standalone",
                 f"--namespace={self.namespace}", "--log-format=plain", "--verbose"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs)


@dataclass
class Cluster:
    """One test's view: its namespace, an admin client and kubeconfig defaulting to it."""

    api: KubeHttp
    kubeconfig: Path
    workdir: Path
    namespace: str
    control_plane: object = None  # the ControlPlane (audit log, kubeconfigs)
    s3: object = None  # the LoopbackS3, when the test has one

    def create(self, body: dict) -> dict:
        return self.api.create(FINETUNEJOBS, body, self.namespace)

    def job(self, name: str) -> dict | None:
        return self.api.get(FINETUNEJOBS, name, self.namespace)

    def status(self, name: str) -> dict:
        return (self.job(name) or {}).get("status") or {}

    def pods(self) -> list[dict]:
        return self.api.list(PODS, self.namespace)

    def events(self, name: str) -> list[dict]:
        items = self.api.request("GET", f"/api/v1/namespaces/{self.namespace}/events").get("items", [])
        return [e for e in items if e["involvedObject"].get("name") == name]

    def wait_phase(self, name: str, phases: set[str], timeout: float) -> dict:
        return wait_for(lambda: (s := self.status(name)).get("phase") in phases and s,
                        timeout, f"{name} to reach {phases}")

    def operator(self, extra_env: dict | None = None) -> OperatorProcess:
        config = self.workdir / "operator-config.yaml"
        config.write_text("spotProvider: karpenter\ntrainerStatusPort: 18080\n")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBETUNE_CONFIG": str(config),
               "KUBETUNE_RECONCILE_INTERVAL": INTERVAL, "PYTHONUNBUFFERED": "1",
               **(extra_env or {})}
        return OperatorProcess(self.kubeconfig, self.workdir, self.namespace, env)




def create_until_accepted(cluster: Cluster, body: dict, timeout: float = 15) -> dict:
    """The API server serves a changed CRD schema within moments, not at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cluster.create(body)
        except ApiError as exc:
            if exc.status != 422 or time.monotonic() > deadline:
                raise
            time.sleep(0.3)
