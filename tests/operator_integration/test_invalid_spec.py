"""A FineTuneJob the API server let through (its CRD older than the operator, see
`lenient_crd`) reaches the real operator process: it creates nothing, says which field
is wrong, and stops there."""

from __future__ import annotations

import time

import pytest
from ftj_harness import create_until_accepted, finetunejob, wait_for

from kubetune.devenv.kubeapi import CONFIGMAPS, SERVICES

pytestmark = pytest.mark.integration


def test_invalid_spec_is_stalled_naming_the_field_and_creates_nothing(bare_cluster):
    cluster = bare_cluster
    operator = cluster.operator().start()
    try:
        body = finetunejob("typo", "/models/tiny", "http://127.0.0.1:9")
        body["spec"]["baseModel"]["uri"] = "file:///models/tiny"
        body["spec"]["training"]["learningRate"] = -0.5
        body["spec"]["dataset"]["evalFraction"] = 0.9
        create_until_accepted(cluster, body)
        status = cluster.wait_phase("typo", {"Failed"}, 30)
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
        assert "spec.training.learningRate" in stalled["message"]
        assert "spec.dataset.evalFraction" in stalled["message"]
        assert status["observedGeneration"] == 1
        warning = wait_for(lambda: [e for e in cluster.events("typo") if e["type"] == "Warning"],
                           15, "a Warning Event")
        assert warning[0]["reason"] == "InvalidSpec"
        assert "spec.training.learningRate" in warning[0]["message"]

        version = cluster.job("typo")["metadata"]["resourceVersion"]
        time.sleep(5)  # two timer ticks: refused once, never rewritten
        assert cluster.job("typo")["metadata"]["resourceVersion"] == version
        assert cluster.pods() == []
        # Every namespace has the cluster's kube-root-ca.crt; the operator made nothing.
        assert [c["metadata"]["name"] for c in cluster.api.list(CONFIGMAPS, cluster.namespace)] \
            == ["kube-root-ca.crt"]
        assert cluster.api.list(SERVICES, cluster.namespace) == []
        assert "PermanentError" in operator.log_text() or "failed permanently" in \
            operator.log_text()
    finally:
        operator.stop()
