"""A FineTuneJob whose children the API server refuses, on a fake API that stores what
it accepts: reported at once (status naming the spec field, one FailedCreate Event),
nothing left behind, no retry storm (a backoff, no write for the same refusal again),
retried at once after a spec edit, started once the refusal clears; a quota waits
instead of stalling; transient errors keep what exists and raise."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from operator_specs import BASE_SPEC, merge, merged

from kubetune.operator.config import OperatorConfig
from kubetune.operator.finetune_service import FineTuneService
from kubetune.operator.kube import KubeError

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
ANSWERS = json.loads((Path(__file__).parent / "api_answers.json").read_text())
SA_FIELD = "spec.output.credentials.serviceAccountName"


def recorded(case: str) -> KubeError:
    """The API server's recorded answer, as the operator's client raises it."""
    answer = ANSWERS[case]
    status = answer["status"]
    return KubeError(answer["code"], status["message"], status["reason"], status.get("details"))


class FakeApi:
    """Objects by (kind, name); `refuse[(kind, name)]` is raised on its create."""

    def __init__(self, job: dict):
        self.job, self.objects, self.calls, self.refuse = job, {}, [], {}

    def _create(self, kind: str, body: dict) -> bool:
        name = body["metadata"]["name"]
        self.calls.append(("create", kind, name))
        if (kind, name) in self.refuse:
            raise self.refuse[(kind, name)]
        if (kind, name) in self.objects:
            return False
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = f"uid-{kind}-{name}"
        self.objects[(kind, name)] = stored
        return True

    def create(self, kind, body, dry_run=False):
        return self._create(body["kind"], body)

    def ensure(self, desired, likely_exists=False):
        return "created" if self._create(desired["kind"], desired) else "unchanged"

    def get(self, kind, name, namespace=None):
        self.calls.append(("get", kind.plural, name))
        return None

    def list(self, kind, namespace, labels):
        self.calls.append(("list", kind.plural))
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == "Pod"]

    def patch(self, kind, name, namespace, patch, subresource=""):
        self.calls.append(("patch", kind.plural, subresource))
        self.job = merged(self.job, {k: v for k, v in patch.items() if k != "metadata"})
        meta = self.job["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.job)

    def delete(self, kind, name, namespace=None, uid=None, grace_seconds=None):
        self.calls.append(("delete", kind.plural, name))
        kinds = {"pods": "Pod", "configmaps": "ConfigMap", "services": "Service"}
        return self.objects.pop((kinds.get(kind.plural, kind.plural), name), None) is not None

    def take(self) -> list:
        calls, self.calls = self.calls, []
        return calls

    def kinds(self) -> list[str]:
        return sorted(kind for kind, _ in self.objects)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def new_job(**spec):
    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "job-uid", "generation": 1,
                         "resourceVersion": "1"},
            "spec": merge(BASE_SPEC, merge({"spot": {"enabled": False}}, spec))}
    api, clock, events = FakeApi(body), Clock(), []
    service = FineTuneService(api, OperatorConfig(), now=clock, poll=lambda pod, port: None,
                              emit=lambda body, kind, reason, message:
                              events.append((kind, reason, message)))
    return api, service, clock, events


def run(api, service, sync=False):
    return service.reconcile(copy.deepcopy(api.job), sync_children=sync)


def condition(api, kind: str) -> dict:
    return next(c for c in api.job["status"]["conditions"] if c["type"] == kind)


def two_workers_without_service_account():
    api, service, clock, events = new_job(
        resources={"workers": 2}, output={"credentials": {"serviceAccountName": "late-sa"}})
    for pod in ("j-head", "j-worker-1"):
        api.refuse[("Pod", pod)] = recorded("pod-service-account-missing")
    return api, service, clock, events


def test_a_missing_service_account_stalls_the_job_naming_the_field_and_leaves_nothing():
    api, service, clock, events = two_workers_without_service_account()
    result = run(api, service, sync=True)
    status = api.job["status"]
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    stalled, reconciling = condition(api, "Stalled"), condition(api, "Reconciling")
    assert stalled["status"] == "True" and reconciling["status"] == "False"
    assert stalled["reason"] == "ChildRefused" and stalled["message"].startswith(SA_FIELD)
    assert "error looking up service account" in stalled["message"]
    assert "attempt" not in status and "nextAttemptAfter" not in status  # never started
    assert events == [("Warning", "FailedCreate", status["message"])]
    # The ConfigMap and Service came first and were removed again; the Secret (which
    # the operator may not delete) was never created: it follows the pods.
    calls = api.take()
    assert [c for c in calls if c[0] == "create"] == [
        ("create", "ConfigMap", "j-spec"), ("create", "Service", "j-head"),
        ("create", "Pod", "j-head")]
    assert ("delete", "configmaps", "j-spec") in calls and ("delete", "services", "j-head") \
        in calls
    assert api.kinds() == [] and result.retry_after == 2.0


def test_a_refusal_is_retried_after_a_growing_backoff_without_writes_or_events():
    api, service, clock, events = two_workers_without_service_account()
    run(api, service, sync=True)
    api.take()
    version = api.job["metadata"]["resourceVersion"]
    clock.now = T0 + timedelta(seconds=1)
    assert run(api, service).retry_after == pytest.approx(1.0)
    assert [c for c in api.take() if c[0] != "list"] == []  # within the backoff: nothing
    delays = []
    for _ in range(6):
        clock.now += timedelta(seconds=60)
        delays.append(run(api, service).retry_after)
        assert ("create", "Pod", "j-head") in api.take()
    assert delays == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert api.job["metadata"]["resourceVersion"] == version and len(events) == 1
    assert api.kinds() == []


def test_the_job_starts_once_the_service_account_exists():
    api, service, clock, events = two_workers_without_service_account()
    run(api, service, sync=True)
    api.refuse.clear()  # the ServiceAccount was created
    clock.now = T0 + timedelta(seconds=2)
    run(api, service)
    assert api.kinds() == ["ConfigMap", "Pod", "Pod", "Secret", "Service"]
    creates = [c for c in api.take() if c[0] == "create"]
    assert creates[-1] == ("create", "Secret", "j-ray-auth")  # after every pod
    clock.now += timedelta(seconds=5)  # no scheduler verdict: PodsCreated
    run(api, service)
    assert api.job["status"]["phase"] == "Scheduling"
    assert condition(api, "Stalled")["status"] == "False"
    assert condition(api, "Reconciling")["status"] == "True"


def test_a_spec_edit_retries_at_once():
    api, service, clock, events = two_workers_without_service_account()
    run(api, service, sync=True)
    api.take()
    api.job["spec"]["output"]["credentials"]["serviceAccountName"] = "existing-sa"
    api.job["metadata"]["generation"] = 2
    api.refuse.clear()
    clock.now = T0 + timedelta(seconds=0.5)  # well inside the backoff
    run(api, service, sync=True)
    assert ("create", "Pod", "j-head") in api.take() and "Pod" in api.kinds()


def test_a_refused_worker_removes_the_head_created_before_it():
    api, service, clock, events = new_job(resources={"workers": 2,
                                                     "tolerations": [{"key": "gpu"}]})
    api.refuse[("Pod", "j-worker-1")] = recorded("pod-quota-cpu")
    run(api, service, sync=True)
    calls = api.take()
    assert ("create", "Pod", "j-head") in calls and ("delete", "pods", "j-head") in calls
    assert api.kinds() == []


def test_an_exceeded_quota_waits_reconciling_with_the_quotas_message():
    api, service, clock, events = new_job(resources={"cpu": "8"})
    api.refuse[("Pod", "j-head")] = recorded("pod-quota-cpu")
    result = run(api, service, sync=True)
    status = api.job["status"]
    assert status["phase"] == "Pending" and result.retry_after == 2.0
    assert condition(api, "Stalled")["status"] == "False"
    reconciling = condition(api, "Reconciling")
    assert reconciling["status"] == "True" and reconciling["reason"] == "QuotaExceeded"
    assert reconciling["message"].startswith("spec.resources.cpu: ")
    assert "exceeded quota: small" in reconciling["message"]
    assert events[0][:2] == ("Warning", "FailedCreate") and api.kinds() == []
    api.refuse.clear()  # the quota freed
    clock.now = T0 + timedelta(seconds=2)
    run(api, service)
    assert "Pod" in api.kinds()


def test_an_operator_restart_retries_at_once_and_writes_nothing_for_the_same_refusal():
    api, service, clock, events = two_workers_without_service_account()
    run(api, service, sync=True)
    version = api.job["metadata"]["resourceVersion"]
    restarted = FineTuneService(api, OperatorConfig(), now=clock,
                                poll=lambda pod, port: None,
                                emit=lambda *event: events.append(event[1:]))
    clock.now = T0 + timedelta(seconds=0.5)
    api.take()
    run(api, restarted, sync=True)
    assert ("create", "Pod", "j-head") in api.take()
    assert api.job["metadata"]["resourceVersion"] == version and len(events) == 1


def test_a_transient_error_raises_and_keeps_what_was_created_for_the_next_try():
    api, service, clock, events = new_job()
    api.refuse[("Pod", "j-head")] = KubeError(503, "etcdserver: leader changed",
                                              "ServiceUnavailable", {})
    with pytest.raises(KubeError):
        run(api, service, sync=True)
    assert api.kinds() == ["ConfigMap", "Service"] and "status" not in api.job
    api.refuse.clear()
    run(api, service)
    assert api.kinds() == ["ConfigMap", "Pod", "Service"]


def test_a_recovery_whose_next_attempt_is_refused_keeps_its_phase_and_counters():
    api, service, clock, events = new_job()
    api.job["status"] = {"phase": "Recovering", "attempt": 2, "recoveries": 1,
                         "capacityType": "on-demand",
                         "nextAttemptAfter": "2026-11-01T11:59:00Z", "conditions": []}
    api.refuse[("Pod", "j-head")] = recorded("pod-priority-class-missing")
    run(api, service)
    status = api.job["status"]
    assert (status["phase"], status["attempt"], status["recoveries"]) == ("Recovering", 2, 1)
    assert status["nextAttemptAfter"] == "2026-11-01T11:59:00Z"  # still not started
    assert condition(api, "Stalled")["message"].startswith("spec.resources.priorityClassName")
    assert api.kinds() == []


def test_api_errors_of_a_run_are_retried_later_each_time_until_one_succeeds():
    """The operator's own request failing (the API unreachable, overloaded): retried by
    the router after 1 s, 2 s, 4 s..., back to normal after a run that worked."""
    import asyncio

    import urllib3

    from kubetune.operator.finetune_service import Result
    from kubetune.operator.handlers import FINALIZER, Runtime
    from kubetune.operator.router import Retry

    class Flaky:
        def __init__(self, errors):
            self.errors = list(errors)

        def reconcile(self, body, sync=False, view=None):
            if self.errors:
                raise self.errors.pop(0)
            return Result("Pending")

    body = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1,
                         "resourceVersion": "1", "finalizers": [FINALIZER]}, "spec": {}}
    runtime = Runtime(watch_children=False)
    runtime.service = Flaky([KubeError(503, "unavailable", "ServiceUnavailable"),
                             KubeError(429, "slow down", "TooManyRequests"),
                             urllib3.exceptions.MaxRetryError(None, "/", "refused")])
    runtime.jobs = {("ns", "j"): [body]}
    delays = []
    for _ in range(3):
        with pytest.raises(Retry) as raised:
            asyncio.run(runtime.run(("ns", "j"), False))
        delays.append(raised.value.retry_after)
    assert delays == [1.0, 2.0, 4.0]
    assert asyncio.run(runtime.run(("ns", "j"), False)) is not None
    assert runtime.api_failures == {}
