"""The examples, applied and read back with the real kubectl against the real API server."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from kubetune.devenv.controlplane import ADMIN
from kubetune.devenv.tools import tool_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kubectl(kube_cluster):
    """kubectl in the examples' own namespace, ml-team, made for this module."""
    kube_cluster.namespace("ml-team")
    kubeconfig = kube_cluster.control_plane.kubeconfig(ADMIN, "ml-team")

    def run(*args, input=None, check=True):
        result = subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig), *args],
                                input=input, capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    yield run
    kube_cluster.delete_namespace("ml-team")


def test_apply_examples_then_get_them_back(kubectl, repo):
    for example in ("finetune.yaml", "modelserve.yaml"):
        out = kubectl("apply", "-f", str(repo / "examples" / example)).stdout
        assert "created" in out, out
    table = kubectl("get", "ftj").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "RECOVERIES", "AGE"]
    assert table[1].split()[0] == "support-bot-v1"
    table = kubectl("get", "ms").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "ADAPTERS", "ENDPOINT", "AGE"]
    stored = yaml.safe_load(kubectl("get", "ftj", "support-bot-v1", "-o", "yaml").stdout)
    # The API server's defaulting ran: fields the example leaves out are filled in.
    assert stored["spec"]["training"]["maxGradNorm"] == 1.0
    assert stored["metadata"]["generation"] == 1
    everything = kubectl("get", "kubetune").stdout
    assert "finetunejob.kubetune.dev/support-bot-v1" in everything
    assert "modelserve.kubetune.dev/support-bots" in everything


def test_reapply_with_a_mutable_change_patches(kubectl, repo):
    body = yaml.safe_load((repo / "examples" / "finetune.yaml").read_text())
    body["spec"]["spot"]["maxRecoveries"] = 4
    out = kubectl("apply", "-f", "-", input=yaml.safe_dump(body)).stdout
    assert "configured" in out, out
    stored = yaml.safe_load(kubectl("get", "ftj", "support-bot-v1", "-o", "yaml").stdout)
    assert stored["spec"]["spot"]["maxRecoveries"] == 4
    assert stored["metadata"]["generation"] == 2


def test_kubectl_shows_the_refusal_naming_the_field(kubectl, repo):
    body = yaml.safe_load((repo / "examples" / "finetune.yaml").read_text())
    body["metadata"]["name"] = "bad-lr"
    body["spec"]["training"]["learningRate"] = 7
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0
    assert "spec.training.learningRate" in result.stderr, result.stderr
    assert "bad-lr" not in kubectl("get", "ftj").stdout


def test_immutable_change_is_refused_through_kubectl(kubectl, repo):
    body = yaml.safe_load((repo / "examples" / "finetune.yaml").read_text())
    body["spec"]["dataset"]["uri"] = "s3://ml-team-data/support/other.jsonl"
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0
    assert "spec.dataset" in result.stderr and "immutable" in result.stderr, result.stderr


def test_get_one_object_shows_the_printer_columns(kubectl):
    table = kubectl("get", "ftj", "support-bot-v1").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "RECOVERIES", "AGE"]
    assert table[1].split()[0] == "support-bot-v1"
