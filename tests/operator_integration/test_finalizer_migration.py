"""FineTuneJobs of an earlier operator, which let Kopf finalize them (Kopf's finalizer,
`kubetune.dev/finalizer`), lose nothing to the upgrade: a job deleted while no operator
ran still gets its checkpoint cleanup before it goes (Kopf strips its finalizer from a
job that no handler needs it for, so without `legacy_cleanup` the job would vanish at
the new operator's first look and leave its checkpoints behind), and a live job has
that finalizer replaced by the operator's own."""

from __future__ import annotations

import pytest
from ftj_harness import finetunejob, wait_for

from kubetune.devenv.kubeapi import FINETUNEJOBS, PODS
from kubetune.operator.handlers import FINALIZER, KOPF_FINALIZER

pytestmark = pytest.mark.integration


def legacy_job(name: str) -> dict:
    body = finetunejob(name, "/models/tiny", "http://127.0.0.1:9",
                       **{"retention.checkpoints": "DeleteWithJob"})
    body["spec"]["baseModel"]["uri"] = "file:///models/tiny"
    body["metadata"]["finalizers"] = [KOPF_FINALIZER]
    return body


def test_jobs_finalized_by_an_earlier_operator_keep_their_cleanup(cluster):
    for name in ("gone", "live"):
        cluster.api.create(FINETUNEJOBS, legacy_job(name), cluster.namespace)
    cluster.api.delete(FINETUNEJOBS, "gone", cluster.namespace)
    assert cluster.job("gone")["metadata"]["deletionTimestamp"]  # held by the old finalizer
    operator = cluster.operator().start()
    try:
        wait_for(lambda: cluster.api.get(PODS, "gone-cleanup", cluster.namespace), 30,
                 "the deleted job's cleanup pod")
        assert cluster.job("gone") is not None, "released before its cleanup ran"
        cluster.api.patch(PODS, "gone-cleanup", {"status": {"phase": "Succeeded"}},
                          cluster.namespace, sub="status")
        wait_for(lambda: cluster.job("gone") is None, 30, "the deleted job to be released")

        live = wait_for(lambda: (cluster.job("live")["metadata"].get("finalizers") == [FINALIZER]
                                 and cluster.job("live")), 30, "the live job's finalizer replaced")
        assert live["status"]["phase"] == "Scheduling"
        cluster.api.delete(FINETUNEJOBS, "live", cluster.namespace)
        wait_for(lambda: cluster.api.get(PODS, "live-cleanup", cluster.namespace), 30,
                 "the live job's cleanup pod, from the operator's own finalizer")
        cluster.api.patch(PODS, "live-cleanup", {"status": {"phase": "Succeeded"}},
                          cluster.namespace, sub="status")
        wait_for(lambda: cluster.job("live") is None, 30, "the live job to be released")
    finally:
        operator.stop()
    assert "Traceback" not in operator.log_text(), operator.log_text()[-3000:]
