"""spec.spot on the real API server and in the models.

A spot policy whose fallback can never act is refused: with FallbackToOnDemand on spot,
fallbackAfterPreemptions above maxRecoveries means the job fails after maxRecoveries
preemptions before it would move to on-demand. Refused by the models and by the CRD's
CEL on the real API server, naming spec.spot; the boundary (equal) is accepted, and the
recovery decisions show why: at equal counts the last recovery is the fallback.

And `kubectl explain` states what a kill without notice can lose, which the background
checkpoint uploads make up to two intervals, not one.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from crd_api import (
    FTJ,
    assert_refused_naming,
    create,
    example,
    message,
    refusal,
    stored_names,
)
from polling import wait_for

from kubetune.api import FineTuneJobSpec, SpecError, parse_spec
from kubetune.devenv.tools import tool_path
from kubetune.operator.pod_state import PodState
from kubetune.operator.recovery import RecoveryState, decide

PHRASE = "fallbackAfterPreemptions must not exceed maxRecoveries"

# (id, spec.spot as written: the example's spot block is replaced whole)
REFUSED = [
    ("default maxRecoveries, fallback 11", {"enabled": True, "fallbackAfterPreemptions": 11}),
    ("default fallback, maxRecoveries 2", {"enabled": True, "maxRecoveries": 2}),
    ("no recoveries at all", {"enabled": True, "maxRecoveries": 0}),
    ("explicit strategy", {"enabled": True, "strategy": "FallbackToOnDemand",
                           "maxRecoveries": 4, "fallbackAfterPreemptions": 5}),
]
ACCEPTED = [
    ("equal", {"enabled": True, "maxRecoveries": 5, "fallbackAfterPreemptions": 5}),
    ("default maxRecoveries, fallback 10", {"enabled": True, "fallbackAfterPreemptions": 10}),
    ("defaults", {"enabled": True}),
    ("StayOnSpot ignores the count", {"enabled": True, "strategy": "StayOnSpot",
                                      "maxRecoveries": 1, "fallbackAfterPreemptions": 50}),
    # Off spot the job runs on on-demand capacity and the strategy never acts; a job that
    # only bounds its recoveries (e.g. Kueue evictions) is not refused for the default.
    ("spot off", {"maxRecoveries": 1}),
    ("spot off, explicit", {"enabled": False, "maxRecoveries": 1, "fallbackAfterPreemptions": 9}),
]


def _body(name: str, spot: dict) -> dict:
    body = example(FTJ, name)
    body["spec"]["spot"] = dict(spot)
    return body


@pytest.mark.parametrize("why,spot", REFUSED, ids=[row[0] for row in REFUSED])
def test_models_refuse_a_fallback_that_never_acts(why, spot):
    with pytest.raises(SpecError) as refused:
        parse_spec(FineTuneJobSpec, _body("x", spot)["spec"])
    named = str(refused.value)
    assert named.startswith(f"spec.spot: {PHRASE}"), named
    assert "StayOnSpot" in named, named  # the way out is named


@pytest.mark.parametrize("why,spot", ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_models_accept_a_fallback_that_can_act(why, spot):
    parse_spec(FineTuneJobSpec, _body("x", spot)["spec"])


@pytest.mark.parametrize("index", range(len(REFUSED)), ids=[row[0] for row in REFUSED])
def test_api_server_refuses_a_fallback_that_never_acts(kube_cluster, api_namespace, index):
    body = _body(f"spot-refused-{index}", REFUSED[index][1])
    for dry_run in (True, False):
        error = refusal(kube_cluster.api, api_namespace, body, dry_run)
        assert_refused_naming(error, "spec.spot")
        assert PHRASE in message(error), message(error)
    assert body["metadata"]["name"] not in stored_names(kube_cluster.api, api_namespace, FTJ)


@pytest.mark.parametrize("index", range(len(ACCEPTED)), ids=[row[0] for row in ACCEPTED])
def test_api_server_accepts_a_fallback_that_can_act(kube_cluster, api_namespace, index):
    body = _body(f"spot-accepted-{index}", ACCEPTED[index][1])
    stored = create(kube_cluster.api, api_namespace, body, dry_run=True)
    parse_spec(FineTuneJobSpec, stored["spec"])


def test_at_equal_counts_the_last_recovery_is_the_fallback():
    """Why equal is allowed: the budget's last preemption still moves the job."""
    spot = {"enabled": True, "maxRecoveries": 2, "fallbackAfterPreemptions": 2}
    spec = parse_spec(FineTuneJobSpec, _body("x", spot)["spec"])
    preempted = PodState("Preempted", "TerminationByKubelet", "node shutdown", True)
    first = decide(spec, RecoveryState(1, "spot", 0, 0), preempted, None)
    second = decide(spec, first.next, preempted, None)
    third = decide(spec, second.next, preempted, None)
    assert (first.action, second.action, third.action) == ("recover", "fallback", "fail")
    assert second.next.capacity_type == "on-demand"


def test_kubectl_explain_states_the_loss_bound_of_a_hard_kill(kube_cluster, tmp_path):
    def explain():
        # A fresh discovery cache each try: the CRDs were installed moments ago, and the
        # API server publishes their schema a little later.
        run = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(kube_cluster.kubeconfig),
             "--cache-dir", str(tmp_path / f"cache-{time.monotonic_ns()}"), "explain",
             "finetunejob.spec.spot.checkpointIntervalSteps"],
            capture_output=True, text=True, timeout=60)
        return run.stdout if run.returncode == 0 else None

    text = " ".join(wait_for(explain, "kubectl explain of the FineTuneJob CRD").split())
    assert "SIGTERM" in text and "loses nothing" in text, text
    assert "SIGKILL" in text and "at most N when no upload is in flight" in text, text
    assert "at most 2N while one is" in text, text
