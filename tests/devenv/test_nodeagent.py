"""The node agent against the real control plane: pods the real scheduler binds run as
processes in namespaces of their own, see their volumes at the declared paths, talk to
each other through Service names across nodes, and end the way a kubelet ends them
(SIGTERM, SIGKILL after the grace period) when the API or the controllers say so."""

from __future__ import annotations

import time

import pytest

from kubetune.devenv import spot
from kubetune.devenv.kubeapi import CONFIGMAPS, PODS, SECRETS, SERVICES
from kubetune.devenv.nodeagent import NodeTemplate

pytestmark = pytest.mark.integration
ON_DEMAND = {"karpenter.sh/capacity-type": "on-demand"}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def python_pod(name: str, code: str, **spec) -> dict:
    container = {"name": "main", "image": "kubetune/trainer:dev", "command": ["python", "-c", code],
                 "securityContext": CONTAINER_SECURITY}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": "Never", "securityContext": POD_SECURITY,
                     "containers": [container], **spec}}


def pod(api, namespace: str, name: str) -> dict | None:
    return api.get(PODS, name, namespace)


def phase(api, namespace: str, name: str) -> str | None:
    return ((pod(api, namespace, name) or {}).get("status") or {}).get("phase")


def terminated(api, namespace: str, name: str) -> dict:
    statuses = (pod(api, namespace, name) or {}).get("status", {}).get("containerStatuses") or []
    return (statuses[0].get("state") or {}).get("terminated") if statuses else None


