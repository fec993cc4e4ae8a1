"""Fixtures: one test's namespace of the real control plane for the operator, node
agents running the real trainer, moto S3 on the pod network, the operator process."""

from __future__ import annotations

import base64
import copy

import pytest
from ftj_harness import BUCKET, SPOT, Cluster

from kubetune.devenv.controlplane import ADMIN
from kubetune.devenv.kubeapi import SECRETS
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY

FTJ_CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/finetunejobs.kubetune.dev"
POD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def cluster(kube_cluster, kube_namespace, tmp_path) -> Cluster:
    kubeconfig = kube_cluster.control_plane.kubeconfig(ADMIN, kube_namespace)
    return Cluster(kube_cluster.api, kubeconfig, tmp_path, kube_namespace, kube_cluster.control_plane)


@pytest.fixture
def lenient_crd(kube_cluster):
    """The FineTuneJob CRD with its spec schema relaxed, as on a cluster whose CRD is older
    than the operator (Helm never upgrades CRDs): the API server then stores specs that
    only the operator's own validation can refuse. The generated CRD is put back after."""
    current = kube_cluster.api.request("GET", FTJ_CRD)
    original = copy.deepcopy(current)
    for version in current["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema.pop("x-kubernetes-validations", None)
    kube_cluster.api.request("PUT", FTJ_CRD, current)
    yield
    latest = kube_cluster.api.request("GET", FTJ_CRD)
    original["metadata"]["resourceVersion"] = latest["metadata"]["resourceVersion"]
    kube_cluster.api.request("PUT", FTJ_CRD, original)


@pytest.fixture
def bare_cluster(cluster, lenient_crd) -> Cluster:
    """A cluster whose API server lets invalid FineTuneJob specs through (see lenient_crd)."""
    return cluster


@pytest.fixture
def s3_bucket(cluster_s3):
    client = cluster_s3.client()
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return cluster_s3


@pytest.fixture
def training_cluster(cluster, s3_bucket, node_agent):
    """The cluster plus S3 credentials in a Secret and a node agent with one spot node."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
              "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(ACCESS_KEY_ID.encode()).decode(),
                       "AWS_SECRET_ACCESS_KEY":
                           base64.b64encode(SECRET_ACCESS_KEY.encode()).decode()}}
    cluster.api.create(SECRETS, secret, cluster.namespace)
    agent = node_agent([NodeTemplate("spot-1", SPOT)], extra_env=POD_ENV)
    cluster.s3 = s3_bucket
    return cluster, agent


@pytest.fixture
def operator(cluster):
    process = cluster.operator().start()
    try:
        yield process
    finally:
        process.stop()
