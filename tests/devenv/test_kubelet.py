"""The test kubelet runs pods from the emulated API server as local processes."""

from __future__ import annotations

import sys
import time

import pytest

from kubetune.devenv.apiserver import EmulatedApiServer
from kubetune.devenv.kubeapi import CONFIGMAPS, NODES, PODS, SECRETS, KubeHttp
from kubetune.devenv.kubelet import NodeTemplate, TestKubelet

pytestmark = pytest.mark.integration

SCRIPT = """
import os, pathlib, signal, sys, time
spec = pathlib.Path(os.environ['SPEC']).read_text()
term = pathlib.Path(os.environ['TERM_LOG'])
term.write_text('read ' + spec + ' as ' + os.environ['SECRET_VALUE'] + ' at ' + os.environ['POD_IP'])
if os.environ.get('WAIT_FOR_TERM'):
    def on_term(*_):
        term.write_text('preempted, checkpoint saved')
        sys.exit(75)
    signal.signal(signal.SIGTERM, on_term)
    print('waiting', flush=True)
    time.sleep(60)
"""


def pod(name: str, wait_for_term: bool = False, node_selector: dict | None = None) -> dict:
    env = [
        {"name": "SECRET_VALUE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # Absolute paths in env values are mapped to the pod's folder like args are.
        {"name": "SPEC", "value": "/etc/demo/spec.json"},
        {"name": "TERM_LOG", "value": "/dev/termination-log"},
    ]
    if wait_for_term:
        env.append({"name": "WAIT_FOR_TERM", "value": "1"})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "nodeSelector": node_selector or {},
            "containers": [{
                "name": "main", "image": "python:3.11",
                "command": ["python", "-c", SCRIPT],
                "env": env,
                "volumeMounts": [{"name": "spec", "mountPath": "/etc/demo"}],
            }],
            "volumes": [{"name": "spec", "configMap": {"name": "spec"}}],
        },
    }


@pytest.fixture
def cluster(tmp_path, crds):
    with EmulatedApiServer(crds=crds) as server:
        api = KubeHttp(server.url)
        api.create(CONFIGMAPS, {"metadata": {"name": "spec"}, "data": {"spec.json": '{"x": 1}'}}, "default")
        api.create(SECRETS, {"metadata": {"name": "creds"}, "data": {"token": "czNjcjN0"}}, "default")
        nodes = [NodeTemplate("spot-1", {"karpenter.sh/capacity-type": "spot"})]
        with TestKubelet(api, tmp_path / "kubelet", nodes=nodes) as kubelet:
            yield api, kubelet


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def phase(api, name):
    obj = api.get(PODS, name, "default")
    return obj and obj.get("status", {}).get("phase")


def test_pod_runs_with_its_volumes_env_and_termination_message(cluster):
    api, kubelet = cluster
    api.create(PODS, pod("ok"), "default")
    wait_for(lambda: phase(api, "ok") == "Succeeded")
    status = api.get(PODS, "ok", "default")["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["message"].startswith('read {"x": 1} as s3cr3t at 127.0.0.')
    assert api.get(PODS, "ok", "default")["spec"]["nodeName"] == "spot-1"


def test_disruption_sends_sigterm_and_records_the_condition(cluster):
    api, kubelet = cluster
    api.create(PODS, pod("victim", wait_for_term=True), "default")
    wait_for(lambda: "waiting" in kubelet.logs("default", "victim"))
    kubelet.disrupt_pod("default", "victim")
    wait_for(lambda: phase(api, "victim") == "Failed")
    status = api.get(PODS, "victim", "default")["status"]
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 75
    assert status["containerStatuses"][0]["state"]["terminated"]["message"] == "preempted, checkpoint saved"
    assert any(c["type"] == "DisruptionTarget" and c["status"] == "True" for c in status["conditions"])


def test_pod_without_a_matching_node_stays_pending_unschedulable(cluster):
    api, kubelet = cluster
    api.create(PODS, pod("nowhere", node_selector={"karpenter.sh/capacity-type": "on-demand"}), "default")
    cond = wait_for(lambda: [c for c in (api.get(PODS, "nowhere", "default").get("status", {}).get("conditions") or [])
                             if c["type"] == "PodScheduled"])
    assert cond[0]["reason"] == "Unschedulable"
    assert phase(api, "nowhere") == "Pending" and not kubelet.running


def test_reclaimed_node_deletes_node_and_pods_after_sigterm(cluster):
    api, kubelet = cluster
    api.create(PODS, pod("onspot", wait_for_term=True), "default")
    wait_for(lambda: "waiting" in kubelet.logs("default", "onspot"))
    kubelet.reclaim_node("spot-1", taint={"key": "karpenter.sh/disrupted", "effect": "NoSchedule"},
                         replacement=NodeTemplate("spot-2", {"karpenter.sh/capacity-type": "spot"}))
    assert api.get(NODES, "spot-1") is None and api.get(PODS, "onspot", "default") is None
    assert wait_for(lambda: kubelet.history)[-1]["exitCode"] == 75
    assert api.get(NODES, "spot-2") is not None


def test_configmap_edits_reach_a_running_pods_volume(cluster, tmp_path):
    api, kubelet = cluster
    api.create(PODS, pod("watcher", wait_for_term=True), "default")
    wait_for(lambda: "waiting" in kubelet.logs("default", "watcher"))
    api.patch(CONFIGMAPS, "spec", {"data": {"spec.json": '{"x": 2}'}}, "default")
    running = kubelet.running[("default", "watcher")]
    mounted = running.config_volumes["spec"] / "spec.json"
    wait_for(lambda: mounted.read_text() == '{"x": 2}')


def test_args_expand_env_references_and_bind_the_pods_own_address():
    from kubetune.devenv.kubelet import expand_env_refs

    env = {"POD_IP": "127.0.0.9", "PORT": "8000"}
    assert expand_env_refs("--listen=$(POD_IP):$(PORT)", env) == "--listen=127.0.0.9:8000"
    assert expand_env_refs("$$(POD_IP) $(UNSET)", env) == "$(POD_IP) $(UNSET)"
    assert TestKubelet._own_address("0.0.0.0", "127.0.0.9") == "127.0.0.9"
    assert TestKubelet._own_address("http://0.0.0.0:8080/healthz", "127.0.0.9") == "http://127.0.0.9:8080/healthz"
    assert TestKubelet._own_address("10.0.0.1", "127.0.0.9") == "10.0.0.1"
