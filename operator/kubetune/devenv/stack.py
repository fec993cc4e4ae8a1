"""The whole embedded environment in one object: the real control plane, S3, node agents
and the operator, installed as users install it.

Used by the README's demo and the end-to-end tests so both exercise the wiring a cluster
has: etcd, kube-apiserver, controller manager and scheduler (`cluster`), a spot and an
on-demand Node run by the node agent, moto S3 on the pod network's host address, and
kubetune installed with `helm install` of helm/kubetune (its CRDs, RBAC and Deployment):
the operator runs as that Deployment's pod under the chart's ServiceAccount. Users act
through the real kubectl and helm binaries. Everything is stopped on exit.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

from . import vllmenv
from .cluster import Cluster
from .controlplane import ADMIN
from .kubeapi import PODS, SECRETS
from .nodeagent import NodeAgent, NodeTemplate
from .s3 import LoopbackS3
from .tools import tool_path

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "kubetune"
OPERATOR_NAMESPACE = "kubetune-system"
RELEASE = "kubetune"
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
                 timer_seconds: float = 2.0, nodes: list[NodeTemplate] | None = None,
                 image_environments: Mapping[str, Path] | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubetune-stack-"))
        self.namespace = namespace
        self.bucket = bucket
        self.timer_seconds = timer_seconds
        self.nodes = nodes if nodes is not None else default_nodes()
        # image prefix -> virtualenv: vLLM's images run from the vLLM virtualenv.
        self.image_environments = (vllmenv.image_environments() if image_environments is None
                                   else image_environments)
        self._exit = ExitStack()
        self.operator_installed = False

    def __enter__(self) -> EmbeddedStack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def _start(self) -> None:
        # No CRDs yet: `helm install` brings them, as on a new cluster.
        self.cluster = self._exit.enter_context(Cluster(self.workdir / "cluster", crds=[]))
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
            extra_env=POD_ENV, image_environments=self.image_environments))

    # the operator, installed with its chart ------------------------------------------
    def install_operator(self, timeout: float = 180) -> str:
        """`helm install --wait` of the chart into kubetune-system (Pod Security
        `restricted`), watching this stack's namespace; returns helm's output."""
        self.cluster.namespace(OPERATOR_NAMESPACE)
        values = {
            "logFormat": "plain",
            "config": {"spotProvider": "karpenter", "watchNamespaces": [self.namespace],
                       "storage": {"defaultEndpoint": self.s3.endpoint}},
            "extraEnv": [{"name": "KUBETUNE_RECONCILE_INTERVAL", "value": str(self.timer_seconds)}],
            # The operator stays off spot capacity, as a platform team would place it.
            "nodeSelector": {SPOT_LABEL: "on-demand"},
        }
        path = self.workdir / "values.yaml"
        path.write_text(json.dumps(values))
        started = time.monotonic()
        out = self.helm("install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
                        "--values", str(path), "--wait", f"--timeout={int(timeout)}s")
        self.operator_installed = True
        self.operator_install_seconds = time.monotonic() - started
        return out

    def operator_pod(self) -> dict | None:
        pods = self.api.list(PODS, OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name=kubetune")
        return pods[0] if pods else None

    def operator_log(self) -> str:
        """The operator pod's log, as `kubectl logs deployment/kubetune` shows it."""
        if not self.operator_installed:
            return ""
        return self.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"deployment/{RELEASE}", "--tail=200",
                            check=False)

    def helm(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([str(tool_path("helm")), "--kubeconfig", str(self.kubeconfig), *args],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    # users act through the real kubectl -------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout
