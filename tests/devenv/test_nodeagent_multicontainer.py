"""Whole pods on the node agent, against the real control plane: init containers in order
before the regular ones, native sidecars that start first and stop last, several regular
containers sharing the pod's network and emptyDirs with readiness of their own, per
container logs through the real kubectl, and images mapped to other virtualenvs.

Gates are ConfigMap keys a container polls (the agent propagates ConfigMap edits into
running pods), so a test can look at a pod mid-way without racing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from test_nodeagent import CONTAINER_SECURITY, ON_DEMAND, POD_SECURITY, phase, pod, wait_for

from kubetune.devenv.controlplane import ADMIN
from kubetune.devenv.kubeapi import CONFIGMAPS, PODS
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.tools import tool_path

pytestmark = pytest.mark.integration
GATE_MOUNT = [{"name": "gate", "mountPath": "/etc/gate", "readOnly": True}]
GATE_VOLUME = {"name": "gate", "configMap": {"name": "gate"}}
WAIT_FOR_GATE = ("import time\n"
                 "while open('/etc/gate/open').read() != 'yes':\n"
                 "    time.sleep(0.2)\n")


def container(name: str, code: str, image: str = "kubetune/trainer:dev", **extra) -> dict:
    return {"name": name, "image": image, "command": ["python", "-c", code],
            "securityContext": CONTAINER_SECURITY, **extra}


def pod_body(name: str, containers: list[dict], init: list[dict] | None = None,
             restart: str = "Never", annotations: dict | None = None, **spec) -> dict:
    meta = {"name": name, **({"annotations": annotations} if annotations else {})}
    body = {"restartPolicy": restart, "securityContext": POD_SECURITY, "containers": containers, **spec}
    if init:
        body["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def statuses(api, ns: str, name: str, kind: str = "containerStatuses") -> dict[str, dict]:
    return {s["name"]: s for s in ((pod(api, ns, name) or {}).get("status") or {}).get(kind) or []}


def condition(api, ns: str, name: str, kind: str) -> dict:
    conditions = ((pod(api, ns, name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def open_gate(api, ns: str) -> None:
    api.patch(CONFIGMAPS, "gate", {"data": {"open": "yes"}}, ns)


def make_gate(api, ns: str) -> None:
    api.create(CONFIGMAPS, {"metadata": {"name": "gate"}, "data": {"open": "no"}}, ns)


def test_init_container_fills_an_emptydir_that_the_main_container_reads(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("init-node", ON_DEMAND)])
    make_gate(api, ns)
    fetch = container("fetch", WAIT_FOR_GATE + "open('/model/weights.txt', 'w').write('w-123')\n",
                      volumeMounts=[{"name": "model", "mountPath": "/model"}, *GATE_MOUNT])
    main = container("main", "import pathlib\npathlib.Path('/dev/termination-log').write_text("
                             "open('/data/weights.txt').read())\n",
                     volumeMounts=[{"name": "model", "mountPath": "/data", "readOnly": True}])
    api.create(PODS, pod_body("fetcher", [main], [fetch],
                              volumes=[{"name": "model", "emptyDir": {}}, GATE_VOLUME]), ns)

    wait_for(lambda: "running" in statuses(api, ns, "fetcher", "initContainerStatuses")
             .get("fetch", {}).get("state", {}), 60, "the init container to run")
    during = pod(api, ns, "fetcher")["status"]
    assert during["phase"] == "Pending" and during["podIP"]
    assert condition(api, ns, "fetcher", "Initialized")["status"] == "False"
    assert "fetch" in condition(api, ns, "fetcher", "Initialized")["message"]
    assert statuses(api, ns, "fetcher")["main"]["state"]["waiting"]["reason"] == "PodInitializing"

    open_gate(api, ns)
    wait_for(lambda: phase(api, ns, "fetcher") in ("Succeeded", "Failed"), 60, "the pod to end")
    assert phase(api, ns, "fetcher") == "Succeeded"
    done = statuses(api, ns, "fetcher", "initContainerStatuses")["fetch"]
    main_state = statuses(api, ns, "fetcher")["main"]["state"]["terminated"]
    assert done["state"]["terminated"]["exitCode"] == 0 and done["ready"] is True
    assert main_state["exitCode"] == 0 and main_state["message"] == "w-123"
    assert main_state["startedAt"] >= done["state"]["terminated"]["finishedAt"]
    assert condition(api, ns, "fetcher", "Initialized")["status"] == "True"


SIDECAR = ("import http.server, signal, sys\n"
           "def stop(*_):\n"
           "    open('/shared/order', 'a').write('sidecar-term\\n')\n"
           "    sys.exit(0)\n"
           "signal.signal(signal.SIGTERM, stop)\n"
           "class H(http.server.BaseHTTPRequestHandler):\n"
           "    def do_GET(self):\n"
           "        self.send_response(200); self.end_headers(); self.wfile.write(b'from-sidecar')\n"
           "    def log_message(self, *args):\n"
           "        pass\n"
           "http.server.HTTPServer(('127.0.0.1', 8081), H).serve_forever()\n")
MAIN_USING_SIDECAR = (
    "import signal, sys, time, urllib.request\n"
    "def ask():\n"
    "    return urllib.request.urlopen('http://127.0.0.1:8081/', timeout=2).read().decode()\n"
    "def note(line):\n"
    "    with open('/shared/order', 'a') as out:\n"
    "        out.write(line + '\\n')\n"
    "def stop(*_):\n"
    "    note('main-term')\n"
    "    note('main-still-reached:' + ask())\n"
    "    time.sleep(1)\n"
    "    note('main-exit')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "note('main-got:' + ask())\n"
    "print('ready', flush=True)\n"
    "time.sleep(300)\n")


def test_native_sidecar_serves_the_main_container_and_stops_after_it(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = node_agent([NodeTemplate("sidecar-node", ON_DEMAND)])
    shared = [{"name": "shared", "mountPath": "/shared"}]
    sidecar = container("adapter", SIDECAR, restartPolicy="Always", volumeMounts=shared)
    main = container("main", MAIN_USING_SIDECAR, volumeMounts=shared)
    api.create(PODS, pod_body("sidecar", [main], [sidecar], terminationGracePeriodSeconds=20,
                              volumes=[{"name": "shared", "emptyDir": {}}]), ns)
    wait_for(lambda: "ready" in agent.logs(ns, "sidecar", "main"), 60, "main to reach the sidecar")
    wait_for(lambda: condition(api, ns, "sidecar", "Ready").get("status") == "True", 30, "Ready")
    assert phase(api, ns, "sidecar") == "Running"
    side = statuses(api, ns, "sidecar", "initContainerStatuses")["adapter"]
    assert "running" in side["state"] and side["started"] is True and side["restartCount"] == 0

    api.delete(PODS, "sidecar", ns)
    wait_for(lambda: pod(api, ns, "sidecar") is None, 40, "the pod to be gone")
    (order,) = agent.workdir.glob(f"{ns}_sidecar_*/volumes/shared/order")
    assert order.read_text().splitlines() == [
        "main-got:from-sidecar", "main-term", "main-still-reached:from-sidecar", "main-exit",
        "sidecar-term"]
    assert [(h["container"], h["exitCode"]) for h in agent.history if h["name"] == "sidecar"] == [
        ("main", 0)]


SERVER = ("import http.server, os, pathlib\n"
          "PORT = int(os.environ['PORT'])\n"
          "class H(http.server.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n"
          "        gate = pathlib.Path('/etc/gate/open')\n"
          "        ok = os.environ['NAME'] == 'web' or (gate.exists() and gate.read_text() == 'yes')\n"
          "        self.send_response(200 if ok else 503); self.end_headers()\n"
          "        self.wfile.write(f\"{os.environ['NAME']} {os.getcwd()} {gate.exists()}\".encode())\n"
          "    def log_message(self, *args):\n"
          "        pass\n"
          "http.server.HTTPServer(('0.0.0.0', PORT), H).serve_forever()\n")


def server(name: str, port: int, workdir: str, **extra) -> dict:
    # Both name their port "http": a named probe port is looked up in its own container.
    return container(name, SERVER, workingDir=workdir,
                     env=[{"name": "NAME", "value": name}, {"name": "PORT", "value": str(port)}],
                     ports=[{"name": "http", "containerPort": port}],
                     readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                     **extra)


def test_two_regular_containers_share_the_pod_ip_and_are_ready_separately(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("duo-node", ON_DEMAND)])
    make_gate(api, ns)
    body = pod_body("duo", [server("web", 8080, "/tmp"), server("api", 8090, "/etc", volumeMounts=GATE_MOUNT)],
                    restart="Always", volumes=[GATE_VOLUME])
    api.create(PODS, body, ns)

    wait_for(lambda: statuses(api, ns, "duo").get("web", {}).get("ready"), 60, "web to be ready")
    assert phase(api, ns, "duo") == "Running"
    assert statuses(api, ns, "duo")["api"]["ready"] is False
    assert "running" in statuses(api, ns, "duo")["api"]["state"]
    unready = condition(api, ns, "duo", "ContainersReady")
    assert unready["status"] == "False" and unready["message"] == "containers with unready status: [api]"
    assert condition(api, ns, "duo", "Ready")["status"] == "False"
    ip = pod(api, ns, "duo")["status"]["podIP"]
    # One address, each container its own env, workingDir and mounts.
    assert urllib.request.urlopen(f"http://{ip}:8080/", timeout=5).read() == b"web /tmp False"

    open_gate(api, ns)
    wait_for(lambda: condition(api, ns, "duo", "Ready").get("status") == "True", 30, "the pod Ready")
    assert all(s["ready"] for s in statuses(api, ns, "duo").values())
    assert urllib.request.urlopen(f"http://{ip}:8090/", timeout=5).read() == b"api /etc True"
    assert {s["restartCount"] for s in statuses(api, ns, "duo").values()} == {0}


def test_failed_init_container_under_restart_policy_never_fails_the_pod(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = node_agent([NodeTemplate("badinit-node", ON_DEMAND)])
    sidecar = container("helper", "import time\ntime.sleep(300)\n", restartPolicy="Always")
    check = container("check", "import pathlib\npathlib.Path('/dev/termination-log').write_text('no model')\n"
                               "raise SystemExit(7)\n")
    main = container("main", "print('main ran')\n")
    api.create(PODS, pod_body("badinit", [main], [sidecar, check], terminationGracePeriodSeconds=5), ns)
    wait_for(lambda: phase(api, ns, "badinit") in ("Succeeded", "Failed"), 60, "the pod to end")
    assert phase(api, ns, "badinit") == "Failed"
    init = statuses(api, ns, "badinit", "initContainerStatuses")
    failed = init["check"]["state"]["terminated"]
    assert (failed["exitCode"], failed["reason"], failed["message"]) == (7, "Error", "no model")
    assert "terminated" in init["helper"]["state"]  # the sidecar was stopped with the pod
    assert statuses(api, ns, "badinit")["main"]["state"]["waiting"]["reason"] == "PodInitializing"
    assert condition(api, ns, "badinit", "Initialized")["status"] == "False"
    assert agent.logs(ns, "badinit") == "" and not [h for h in agent.history if h["name"] == "badinit"]


def fails_once(name: str) -> dict:
    """Exits 1 the first time (leaving a mark in the pod's emptyDir), 0 after."""
    code = (f"import os\nif not os.path.exists('/work/{name}'):\n"
            f"    open('/work/{name}', 'w').close()\n    raise SystemExit(1)\n")
    return container(name, code, volumeMounts=[{"name": "work", "mountPath": "/work"}])


def backing_off(api, ns: str, name: str, container_name: str, kind: str = "containerStatuses"):
    state = statuses(api, ns, name, kind).get(container_name, {})
    waiting = (state.get("state") or {}).get("waiting") or {}
    return state if waiting.get("reason") == "CrashLoopBackOff" else None


def test_on_failure_retries_failed_containers_after_a_backoff_and_leaves_the_rest(
        kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    node_agent([NodeTemplate("retry-node", ON_DEMAND)])
    steady = container("steady", "import time\ntime.sleep(1)\n")
    api.create(PODS, pod_body("retry", [steady, fails_once("flaky")], [fails_once("flaky-init")],
                              restart="OnFailure", volumes=[{"name": "work", "emptyDir": {}}]), ns)

    state = wait_for(lambda: backing_off(api, ns, "retry", "flaky-init", "initContainerStatuses"),
                     60, "the init container's CrashLoopBackOff")
    assert state["lastState"]["terminated"]["exitCode"] == 1 and state["restartCount"] == 0
    assert phase(api, ns, "retry") == "Pending"

    # Initialised on the second try; then the failed regular container is retried alone.
    state = wait_for(lambda: backing_off(api, ns, "retry", "flaky"), 60, "flaky's CrashLoopBackOff")
    assert state["lastState"]["terminated"]["exitCode"] == 1
    assert statuses(api, ns, "retry", "initContainerStatuses")["flaky-init"]["restartCount"] == 1
    assert phase(api, ns, "retry") == "Running"
    wait_for(lambda: phase(api, ns, "retry") == "Succeeded", 60, "the retried container to finish")
    final = statuses(api, ns, "retry")
    assert (final["flaky"]["restartCount"], final["steady"]["restartCount"]) == (1, 0)
    assert final["flaky"]["lastState"]["terminated"]["exitCode"] == 1
    assert final["steady"]["state"]["terminated"]["exitCode"] == 0


def test_kubectl_logs_per_container_and_the_default_container(kube_cluster, kube_namespace, node_agent):
    api, ns = kube_cluster.api, kube_namespace
    agent = node_agent([NodeTemplate("logs-node", ON_DEMAND)])
    # The sidecar runs until the regular containers are through, then is stopped.
    tail = container("tail", "import time\nprint('tail is up', flush=True)\ntime.sleep(300)\n",
                     restartPolicy="Always")
    body = pod_body("chatty", [container("one", "print('one says 1')"), container("two", "print('two says 2')")],
                    [container("prep", "print('prep says 0')"), tail], terminationGracePeriodSeconds=5,
                    annotations={"kubectl.kubernetes.io/default-container": "two"})
    api.create(PODS, body, ns)
    wait_for(lambda: phase(api, ns, "chatty") == "Succeeded", 60, "the pod to finish")
    kubeconfig = kube_cluster.control_plane.kubeconfig(ADMIN, ns)

    def kubectl_logs(*args: str) -> str:
        result = subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), "logs",
                                 "chatty", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert kubectl_logs("-c", "one") == "one says 1\n"
    assert kubectl_logs("-c", "two") == "two says 2\n"
    assert kubectl_logs("-c", "prep") == "prep says 0\n"
    assert kubectl_logs("-c", "tail") == "tail is up\n"
    assert kubectl_logs() == "two says 2\n"  # kubectl's default-container annotation
    # The agent's own default is the first regular container, as for one-container pods.
    assert agent.logs(ns, "chatty") == "one says 1\n" and agent.logs(ns, "chatty", "prep") == "prep says 0\n"


def test_an_image_mapped_to_another_virtualenv_runs_with_it(kube_cluster, kube_namespace, node_agent,
                                                            tmp_path):
    api, ns = kube_cluster.api, kube_namespace
    venv = tmp_path / "images" / "tiny"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # A package that lives elsewhere, linked into the virtualenv (as one venv shares another's).
    shelf = tmp_path / "shelf" / "greeting"
    shelf.mkdir(parents=True)
    (shelf / "__init__.py").write_text("VALUE = 'hello from the shelf'\n")
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "greeting").symlink_to(shelf)
    tool = venv / "bin" / "hello"
    tool.write_text("#!/bin/sh\necho hello from $0\n")
    tool.chmod(0o755)
    agent = node_agent([NodeTemplate("venv-node", ON_DEMAND)], image_environments={
        "example.com/": Path(sys.prefix), "example.com/tiny": venv})

    show = "import json, os, sys\nprint(json.dumps([sys.prefix, os.environ['PATH'].split(':')[0]]))\n"
    # A volume over the folder that holds the virtualenv and the shelf hides neither.
    hide = {"volumeMounts": [{"name": "over", "mountPath": str(tmp_path)}]}
    tiny = container("tiny", show + "import greeting\nprint(greeting.VALUE)\n",
                     image="example.com/tiny:0.1", **hide)
    tool_user = {**container("tool", "", image="example.com/tiny:0.1", **hide), "command": ["hello"]}
    other = container("other", show, image="example.com/other:1")
    plain = container("plain", show)
    api.create(PODS, pod_body("venvs", [tiny, tool_user, other, plain],
                              volumes=[{"name": "over", "emptyDir": {}}]), ns)
    wait_for(lambda: phase(api, ns, "venvs") in ("Succeeded", "Failed"), 60, "the pod to end")
    assert phase(api, ns, "venvs") == "Succeeded", agent.logs(ns, "venvs", "tiny")
    shown, greeting = agent.logs(ns, "venvs", "tiny").splitlines()
    assert json.loads(shown) == [str(venv), str(venv / "bin")]
    assert greeting == "hello from the shelf"
    assert agent.logs(ns, "venvs", "tool") == f"hello from {tool}\n"
    project = [sys.prefix, os.path.dirname(sys.executable)]
    assert json.loads(agent.logs(ns, "venvs", "other")) == project  # the shorter prefix
    assert json.loads(agent.logs(ns, "venvs", "plain")) == project  # unmatched: the project's
