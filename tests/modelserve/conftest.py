"""A small cluster for the ModelServe tests: the emulated API server (with CRD admission),
the test kubelet running pods as local processes, and the devenv Deployment controller."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from kubetune.devenv.apiserver import EmulatedApiServer
from kubetune.devenv.controllers import DeploymentController
from kubetune.devenv.kubeapi import KubeHttp
from kubetune.devenv.kubelet import NodeTemplate, TestKubelet

ON_DEMAND_NODE = NodeTemplate("node-1", labels={"karpenter.sh/capacity-type": "on-demand"})


@dataclass
class Cluster:
    api: EmulatedApiServer
    http: KubeHttp
    kubelet: TestKubelet
    controller: DeploymentController


@pytest.fixture
def cluster(tmp_path, crds, admission, request):
    extra_env = getattr(request, "param", None) or {}
    with EmulatedApiServer(crds=crds, admission=admission) as api:
        http = KubeHttp(api.url)
        kubelet = TestKubelet(http, tmp_path / "kubelet", nodes=[ON_DEMAND_NODE],
                              extra_env=extra_env, poll_seconds=0.2)
        with kubelet, DeploymentController(http, poll_seconds=0.2) as controller:
            yield Cluster(api, http, kubelet, controller)
