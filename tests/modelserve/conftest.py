"""The ModelServe tests run on the real control plane (session `kube_cluster`), each in a
namespace of its own (`kube_namespace`, Pod Security `restricted`): the real
kube-controller-manager turns the operator's Deployment into a ReplicaSet and pods, the
real scheduler binds them, and the node agent runs them as local processes.

Fixtures here: `kubeconfig` (what the operator's clients read), `operator` (Kopf running
`modelserve.handlers` in a thread, watching the test's namespace only) and `serve_node`
(one on-demand node whose pods get the environment the tiny model needs offline).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from kubetune.devenv.nodeagent import NodeTemplate

ON_DEMAND_NODE = NodeTemplate("node-1", labels={"karpenter.sh/capacity-type": "on-demand"})
# One thread per pod keeps two CPU cores usable; no model hub is reachable from here.
POD_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def kubeconfig(kube_cluster, monkeypatch):
    """$KUBECONFIG for the operator's own clients (`kube.Kube`, Kopf's login): the
    cluster's admin, as the operator under test runs with its own credentials."""
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    return kube_cluster.kubeconfig


def operator_registry(resync_seconds: float):
    """The registry `kopf run` would build, with the ModelServe handlers only (no
    FineTuneJob reconciler: the tests write FineTuneJob status themselves)."""
    import kopf
    from kubetune.operator.config import OperatorConfig
    from kubetune.operator.kube import Kube
    from kubetune.operator.modelserve.handlers import register
    from kubetune.operator.modelserve.service import ServeService

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_) -> None:
        settings.scanning.disabled = True
        settings.persistence.finalizer = "kubetune.dev/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="kubetune.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kubetune.dev", key="last-handled-configuration")
        settings.watching.server_timeout = 10
        settings.posting.level = 20

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)

    register(registry, lambda: ServeService(Kube(), OperatorConfig()), resync_seconds)
    return registry


@pytest.fixture
def operator(kubeconfig, kube_namespace, request):
    """Kopf in a thread, as `kopf run --namespace` would run it; stopped (and joined)
    before the namespace goes. The resync timer ticks every second unless the test
    parametrizes another interval."""
    import kopf

    resync = getattr(request, "param", 1.0)
    stop_flag, ready_flag = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=operator_registry(resync), namespaces=[kube_namespace], standalone=True,
        stop_flag=stop_flag, ready_flag=ready_flag)), daemon=True)
    thread.start()
    assert ready_flag.wait(30), "kopf did not start"
    yield
    stop_flag.set()
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def serve_node(node_agent):
    """One on-demand node (what the ModelServe's default placement selects)."""
    return node_agent([ON_DEMAND_NODE], extra_env=POD_ENV)
