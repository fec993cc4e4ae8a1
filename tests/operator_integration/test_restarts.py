"""The operator killed (SIGKILL) and restarted at random points of a real run: the job
still finishes, no pod is ever duplicated, and no restart is mistaken for a preemption."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from ftj_harness import finetunejob

from kubetune.devenv.kubeapi import FINETUNEJOBS

pytestmark = [pytest.mark.slow, pytest.mark.integration]
RESTARTS = int(os.environ.get("KUBETUNE_TEST_RESTARTS", "10"))


class Watcher:
    """Samples the pod list and the node agent's running processes every 50 ms."""

    def __init__(self, cluster, agent, job: str):
        self.cluster, self.agent, self.job = cluster, agent, job
        self.max_pods = 0
        self.max_running = 0
        self.uids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            pods = [p for p in self.cluster.pods()
                    if p["metadata"]["name"].startswith(self.job + "-")]
            self.max_pods = max(self.max_pods, len(pods))
            self.uids.update(p["metadata"]["uid"] for p in pods)
            running = [k for k in list(self.agent.running) if k[1].startswith(self.job + "-")]
            self.max_running = max(self.max_running, len(running))

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_operator_restarts_lose_nothing_and_duplicate_nothing(training_cluster,
                                                              tiny_model_path):
    cluster, agent = training_cluster
    seed = int(os.environ.get("KUBETUNE_TEST_SEED", time.time()))
    rng = random.Random(seed)
    print(f"restart seed {seed}")
    operator = cluster.operator().start()
    try:
        with Watcher(cluster, agent, "steady") as watcher:
            cluster.api.create(FINETUNEJOBS, finetunejob(
                "steady", tiny_model_path, cluster.s3.endpoint,
                **{"training.maxSteps": 150, "spot.checkpointIntervalSteps": 25}), cluster.namespace)
            restarts = 0
            # Most of a run is the trainer starting up; spread the kills over all of it.
            while restarts < RESTARTS:
                time.sleep(rng.uniform(0.2, 6.0))
                operator.restart()
                restarts += 1
                if cluster.status("steady").get("phase") in ("Succeeded", "Failed"):
                    break
            status = cluster.wait_phase("steady", {"Succeeded", "Failed"}, 300)
        print(f"{restarts} restarts, operator started {operator.starts} times")
        assert restarts == RESTARTS, f"the run ended after {restarts} restarts"
        assert status["phase"] == "Succeeded", status
        assert (status["recoveries"], status["errorRetries"], status["attempt"]) == (0, 0, 1)
        assert status["adapter"]["sha256"]
        # One head pod object ever existed, it was started once, and ran alone.
        assert watcher.max_pods == 1 and len(watcher.uids) == 1
        assert watcher.max_running == 1
        started = [p for p in agent.workdir.iterdir()
                   if p.name.startswith(f"{cluster.namespace}_steady-head_")]
        assert len(started) == 1
        assert [h["exitCode"] for h in agent.history if h["name"] == "steady-head"] == [0]
    finally:
        operator.stop()
