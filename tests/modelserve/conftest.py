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
import logging
import threading

import pytest
from kubetune.devenv.controlplane import Identity
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.vllmenv import image_environments
from modelserve_support import ADAPTER_URI, BASE_URI, BUCKET, make_adapter, upload_dir

ON_DEMAND_NODE = NodeTemplate("node-1", labels={"karpenter.sh/capacity-type": "on-demand"})
# One thread per pod keeps two CPU cores usable; no model hub is reachable from here.
POD_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
# Kopf makes one logger per activity when it first runs one (kopf/_core/engines/activities.py).
KOPF_ACTIVITIES = ("startup", "authentication", "probe", "cleanup")
OPERATOR = Identity("kubetune-modelserve-operator", ("system:masters",))


@pytest.fixture
def kubeconfig(kube_cluster, kube_namespace, monkeypatch):
    """$KUBECONFIG for the operator's own clients (`kube.Kube`, Kopf's login), defaulting
    to the test's namespace. A user of its own: `kubeconfig(ADMIN, ...)` would rewrite
    the session's shared admin kubeconfig file (one file per identity)."""
    path = kube_cluster.control_plane.kubeconfig(OPERATOR, kube_namespace)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def operator_registry(service, resync_seconds: float):
    """The registry `kopf run` would build, with the ModelServe handlers only (no
    FineTuneJob reconciler: the tests write FineTuneJob status themselves)."""
    import kopf
    from kubetune.operator.modelserve.handlers import register

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

    register(registry, lambda: service, resync_seconds)
    return registry


@pytest.fixture
def operator(kubeconfig, kube_namespace, request):
    """Kopf in a thread, as `kopf run --namespace` would run it; stopped (and joined)
    before the namespace goes. The resync timer ticks every second unless the test
    parametrizes another interval."""
    import kopf
    from kubetune.operator.config import OperatorConfig
    from kubetune.operator.kube import Kube
    from kubetune.operator.modelserve.service import ServeService

    # pytest walks every logger, without logging's lock, as each test phase starts; a
    # logger made meanwhile in Kopf's thread fails the test with "dictionary changed
    # size during iteration" (seen: kopf.activities.authentication, made as the
    # ready flag fires). So Kopf's loggers and the service exist before the thread.
    for activity in KOPF_ACTIVITIES:
        logging.getLogger(f"kopf.activities.{activity}")
    service = ServeService(Kube(), OperatorConfig())
    resync = getattr(request, "param", 1.0)
    stop_flag, ready_flag = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=operator_registry(service, resync), namespaces=[kube_namespace],
        standalone=True,
        stop_flag=stop_flag, ready_flag=ready_flag)), daemon=True)
    thread.start()
    assert ready_flag.wait(30), "kopf did not start"
    yield
    stop_flag.set()
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def serve_node(node_agent):
    """One on-demand node (what the ModelServe's default placement selects), running
    vLLM's images from the vLLM virtualenv."""
    return node_agent([ON_DEMAND_NODE], extra_env=POD_ENV, image_environments=image_environments())


@pytest.fixture(scope="session")
def s3_models(cluster_s3, tiny_model_path, tmp_path_factory):
    """The base model and one adapter in the S3 that pods reach."""
    client = cluster_s3.client()
    client.create_bucket(Bucket=BUCKET)
    upload_dir(client, tiny_model_path, BASE_URI)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    sha256 = make_adapter(tiny_model_path, adapter_dir, seed=1, base_uri=BASE_URI)
    size = sum(p.stat().st_size for p in adapter_dir.iterdir() if p.name != "manifest.json")
    upload_dir(client, adapter_dir, ADAPTER_URI)
    return cluster_s3, sha256, size
