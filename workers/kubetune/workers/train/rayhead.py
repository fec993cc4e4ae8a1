"""The Ray head of a multi-pod job, started by the trainer in the head pod.

The operator runs the trainer in the head pod with KUBETUNE_RAY_HEAD_PORT (the GCS port
its Service exposes) and KUBETUNE_RAY_WORKER_PODS (how many worker pods will run
`ray start --address=<head>:<port>`). The trainer starts the head as its own child
process (`ray start --head --block`), so SIGTERM from the kubelet reaches only the
trainer (PID 1) and the Ray processes keep running while it saves a checkpoint; it stops
the head by pid when done.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time

from .errors import TrainerError

log = logging.getLogger("kubetune.train")
HEAD_PORT_ENV = "KUBETUNE_RAY_HEAD_PORT"
WORKER_PODS_ENV = "KUBETUNE_RAY_WORKER_PODS"
CONNECT_SECONDS = 60.0


def ray_command() -> list[str]:
    found = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if not found:
        raise TrainerError("the ray command is not installed in the trainer image")
    return [found]


class RayHead:
    """`ray start --head --block` as a child; `.address` is what ray.init joins."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [*ray_command(), "start", "--head", f"--port={port}", "--block",
             "--include-dashboard=false", "--disable-usage-stats"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def connect(self, ray) -> None:
        """ray.init against the head once it answers (it takes a few seconds to start)."""
        deadline = time.time() + CONNECT_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise TrainerError(f"ray head on port {self.port} exited {self.proc.returncode}")
            try:
                ray.init(address=self.address, namespace="kubetune", log_to_driver=True,
                         configure_logging=False)
                return
            except (ConnectionError, RuntimeError) as exc:
                if time.time() > deadline:
                    raise TrainerError(f"ray head on port {self.port}: {exc}") from exc
                time.sleep(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the head quickly: this runs inside the pod's grace period after SIGTERM,
        after the checkpoint is saved, and must leave time to exit with code 75."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_nodes(ray, expected: int, stopped, timeout: float) -> bool:
    """Wait until `expected` Ray nodes are alive; False if `stopped()` came true first."""
    deadline = time.time() + timeout
    while True:
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        if alive >= expected:
            return True
        if stopped():
            return False
        if time.time() > deadline:
            raise TrainerError(
                f"only {alive} of {expected} Ray nodes joined within {int(timeout)}s "
                f"(worker pods run `ray start --address=<head>:<port>`)"
            )
        time.sleep(1.0)
