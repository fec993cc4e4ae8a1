"""Real kubectl 1.37 against the emulated API server, with the project's CRDs."""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from conftest import FTJ_PATH, small_ftj

pytestmark = pytest.mark.integration

MERGE = "application/merge-patch+json"


def write_manifest(tmp_path, name: str, obj: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(obj))
    return str(path)


def test_apply_create_then_reapply_patches(kubectl, apiserver, tmp_path):
    obj = small_ftj("demo", team="ml")
    first = kubectl("apply", "-f", write_manifest(tmp_path, "v1", obj))
    assert "finetunejob.kubetune.dev/demo created" in first.stdout
    stored = apiserver.get("kubetune.dev", "v1alpha1", "finetunejobs", "default", "demo")
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]

    obj["spec"]["output"]["uri"] = "s3://bucket/out2"
    obj["metadata"]["labels"] = {"team": "ml2"}
    second = kubectl("apply", "-f", write_manifest(tmp_path, "v2", obj))
    assert "finetunejob.kubetune.dev/demo configured" in second.stdout
    patches = apiserver.call(lambda emu: [
        r.headers.get("Content-Type") for r in emu.request_log
        if r.method == "PATCH" and r.url.path.endswith("/finetunejobs/demo")])
    assert patches == [MERGE]
    updated = apiserver.get("kubetune.dev", "v1alpha1", "finetunejobs", "default", "demo")
    assert updated["spec"]["output"]["uri"] == "s3://bucket/out2"
    assert updated["metadata"]["labels"] == {"team": "ml2"}
    assert updated["metadata"]["generation"] == 2
    unchanged = kubectl("apply", "-f", write_manifest(tmp_path, "v3", obj))
    assert "unchanged" in unchanged.stdout


def test_validate_strict_refuses_unknown_fields_and_false_prunes(kubectl, apiserver, tmp_path):
    obj = small_ftj("typo")
    obj["spec"]["learningrate"] = 0.1
    path = write_manifest(tmp_path, "typo", obj)
    refused = kubectl("apply", "-f", path, check=False)
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.learningrate"' in refused.stderr
    kubectl("apply", "--validate=false", "-f", path)
    stored = apiserver.get("kubetune.dev", "v1alpha1", "finetunejobs", "default", "typo")
    assert "learningrate" not in stored["spec"]


def test_admission_refusal_reaches_kubectl(kubectl, tmp_path):
    obj = small_ftj("badlr")
    obj["spec"]["training"] = {"learningRate": -1}
    result = kubectl("apply", "-f", write_manifest(tmp_path, "bad", obj), check=False)
    assert result.returncode != 0
    # kubectl rewrites a 422 that has causes into its own sentence, as with a real server.
    assert 'The FineTuneJob "badlr" is invalid: spec.training.learningRate: Invalid value: -1' \
        in result.stderr


def test_get_short_name_columns_yaml_and_label_selector(kubectl, http, tmp_path):
    kubectl("apply", "-f", write_manifest(tmp_path, "a", small_ftj("alpha", team="a")))
    kubectl("apply", "-f", write_manifest(tmp_path, "b", small_ftj("beta", team="b")))
    http("PATCH", f"{FTJ_PATH}/alpha/status", {"status": {
        "phase": "Running", "progress": {"display": "40/100", "loss": 1.25}, "recoveries": 2}},
        MERGE)
    table = kubectl("get", "ftj").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "RECOVERIES", "AGE"]
    alpha = next(line for line in table if line.startswith("alpha")).split()
    assert alpha[:5] == ["alpha", "Running", "40/100", "1.25", "2"]
    assert kubectl("get", "ftj", "-l", "team=b", "-o", "name").stdout.split() == [
        "finetunejob.kubetune.dev/beta"]
    doc = yaml.safe_load(kubectl("get", "ftj", "alpha", "-o", "yaml").stdout)
    assert doc["kind"] == "FineTuneJob" and doc["status"]["phase"] == "Running"
    assert doc["metadata"]["resourceVersion"]
    assert "alpha" in kubectl("get", "kubetune").stdout  # the category
    missing = kubectl("get", "ftj", "nope", check=False)
    assert 'finetunejobs.kubetune.dev "nope" not found' in missing.stderr


def test_delete_and_get_events(kubectl, http, tmp_path):
    kubectl("apply", "-f", write_manifest(tmp_path, "d", small_ftj("doomed")))
    http("POST", "/api/v1/namespaces/default/events", {
        "metadata": {"name": "doomed.1"}, "type": "Warning", "reason": "Preempted",
        "message": "spot node reclaimed", "involvedObject": {"kind": "FineTuneJob",
                                                             "name": "doomed"}})
    events = kubectl("get", "events").stdout
    assert "Preempted" in events and "spot node reclaimed" in events
    assert "deleted" in kubectl("delete", "ftj", "doomed").stdout
    assert "No resources found" in kubectl("get", "ftj").stderr


def test_wait_for_condition_set_by_another_thread(kubectl, http, tmp_path):
    kubectl("apply", "-f", write_manifest(tmp_path, "w", small_ftj("waited")))

    def finish_later() -> None:
        time.sleep(1.5)
        http("PATCH", f"{FTJ_PATH}/waited/status", {"status": {"phase": "Running"}}, MERGE)
        time.sleep(0.5)
        http("PATCH", f"{FTJ_PATH}/waited/status", {"status": {"phase": "Succeeded",
              "conditions": [{"type": "Succeeded", "status": "True", "reason": "Done",
                              "message": "adapter written",
                              "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}, MERGE)

    writer = threading.Thread(target=finish_later)
    started = time.monotonic()
    writer.start()
    result = kubectl("wait", "--for=condition=Succeeded", "ftj/waited", "--timeout=20s")
    writer.join()
    assert "condition met" in result.stdout
    assert 1.5 <= time.monotonic() - started < 15


def test_wait_times_out_when_condition_never_comes(kubectl, tmp_path):
    kubectl("apply", "-f", write_manifest(tmp_path, "n", small_ftj("never")))
    result = kubectl("wait", "--for=condition=Succeeded", "ftj/never", "--timeout=2s",
                     check=False)
    assert result.returncode != 0 and "timed out" in result.stderr
