"""Fixtures shared by every test area: repository paths, the real control plane (one per
session, a namespace per test), node agents, S3 (on loopback, and on the pod network for
pods), the tiny model. Area-specific
fixtures live in each area's own conftest.py."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def loopback_s3():
    """One moto S3 server on 127.0.0.1 for the session; tests use their own buckets."""
    from kubetune.devenv.s3 import LoopbackS3

    with LoopbackS3() as s3:
        yield s3


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from kubetune.devenv.tinymodel import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    """The real control plane (etcd, kube-apiserver, controller manager, scheduler) on
    the pod network, with the project's CRDs installed; one for the whole session."""
    from kubetune.devenv.cluster import Cluster

    with Cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


_namespace_serial = itertools.count(1)


@pytest.fixture
def kube_namespace(kube_cluster, request) -> str:
    """A fresh namespace (Pod Security `restricted`) named after the test; deleted after."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = kube_cluster.namespace(f"{base}-{next(_namespace_serial)}")
    yield name
    kube_cluster.delete_namespace(name, force_pods=True)


@pytest.fixture
def node_agent(kube_cluster, tmp_path):
    """Start a node agent with `node_agent([NodeTemplate(...)], extra_env={...},
    image_environments={image prefix: virtualenv})`; it and its Nodes are removed when the
    test ends (so the next test's pods cannot land there)."""
    from kubetune.devenv.nodeagent import NodeAgent

    agents = []

    def start(nodes, extra_env=None, image_environments=None):
        agent = NodeAgent(kube_cluster.control_plane, kube_cluster.network,
                          tmp_path / f"nodes-{len(agents)}", nodes, extra_env=extra_env,
                          image_environments=image_environments)
        agents.append(agent.start())
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture(scope="session")
def cluster_s3(kube_cluster):
    """A moto S3 server that pods reach: on the pod network's host address (pods have no
    route to the host's 127.0.0.1). Tests use their own buckets."""
    from kubetune.devenv.s3 import LoopbackS3

    with LoopbackS3(host=kube_cluster.network.gateway) as s3:
        yield s3
