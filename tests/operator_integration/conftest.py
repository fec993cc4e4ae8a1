"""Fixtures: a whole cluster on loopback for the operator — emulated API server (with or
without CRD admission), the test kubelet running the real trainer, moto S3, the operator."""

from __future__ import annotations

import base64
import shutil

import pytest
from ftj_harness import BUCKET, NAMESPACE, SPOT, make_cluster

from kubetune.devenv.kubeapi import SECRETS
from kubetune.devenv.kubelet import NodeTemplate, TestKubelet


@pytest.fixture
def cluster(tmp_path, crds, admission):
    server, cluster = make_cluster(tmp_path, crds, admission)
    try:
        yield cluster
    finally:
        server.stop()


@pytest.fixture
def bare_cluster(tmp_path, crds):
    """No admission: the API server stores whatever it is given, as with a webhook down."""
    server, cluster = make_cluster(tmp_path, crds, None)
    try:
        yield cluster
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(loopback_s3):
    client = loopback_s3.client()
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return loopback_s3


@pytest.fixture
def training_cluster(cluster, s3_bucket):
    """The cluster plus S3 credentials in a Secret and a kubelet with one spot node."""
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ktray-")
    from kubetune.devenv.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
              "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(ACCESS_KEY_ID.encode()).decode(),
                       "AWS_SECRET_ACCESS_KEY":
                           base64.b64encode(SECRET_ACCESS_KEY.encode()).decode()}}
    cluster.api.create(SECRETS, secret, NAMESPACE)
    kubelet = TestKubelet(cluster.api, cluster.workdir / "kubelet",
                          nodes=[NodeTemplate("spot-1", SPOT)],
                          extra_env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                     "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                     "TOKENIZERS_PARALLELISM": "false",
                                     "RAY_DISABLE_USAGE_STATS": "1",
                                     # AF_UNIX paths under pytest's tmp_path are too long
                                     "RAY_TMPDIR": ray_tmp})
    cluster.s3 = s3_bucket
    kubelet.start()
    try:
        yield cluster, kubelet
    finally:
        kubelet.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def operator(cluster):
    process = cluster.operator().start()
    try:
        yield process
    finally:
        process.stop()
