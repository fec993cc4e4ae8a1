"""What a user sees when `kubectl apply -f` meets a bad FineTuneJob: the real kubectl 1.37
against the real API server, exit status non-zero, the field named on stderr, and nothing
left behind for `kubectl get` to find."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from crd_api import FTJ, KINDS, example, mutate

from kubetune.devenv.tools import tool_path


def _kubectl(kubeconfig, namespace: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig),
                           "--namespace", namespace, *args],
                          capture_output=True, text=True, timeout=60)


CASES = [
    # (name, spec path, value, what stderr must name, and one phrase of why)
    ("bad-memory", "spec.resources.memory", "16GiGi", "spec.resources.memory", '"16GiGi"'),
    ("bad-cpu", "spec.resources.cpu", "1.2.3", "spec.resources.cpu", '"1.2.3"'),
    ("Bad_Name", None, None, "metadata.name", "RFC 1123 subdomain"),
    ("n" * 54, None, None, "metadata.name", f"at most {KINDS[FTJ].max_name_length} characters"),
]


@pytest.mark.parametrize("name,path,value,field,phrase", CASES,
                         ids=["quantity-memory", "quantity-cpu", "name-chars", "name-length"])
def test_kubectl_apply_of_a_bad_finetunejob_names_the_field_and_stores_nothing(
    kube_cluster, kube_namespace, tmp_path, name, path, value, field, phrase
):
    body = example(FTJ, name)
    if path:
        body = mutate(body, path, value)
    manifest = tmp_path / "finetune.yaml"
    manifest.write_text(yaml.safe_dump(body, sort_keys=False))

    applied = _kubectl(kube_cluster.kubeconfig, kube_namespace, "apply", "-f", str(manifest))
    assert applied.returncode != 0, applied.stdout
    assert field in applied.stderr and phrase in applied.stderr, applied.stderr
    assert "is invalid" in applied.stderr, applied.stderr

    listed = _kubectl(kube_cluster.kubeconfig, kube_namespace, "get", "finetunejobs")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "" and "No resources found" in listed.stderr, listed
