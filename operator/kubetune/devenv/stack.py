"""The whole embedded environment in one object: S3, API server, kubelet, controllers, operator.

Used by the README's demo and the end-to-end tests so both exercise the same wiring a
cluster would: the operator runs as its own process (`python -m kubetune.operator`)
against the emulated API server through a kubeconfig, and users act through the real
kubectl binary. Everything listens on 127.0.0.1 and everything is stopped on exit.
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

from .admission import CrdAdmission, load_crds
from .apiserver import EmulatedApiServer
from .kubeapi import NAMESPACES, SECRETS, ApiError, KubeHttp
from .kubelet import NodeTemplate, TestKubelet
from .s3 import LoopbackS3
from .tools import tool_path

REPO = Path(__file__).resolve().parents[3]
SPOT_LABEL = "karpenter.sh/capacity-type"


def default_nodes() -> list[NodeTemplate]:
    """One spot and one on-demand node, labelled as Karpenter labels them."""
    return [
        NodeTemplate("spot-node-1", {SPOT_LABEL: "spot"}),
        NodeTemplate("ondemand-node-1", {SPOT_LABEL: "on-demand"}),
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
        self.s3 = self._exit.enter_context(LoopbackS3())
        self.s3.client().create_bucket(Bucket=self.bucket)
        crds = load_crds(REPO / "crds")
        self.apiserver = self._exit.enter_context(EmulatedApiServer(crds=crds, admission=CrdAdmission(crds)))
        self.api = KubeHttp(self.apiserver.url)
        self.kubeconfig = self.apiserver.write_kubeconfig(self.workdir / "kubeconfig", self.namespace)
        self._ensure_namespace()
        self.api.create(SECRETS, {
            "metadata": {"name": "s3-credentials"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in self.s3.env().items()
                     if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        }, self.namespace)
        pod_env = {
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.kubelet = self._exit.enter_context(
            TestKubelet(self.api, self.workdir / "kubelet", nodes=self.nodes, extra_env=pod_env)
        )
        self.controllers = self._start_controllers()
        self.config_path = self.workdir / "operator-config.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "spotProvider": "karpenter",
            "storage": {"defaultEndpoint": self.s3.endpoint},
        }))

    def _ensure_namespace(self) -> None:
        try:
            self.api.create(NAMESPACES, {"metadata": {"name": self.namespace}})
        except ApiError as exc:
            if exc.status != 409:
                raise

    def _start_controllers(self):
        try:
            from .controllers import DeploymentController
        except ImportError:
            return None
        return self._exit.enter_context(DeploymentController(self.api))

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
