"""Adapter resolution, status computation and apply patches: pure, table-driven."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from kubetune.api import ModelServeSpec, ModelServeStatus, parse_spec
from kubetune.operator.conditions import status_patch
from kubetune.operator.modelserve.apply import LAST_APPLIED, apply_patch, with_last_applied
from kubetune.operator.modelserve.resolve import Resolution, referenced_jobs, resolve_adapters
from kubetune.operator.modelserve.status import (
    Observed,
    PodReport,
    compute_status,
    invalid_spec_status,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
URI = "s3://out/default/job-a/adapter"
SHA = "d" * 64


def serve_spec(*adapters) -> ModelServeSpec:
    body = {"baseModel": {"uri": "s3://models/base"}, "adapters": list(adapters)}
    return parse_spec(ModelServeSpec, body)


def job(phase: str | None, adapter: dict | None = None, message: str | None = None) -> dict:
    status = {}
    if phase:
        status["phase"] = phase
    if adapter:
        status["adapter"] = adapter
    if message:
        status["message"] = message
    return {"metadata": {"name": "job-a"}, "status": status}


RESOLVE_CASES = {
    # name: (job body or None, expected state, expected uri, message fragment)
    "missing job": (None, "Pending", None, "not found"),
    "new job without status": (job(None), "Pending", None, "(Pending)"),
    "running job": (job("Running"), "Pending", None, "(Running)"),
    "recovering job": (job("Recovering"), "Pending", None, "(Recovering)"),
    "succeeded job": (job("Succeeded", {"uri": URI, "sha256": SHA, "sizeBytes": 9}),
                      "Resolved", URI, None),
    "succeeded without adapter": (job("Succeeded"), "Failed", None, "no status.adapter.uri"),
    "failed job": (job("Failed", message="trainer exited 1: CUDA OOM"), "Failed", None,
                   "failed: trainer exited 1: CUDA OOM"),
}


@pytest.mark.parametrize("case", sorted(RESOLVE_CASES))
def test_fine_tune_job_refs_resolve_by_job_state(case):
    body, state, uri, fragment = RESOLVE_CASES[case]
    spec = serve_spec({"name": "a", "fineTuneJobRef": {"name": "job-a"}})
    (result,) = resolve_adapters(spec, {"job-a": body})
    assert (result.state, result.uri, result.job) == (state, uri, "job-a")
    if fragment:
        assert fragment in result.message
    if state == "Resolved":
        assert result.sha256 == SHA


def test_an_unpromoted_adapter_is_served_only_where_the_reference_allows_it():
    body = job("NotPromoted", {"uri": URI, "sha256": SHA},
               message="final exactMatch 0.1 misses the gate: at least 0.9")
    spec = serve_spec({"name": "strict", "fineTuneJobRef": {"name": "job-a"}},
                      {"name": "lenient", "fineTuneJobRef": {"name": "job-a",
                                                             "allowUnpromoted": True}},
                      {"name": "pinned", "uri": URI, "sha256": SHA})
    strict, lenient, pinned = resolve_adapters(spec, {"job-a": body})
    assert strict.state == "Failed" and strict.uri is None
    assert "did not promote" in strict.message and "misses the gate" in strict.message
    assert "allowUnpromoted" in strict.message
    assert (lenient.state, lenient.uri, lenient.sha256) == ("Resolved", URI, SHA)
    assert (pinned.state, pinned.uri) == ("Resolved", URI)  # explicit uri+sha256: as before


def test_uri_adapters_resolve_to_themselves_and_jobs_are_listed_once():
    spec = serve_spec(
        {"name": "x", "uri": "s3://bucket/x", "sha256": SHA},
        {"name": "a", "fineTuneJobRef": {"name": "job-a"}},
        {"name": "b", "fineTuneJobRef": {"name": "job-a"}},
    )
    assert referenced_jobs(spec) == ["job-a"]
    results = resolve_adapters(spec, {"job-a": None})
    assert [(r.name, r.state) for r in results] == [
        ("x", "Resolved"), ("a", "Pending"), ("b", "Pending")]
    assert (results[0].uri, results[0].sha256) == ("s3://bucket/x", SHA)


# Status ---------------------------------------------------------------------------------

RESOLVED = Resolution("a", "Resolved", uri=URI, sha256=SHA, job="job-a")
PENDING = Resolution("p", "Pending", message="waiting for FineTuneJob job-p (Running)", job="job-p")
FAILED_JOB = Resolution("f", "Failed", message="FineTuneJob job-f failed: OOM", job="job-f")


def deployment(replicas=1, ready=1, updated=1, generation=2, observed=2) -> dict:
    return {"metadata": {"generation": generation}, "status": {
        "replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
        "observedGeneration": observed}}


def pod(name="p-0", state="Loaded", uri=URI, sha=SHA, ready=True, message=None) -> PodReport:
    view = {"name": "a", "uri": uri, "state": state, "sha256": sha, "message": message}
    return PodReport(name, ready, {"a": view})


STATUS_CASES = {
    # name: (resolutions, desired replicas, deployment, pod reports,
    #        (phase, Ready, Reconciling, Stalled), {adapter: (state, replicasLoaded)})
    "no deployment yet": ([RESOLVED], 1, None, [], ("Progressing", "False", "True", "False"),
                          {"a": ("Loading", 0)}),
    "generation not observed": ([RESOLVED], 1, deployment(observed=1), [pod()],
                                ("Progressing", "False", "True", "False"), {"a": ("Loaded", 1)}),
    "rolling: old replica left": ([RESOLVED], 1, deployment(replicas=2, ready=2),
                                  [pod(), pod("p-1")],
                                  ("Progressing", "False", "True", "False"), {"a": ("Loaded", 2)}),
    "replica not ready": ([RESOLVED], 2, deployment(replicas=2, ready=1, updated=2),
                          [pod(), pod("p-1", ready=False)],
                          ("Progressing", "False", "True", "False"), {"a": ("Loaded", 1)}),
    "adapter loading": ([RESOLVED], 1, deployment(), [pod(state="Loading")],
                        ("Progressing", "False", "True", "False"), {"a": ("Loading", 0)}),
    "pod still on the old uri": ([RESOLVED], 1, deployment(), [pod(uri="s3://old/adapter")],
                                 ("Progressing", "False", "True", "False"), {"a": ("Loading", 0)}),
    "pod has another sha": ([RESOLVED], 1, deployment(), [pod(sha="e" * 64)],
                            ("Progressing", "False", "True", "False"), {"a": ("Loading", 0)}),
    "pod unreachable": ([RESOLVED], 1, deployment(), [PodReport("p-0", True, None, "refused")],
                        ("Progressing", "False", "True", "False"), {"a": ("Loading", 0)}),
    "ready": ([RESOLVED], 1, deployment(), [pod()], ("Ready", "True", "False", "False"),
              {"a": ("Loaded", 1)}),
    "ready on two replicas": ([RESOLVED], 2, deployment(2, 2, 2), [pod(), pod("p-1")],
                              ("Ready", "True", "False", "False"), {"a": ("Loaded", 2)}),
    "ready, other adapter pending on a job": (
        [RESOLVED, PENDING], 1, deployment(), [pod()], ("Ready", "True", "False", "False"),
        {"a": ("Loaded", 1), "p": ("Pending", 0)}),
    "adapter refused by the server": (
        [RESOLVED], 1, deployment(), [pod(state="Failed", message="sha256 mismatch")],
        ("Degraded", "False", "False", "True"), {"a": ("Failed", 0)}),
    "referenced job failed": ([RESOLVED, FAILED_JOB], 1, deployment(), [pod()],
                              ("Degraded", "False", "False", "True"),
                              {"a": ("Loaded", 1), "f": ("Failed", 0)}),
    "no adapters at all": ([], 1, deployment(), [PodReport("p-0", True, {})],
                           ("Ready", "True", "False", "False"), {}),
}


@pytest.mark.parametrize("case", sorted(STATUS_CASES))
def test_status_from_observations(case):
    resolutions, desired, deploy, pods, conditions, adapters = STATUS_CASES[case]
    observed = Observed(generation=3, desired_replicas=desired, deployment=deploy, pods=pods)
    status = ModelServeStatus.model_validate(
        compute_status(resolutions, observed, "http://s.ns.svc:8000/v1", None, NOW))
    phase, ready, reconciling, stalled = conditions
    assert status.phase == phase
    found = {c.type: c.status for c in status.conditions}
    assert found == {"Ready": ready, "Reconciling": reconciling, "Stalled": stalled}
    assert all(c.observed_generation == 3 for c in status.conditions)
    assert {a.name: (a.state, a.replicas_loaded) for a in status.adapters} == adapters
    assert status.observed_generation == 3
    assert status.endpoint == "http://s.ns.svc:8000/v1"
    loaded = sum(state == "Loaded" for state, _ in adapters.values())
    assert status.adapters_display == f"{loaded}/{len(adapters)}"
    assert status.ready_display == f"{status.ready_replicas}/{desired}"


def test_messages_explain_pending_and_failed_adapters():
    observed = Observed(1, 1, deployment(), [pod(state="Failed", message="pickle refused")])
    status = compute_status([RESOLVED, PENDING], observed, "e", None, NOW)
    assert "p-0: pickle refused" in status["adapters"][0]["message"]
    assert status["adapters"][1]["message"] == PENDING.message
    assert "adapter a: p-0: pickle refused" in status["message"]
    assert "pending: p: waiting for FineTuneJob job-p" in status["message"]


def test_unchanged_observations_give_no_status_write_and_keep_transition_times():
    observed = Observed(1, 1, deployment(), [pod()])
    first = compute_status([RESOLVED], observed, "e", None, NOW)
    again = compute_status([RESOLVED], observed, "e", first, NOW + timedelta(minutes=5))
    assert again == first
    assert status_patch(first, again) is None
    loading = Observed(1, 1, deployment(), [pod(state="Loading")])
    changed = compute_status([RESOLVED], loading, "e", first, NOW + timedelta(minutes=5))
    patch = status_patch(first, changed)
    assert patch is not None and patch["status"]["phase"] == "Progressing"
    times = {c["type"]: c["lastTransitionTime"] for c in changed["conditions"]}
    assert times["Ready"] != times["Stalled"]  # Stalled stayed False, so its time did not move


def test_invalid_spec_is_stalled_with_the_reason():
    status = ModelServeStatus.model_validate(
        invalid_spec_status("spec.replicas: must be <= 64", 4, None, NOW))
    assert status.phase == "Failed"
    found = {c.type: (c.status, c.reason) for c in status.conditions}
    assert found["Stalled"] == ("True", "InvalidSpec")
    assert found["Ready"][0] == "False"
    assert "spec.replicas" in status.message


# Apply ----------------------------------------------------------------------------------

def desired(**spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "n", "labels": {"a": "1"}},
            "spec": {"replicas": 1, "template": {"spec": {"nodeSelector": {"k": "v"}}}, **spec}}


def live(body: dict, **server_fields) -> dict:
    """What the API server returns: our body plus fields it sets itself."""
    obj = with_last_applied(body)
    obj["metadata"].update(uid="u", resourceVersion="7", **server_fields)
    obj["spec"]["progressDeadlineSeconds"] = 600  # a server default we never set
    return obj


def test_apply_sends_nothing_when_in_sync_despite_server_defaults():
    assert apply_patch(desired(), live(desired())) is None


def test_apply_removes_keys_dropped_from_the_desired_body():
    now_wanted = desired()
    del now_wanted["spec"]["template"]["spec"]["nodeSelector"]
    patch = apply_patch(now_wanted, live(desired()))
    assert patch["spec"]["template"]["spec"]["nodeSelector"] is None
    assert "progressDeadlineSeconds" not in patch["spec"]
    assert LAST_APPLIED in patch["metadata"]["annotations"]


def test_apply_repairs_an_out_of_band_edit():
    edited = live(desired())
    edited["spec"]["replicas"] = 5
    patch = apply_patch(desired(), edited)
    assert patch["spec"]["replicas"] == 1


def test_an_unreadable_old_status_keeps_its_conditions_and_is_replaced():
    observed = Observed(1, 1, deployment(), [pod()])
    first = compute_status([RESOLVED], observed, "e", None, NOW)
    stale = {**first, "phase": "Exploded", "kopf": {"progress": {}}}
    again = compute_status([RESOLVED], observed, "e", stale, NOW + timedelta(minutes=5))
    assert again["conditions"] == first["conditions"]
    patch = status_patch(stale, again)["status"]
    assert patch == {"phase": "Ready", "kopf": None}


def test_old_replicas_kept_for_unready_updated_ones_are_explained():
    """The real Deployment controller leaves terminating pods out of status.replicas, so
    a surplus means old replicas still serving while the updated ones load."""
    observed = Observed(2, 1, deployment(replicas=2, ready=1, updated=1), [pod()])
    status = compute_status([RESOLVED], observed, "e", None, NOW)
    assert status["phase"] == "Progressing"
    assert status["message"] == (
        "rolling out: 1 old replicas serving until the updated ones are ready")
