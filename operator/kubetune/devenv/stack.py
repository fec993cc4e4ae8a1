"""The whole embedded environment in one object: the real control plane, S3, node agents
and the operator.

Used by the README's demo and the end-to-end tests so both exercise the wiring a cluster
has: etcd, kube-apiserver, controller manager and scheduler (`cluster`), a spot and an
on-demand Node run by the node agent, moto S3 on the pod network's host address, the
operator as its own process (`python -m kubetune.operator`) through a kubeconfig, and
users acting through the real kubectl binary. Everything is stopped on exit.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import yaml

from .cluster import Cluster
from .controlplane import ADMIN
from .kubeapi import SECRETS
from .nodeagent import NodeAgent, NodeTemplate
from .s3 import LoopbackS3
from .tools import tool_path

REPO = Path(__file__).resolve().parents[3]
SPOT_LABEL = "karpenter.sh/capacity-type"
POD_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def default_nodes() -> list[NodeTemplate]:
    """One spot and one on-demand node, labelled as Karpenter labels them."""
    return [
        NodeTemplate("spot-node-1", {SPOT_LABEL: "spot", "node.kubernetes.io/instance-type": "g5.xlarge"}),
        NodeTemplate("ondemand-node-1", {SPOT_LABEL: "on-demand",
                                         "node.kubernetes.io/instance-type": "g5.xlarge"}),
    ]


class EmbeddedStack:
    """Start with `with EmbeddedStack() as stack:`; attributes hold each part."""

    def __init__(self, workdir: Path | None = None, namespace: str = "default", bucket: str = "kubetune",
                 timer_seconds: float = 2.0, nodes: list[NodeTemplate] | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubetune-stack-"))
        self.namespace = namespace
        self.bucket = bucket
        self.timer_seconds = timer_seconds
        self.nodes = nodes if nodes is not None else default_nodes()
        self._exit = ExitStack()
        self.operator: subprocess.Popen | None = None

    def __enter__(self) -> EmbeddedStack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop_operator()
        self._exit.close()

    def _start(self) -> None:
        self.cluster = self._exit.enter_context(Cluster(self.workdir / "cluster"))
        self.api = self.cluster.api
        self.kubeconfig = self.cluster.control_plane.kubeconfig(ADMIN, self.namespace)
        self.s3 = self._exit.enter_context(LoopbackS3(host=self.cluster.network.gateway))
        self.s3.client().create_bucket(Bucket=self.bucket)
        self.cluster.namespace(self.namespace)
        self.api.create(SECRETS, {
            "metadata": {"name": "s3-credentials"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in self.s3.env().items()
                     if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        }, self.namespace)
        self.agent = self._exit.enter_context(NodeAgent(
            self.cluster.control_plane, self.cluster.network, self.workdir / "nodes", self.nodes,
            extra_env=POD_ENV))
        self.config_path = self.workdir / "operator-config.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "spotProvider": "karpenter",
            "storage": {"defaultEndpoint": self.s3.endpoint},
        }))

    # the operator, as its own process ---------------------------------------------------
    def start_operator(self) -> subprocess.Popen:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBETUNE_CONFIG": str(self.config_path),
            "KUBETUNE_RECONCILE_INTERVAL": str(self.timer_seconds),
            "PYTHONUNBUFFERED": "1",
        }
        log = open(self.workdir / "operator.log", "ab")
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "kubetune.operator", "--standalone", f"--namespace={self.namespace}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self.operator

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.operator.pid, signal.SIGKILL)
                self.operator.wait(timeout=5)
        self.operator = None

    def operator_log(self) -> str:
        path = self.workdir / "operator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # users act through the real kubectl -------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout
