"""kubectl behaves as on a cluster, because the API server is the real one: the drift
checks GitOps tools run (`diff`, server-side dry runs), server-side apply with field
ownership and conflicts, `logs` and `describe` of a pod run by the node agent, `wait`,
and `explain` from the CRDs' published schema."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from kubetune.devenv.controlplane import ADMIN
from kubetune.devenv.kubeapi import FINETUNEJOBS
from kubetune.devenv.nodeagent import NodeTemplate
from kubetune.devenv.tools import tool_path

pytestmark = pytest.mark.integration


@pytest.fixture
def kubectl(kube_cluster, kube_namespace):
    kubeconfig = kube_cluster.control_plane.kubeconfig(ADMIN, kube_namespace)

    def run(*args, input=None, check=True):
        result = subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), *args],
                                input=input, capture_output=True, text=True, timeout=90)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    return run


def example(repo, namespace: str, **spot) -> str:
    body = yaml.safe_load((repo / "examples" / "finetune.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    body["spec"]["spot"].update(spot)
    return yaml.safe_dump(body)


def test_diff_and_server_dry_runs_see_the_change_and_store_nothing(kubectl, kube_cluster,
                                                                   kube_namespace, repo):
    kubectl("apply", "-f", "-", input=example(repo, kube_namespace))
    unchanged = kubectl("diff", "-f", "-", input=example(repo, kube_namespace), check=False)
    assert unchanged.returncode == 0 and unchanged.stdout == ""
    changed = kubectl("diff", "-f", "-", input=example(repo, kube_namespace, maxRecoveries=9),
                      check=False)
    assert changed.returncode == 1, changed.stderr  # 1 means "differences found"
    assert "+    maxRecoveries: 9" in changed.stdout
    dry = kubectl("apply", "--dry-run=server", "-f", "-",
                  input=example(repo, kube_namespace, maxRecoveries=9)).stdout
    assert "configured (server dry run)" in dry
    dry_ssa = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-",
                      input=example(repo, kube_namespace, maxRecoveries=9)).stdout
    assert "serverside-applied (server dry run)" in dry_ssa
    stored = kube_cluster.api.get(FINETUNEJOBS, "support-bot-v1", kube_namespace)
    assert stored["spec"]["spot"]["maxRecoveries"] != 9 and stored["metadata"]["generation"] == 1


def test_server_side_apply_refuses_a_conflicting_manager_unless_forced(kubectl, kube_cluster,
                                                                      kube_namespace, repo):
    kubectl("apply", "--server-side", "--field-manager=argocd", "-f", "-",
            input=example(repo, kube_namespace, maxRecoveries=3))
    other = kubectl("apply", "--server-side", "--field-manager=flux", "-f", "-",
                    input=example(repo, kube_namespace, maxRecoveries=5), check=False)
    assert other.returncode != 0
    assert "conflict" in other.stderr.lower() and ".spec.spot.maxRecoveries" in other.stderr
    assert "argocd" in other.stderr
    kubectl("apply", "--server-side", "--field-manager=flux", "--force-conflicts", "-f", "-",
            input=example(repo, kube_namespace, maxRecoveries=5))
    stored = kube_cluster.api.get(FINETUNEJOBS, "support-bot-v1", kube_namespace)
    assert stored["spec"]["spot"]["maxRecoveries"] == 5
    managers = {m["manager"] for m in stored["metadata"]["managedFields"]}
    assert {"argocd", "flux"} <= managers


def test_logs_describe_and_wait_on_a_pod_the_node_agent_ran(kubectl, kube_namespace, node_agent):
    node_agent([NodeTemplate("kubectl-node", {"karpenter.sh/capacity-type": "on-demand"})])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"}, "spec": {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": "kubetune/trainer:dev",
            "command": ["python", "-c", "import time\nfor i in range(3): print('line', i, flush=True)\n"
                        "time.sleep(1)"],
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }]}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/talker", "--timeout=60s")
    assert kubectl("logs", "talker").stdout == "line 0\nline 1\nline 2\n"
    assert kubectl("logs", "talker", "--tail=1").stdout == "line 2\n"
    described = kubectl("describe", "pod", "talker").stdout
    assert "Node:             kubectl-node/" in described
    assert "Successfully assigned" in described and "Scheduled" in described  # the scheduler's Event


def test_pod_security_restricted_refuses_a_pod_without_a_security_context(kubectl):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loose"}, "spec": {
        "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
    assert "allowPrivilegeEscalation != false" in result.stderr and "runAsNonRoot" in result.stderr
    assert kubectl("get", "pods", "-o", "name").stdout == ""


def test_explain_reads_the_crd_schema(kubectl):
    out = kubectl("explain", "finetunejob.spec.spot").stdout
    assert "KIND:       FineTuneJob" in out and "maxRecoveries" in out
    assert kubectl("explain", "finetunejob.spec.spot.maxRecoveries").stdout.count("DESCRIPTION") == 1