def test_pod_sees_volumes_at_their_paths_env_and_reports_its_termination_message(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("volumes-node", ON_DEMAND)])
    api.create(CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"mode": "fast"}}, ns)
    api.create(SECRETS, {"metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}}, ns)
    code = ("import os, pathlib\n"
            "assert open('/etc/settings/mode').read() == 'fast'\n"
            "pathlib.Path('/scratch/probe').write_text('ok')\n"
            "pathlib.Path('/dev/termination-log').write_text("
            "f\"{os.environ['KEY']} {os.environ['POD_IP']} {os.environ['POD_NS']}\")\n"
            "raise SystemExit(3)\n")
    body = python_pod("volumes", code, container={
        "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
                         {"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "settings", "configMap": {"name": "settings"}},
                 {"name": "scratch", "emptyDir": {}}])
    api.create(PODS, body, ns)
    wait_for(lambda: phase(api, ns, "volumes") == "Failed", 60, "the pod to end")
    state = terminated(api, ns, "volumes")
    ip = pod(api, ns, "volumes")["status"]["podIP"]
    assert ip.startswith(str(kube_cluster.network.subnet.network_address)[:-1])
    assert state["exitCode"] == 3 and state["message"] == f"s3cr3t {ip} {ns}"


def test_pods_on_two_nodes_talk_through_a_service_name(kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("net-a", {"pool": "a"}), NodeTemplate("net-b", {"pool": "b"})])
    api.create(SERVICES, {"metadata": {"name": "echo"}, "spec": {
        "clusterIP": "None", "selector": {"app": "server"}, "ports": [{"port": 8080}]}}, ns)
    server = ("import http.server, socket\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    def do_GET(self):\n"
              "        self.send_response(200); self.end_headers()\n"
              "        self.wfile.write(socket.gethostbyname(socket.gethostname()).encode())\n"
              "    def log_message(self, *args):\n"
              "        pass\n"
              "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n")
    body = python_pod("server", server, nodeSelector={"pool": "a"})
    api.create(PODS, body, ns)
    client = ("import pathlib, time, urllib.request\n"
              "for _ in range(100):\n"
              "    try:\n"
              "        answer = urllib.request.urlopen('http://echo:8080/', timeout=2).read().decode()\n"
              "        break\n"
              "    except OSError:\n"
              "        time.sleep(0.3)\n"
              "pathlib.Path('/dev/termination-log').write_text(answer)\n")
    api.create(PODS, python_pod("client", client, nodeSelector={"pool": "b"}), ns)
    wait_for(lambda: phase(api, ns, "client") == "Succeeded", 90, "the client to get an answer")
    server_pod, client_pod = pod(api, ns, "server"), pod(api, ns, "client")
    assert (server_pod["spec"]["nodeName"], client_pod["spec"]["nodeName"]) == ("net-a", "net-b")
    assert server_pod["status"]["podIP"] != client_pod["status"]["podIP"]
    # The server's own hostname (the pod's name) resolves to its pod IP, as on a cluster.
    assert terminated(api, ns, "client").get("message") == server_pod["status"]["podIP"]


SIGTERM_LOGGER = ("import signal, sys, time\n"
                  "def stop(*_):\n"
                  "    open('/dev/termination-log', 'w').write('SIGTERM')\n"
                  "    sys.exit(75)\n"
                  "signal.signal(signal.SIGTERM, stop)\n"
                  "print('waiting', flush=True)\n"
                  "time.sleep(300)\n")


def start_sigterm_logger(api, ns: str, node_agent, node: str, name: str):
    """A node with one pod that exits 75 on SIGTERM, running and past its handler set-up."""
    agent = node_agent([NodeTemplate(node, ON_DEMAND)])
    api.create(PODS, python_pod(name, SIGTERM_LOGGER), ns)
    wait_for(lambda: "waiting" in agent.logs(ns, name), 60, f"{name} to run")
    return agent


def exits(agent, name: str) -> list[int]:
    return [h["exitCode"] for h in agent.history if h["name"] == name]


def test_eviction_sets_disruption_target_and_the_container_gets_sigterm(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = start_sigterm_logger(api, ns, node_agent, "evict-node", "victim")
    spot.evict(api, ns, "victim")
    disrupted = wait_for(lambda: next((c for c in (pod(api, ns, "victim") or {}).get("status", {})
                                       .get("conditions", []) if c["type"] == "DisruptionTarget"),
                                      None), 30, "DisruptionTarget")
    assert disrupted["reason"] == "EvictionByEvictionAPI"
    wait_for(lambda: pod(api, ns, "victim") is None, 60, "the pod to be deleted")
    assert exits(agent, "victim") == [75]


def test_no_execute_taint_evicts_through_the_controller_manager(kube_cluster, kube_namespace,
                                                                 node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = start_sigterm_logger(api, ns, node_agent, "taint-node", "tainted")
    spot.taint_no_execute(api, "taint-node")
    wait_for(lambda: pod(api, ns, "tainted") is None, 60, "taint eviction to delete the pod")
    assert exits(agent, "tainted") == [75]


def test_deletion_sigkills_after_the_grace_period(kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = node_agent([NodeTemplate("grace-node", ON_DEMAND)])
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ignoring SIGTERM', flush=True)\ntime.sleep(300)\n")
    api.create(PODS, python_pod("stubborn", stubborn, terminationGracePeriodSeconds=2), ns)
    wait_for(lambda: "ignoring SIGTERM" in agent.logs(ns, "stubborn"), 60, "the handler to be set")
    started = time.monotonic()
    api.delete(PODS, "stubborn", ns)
    wait_for(lambda: pod(api, ns, "stubborn") is None, 30, "the pod to be gone")
    assert 2 <= time.monotonic() - started < 10
    assert exits(agent, "stubborn") == [137]


def test_unschedulable_pod_stays_pending_with_the_schedulers_reason(kube_cluster, kube_namespace,
                                                                     node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("plain-node", ON_DEMAND)])
    api.create(PODS, python_pod("picky", "pass", nodeSelector={"karpenter.sh/capacity-type": "spot"}), ns)

    def verdict():
        conditions = (pod(api, ns, "picky").get("status") or {}).get("conditions", [])
        found = next((c for c in conditions if c["type"] == "PodScheduled"), None)
        # A new node is briefly tainted not-ready; the scheduler retries once it is Ready.
        return found if found and "affinity/selector" in found.get("message", "") else None

    scheduled = wait_for(verdict, 30, "the scheduler's verdict on the node selector")
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert "node(s) didn't match Pod's node affinity/selector" in scheduled["message"]
    assert pod(api, ns, "picky")["spec"].get("nodeName") is None


def test_configmap_edits_reach_a_running_pods_volume(kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("cm-node", ON_DEMAND)])
    api.create(CONFIGMAPS, {"metadata": {"name": "live"}, "data": {"v": "1"}}, ns)
    code = ("import time\n"
            "while open('/etc/live/v').read() != '2':\n"
            "    time.sleep(0.2)\n")
    body = python_pod("watcher", code, container={
        "volumeMounts": [{"name": "live", "mountPath": "/etc/live", "readOnly": True}]},
        volumes=[{"name": "live", "configMap": {"name": "live"}}])
    api.create(PODS, body, ns)
    wait_for(lambda: phase(api, ns, "watcher") == "Running", 60, "the pod to run")
    api.patch(CONFIGMAPS, "live", {"data": {"v": "2"}}, ns)
    wait_for(lambda: phase(api, ns, "watcher") == "Succeeded", 30, "the pod to see the edit")


def test_a_volume_over_the_checkout_leaves_the_image_visible(kube_cluster, kube_namespace,
                                                             node_agent, repo):
    """The checkout and its virtualenv play the image; a volume mounted over the folder
    that holds them (as /tmp does when CI clones under /tmp) must not hide them."""
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("image-node", ON_DEMAND)])
    code = ("import os, pathlib, sys\n"
            f"assert os.listdir({str(repo.parent)!r}) == [{repo.name!r}], os.listdir({str(repo.parent)!r})\n"
            "pathlib.Path('/dev/termination-log').write_text(sys.executable)\n")
    body = python_pod("hidden", code, container={
        "volumeMounts": [{"name": "over", "mountPath": str(repo.parent)}]},
        volumes=[{"name": "over", "emptyDir": {}}])
    api.create(PODS, body, ns)
    wait_for(lambda: phase(api, ns, "hidden") in ("Succeeded", "Failed"), 60, "the pod to end")
    state = terminated(api, ns, "hidden")
    assert state["exitCode"] == 0, state
    assert state["message"].startswith(str(repo))


def test_a_deleted_node_is_a_machine_gone_its_pods_get_sigterm(kube_cluster, kube_namespace,
                                                                node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = start_sigterm_logger(api, ns, node_agent, "doomed-node", "aboard")
    spot.delete_node(api, "doomed-node")
    wait_for(lambda: exits(agent, "aboard"), 30, "SIGTERM to the pod")
    assert exits(agent, "aboard") == [75]
    # Nobody reports for a machine that is gone: pod GC, not the agent, ends the pod.
    assert phase(api, ns, "aboard") == "Running"
