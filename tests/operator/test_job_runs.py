"""One run for a job (handlers.Runtime.run), on fakes: the finalizer is added by the first
run, a body our last write was based on is not decided on again until the watch brings
the result, deletion releases the finalizer once the Finalizer is done."""

from __future__ import annotations

import asyncio
import copy

from kubetune.operator.finalizer import Finalized
from kubetune.operator.finetune_service import Result
from kubetune.operator.handlers import ECHO_WAIT_SECONDS, FINALIZER, INTERVAL, Runtime

KEY = ("ns", "j")


def body(rv="1", finalizers=(), deleting=False) -> dict:
    meta = {"name": "j", "namespace": "ns", "uid": "u", "generation": 1,
            "resourceVersion": rv, "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-01T12:00:00Z"
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": meta,
            "spec": {}, "status": {}}


class FakeKube:
    def __init__(self):
        self.patches = []

    def patch(self, kind, name, namespace, patch, subresource=""):
        self.patches.append(copy.deepcopy(patch))
        updated = body(rv=str(int(patch["metadata"]["resourceVersion"]) + 1),
                       finalizers=patch["metadata"]["finalizers"])
        return updated


class FakeService:
    def __init__(self):
        self.bodies = []

    def reconcile(self, body, sync=False, view=None):
        self.bodies.append((body["metadata"]["resourceVersion"], sync))
        return Result("Scheduling", wrote_status=True)


class FakeFinalizer:
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)

    def finalize(self, body, tries):
        return self.outcomes.pop(0)


def runtime_with(current: dict) -> Runtime:
    runtime = Runtime(watch_children=False)
    runtime.kube, runtime.service = FakeKube(), FakeService()
    runtime.jobs = {KEY: [current]}
    return runtime


def test_the_first_run_adds_the_finalizer_then_reconciles_the_body_it_got_back():
    runtime = runtime_with(body())
    delay = asyncio.run(runtime.run(KEY, False))
    assert runtime.kube.patches == [{"metadata": {"finalizers": [FINALIZER],
                                                  "resourceVersion": "1"}}]
    assert runtime.service.bodies == [("2", True)]  # a fresh job: sync its children
    assert runtime.synced[KEY] == 1 and delay == INTERVAL


def test_a_body_our_last_write_was_based_on_waits_for_the_watch():
    runtime = runtime_with(body(rv="5", finalizers=[FINALIZER]))
    asyncio.run(runtime.run(KEY, False))
    assert runtime.written[KEY][0] == "5"
    # The watch has not brought the write's result yet: same body, no second decision.
    assert asyncio.run(runtime.run(KEY, False)) == ECHO_WAIT_SECONDS
    assert runtime.service.bodies == [("5", False)] and KEY in runtime.awaiting
    runtime.jobs = {KEY: [body(rv="6", finalizers=[FINALIZER])]}
    asyncio.run(runtime.run(KEY, False))
    assert runtime.service.bodies == [("5", False), ("6", False)]


def test_deletion_releases_the_finalizer_once_the_finalizer_is_done():
    runtime = runtime_with(body(rv="9", finalizers=["other/keep", FINALIZER], deleting=True))
    runtime.finalizer = FakeFinalizer([Finalized(False, retry_after=2.0), Finalized(True)])
    assert asyncio.run(runtime.run(KEY, False)) == 2.0 and runtime.kube.patches == []
    assert asyncio.run(runtime.run(KEY, False)) is None
    assert runtime.kube.patches == [{"metadata": {"finalizers": ["other/keep"],
                                                  "resourceVersion": "9"}}]
    assert runtime.service.bodies == []  # a job being deleted is never reconciled


def test_cleanup_warnings_are_counted_and_cleanup_is_abandoned_after_the_last_try(monkeypatch):
    from kubetune.operator import handlers

    warnings = []
    monkeypatch.setattr(handlers.kopf, "warn",
                        lambda body, reason, message: warnings.append(reason))
    runtime = runtime_with(body())
    job = body()
    failed = Finalized(False, retry_after=5.0, warning="checkpoint cleanup failed: denied")
    assert runtime.judge_cleanup(job, 0, failed) == 5.0
    assert runtime.judge_cleanup(job, 1, failed) == 5.0
    assert runtime.failed_cleanups == {"u": 2}
    assert runtime.judge_cleanup(job, 2, Finalized(True)) is None  # done: release
    last = handlers.MAX_DELETE_RETRIES - 1
    assert runtime.judge_cleanup(job, last - 1, Finalized(False, retry_after=2.0)) == 2.0
    assert runtime.judge_cleanup(job, last, Finalized(False, retry_after=2.0)) is None
    assert warnings == ["CheckpointCleanupFailed", "CheckpointCleanupFailed",
                        "CheckpointCleanupAbandoned"]
