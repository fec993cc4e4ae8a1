"""The reconcile service against the real API server, with no node agent: pods are bound
and their states written by the test the way the scheduler and a kubelet would (through
the binding and status subresources), so each decision is checked."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from ftj_harness import SPOT, create_until_accepted, finetunejob, wait_for

from kubetune.devenv.controlplane import Identity
from kubetune.devenv.kubeapi import CONFIGMAPS, FINETUNEJOBS, NODES, PODS, SECRETS, SERVICES
from kubetune.operator.config import OperatorConfig
from kubetune.operator.finalizer import Finalizer
from kubetune.operator.finetune_service import VERDICT_WAIT_SECONDS, FineTuneService, SpecRefused
from kubetune.operator.kube import Kube

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


OPERATOR_USER = "kubetune-operator-under-test"


@pytest.fixture
def env(cluster, monkeypatch, tmp_path):
    """The service logs in as a user of its own, so the audit log tells its requests
    apart from the test's."""
    identity = Identity(OPERATOR_USER, ("system:masters",))
    monkeypatch.setenv("KUBECONFIG", str(cluster.control_plane.kubeconfig(identity, cluster.namespace)))
    cluster.nodes_added = []
    kube = Kube()
    events: list[tuple] = []
    clock = Clock()
    polls: list[dict] = []
    service = FineTuneService(kube, OperatorConfig(trainer_status_port=18080),
                              emit=lambda body, kind, reason, message: events.append(
                                  (kind, reason, message)),
                              now=clock, poll=lambda pod, port: polls[-1] if polls else None)
    yield cluster, kube, service, events, clock, polls
    for name in cluster.nodes_added:
        cluster.api.delete(NODES, name)


def add_node(cluster, name: str, labels: dict) -> None:
    """A Node with no agent behind it (so nothing runs there), removed after the test."""
    cluster.api.create(NODES, {"metadata": {"name": name, "labels": labels}})
    cluster.nodes_added.append(name)


def apply(cluster, name="svc", **overrides) -> dict:
    body = finetunejob(name, "/models/tiny", "http://127.0.0.1:9", **overrides)
    body["spec"]["baseModel"]["uri"] = "file:///models/tiny"
    return cluster.api.create(FINETUNEJOBS, body, cluster.namespace)


def run_pod(cluster, name: str, node="spot-1", started="2026-11-01T12:00:05Z") -> None:
    cluster.api.request("POST", f"/api/v1/namespaces/{cluster.namespace}/pods/{name}/binding", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    cluster.api.patch(PODS, name, {"status": {
        "phase": "Running", "podIP": "10.244.200.9", "podIPs": [{"ip": "10.244.200.9"}],
        "startTime": started,
        "containerStatuses": [{"name": "trainer", "image": "trainer", "imageID": "", "ready": True,
                               "restartCount": 0, "state": {"running": {"startedAt": started}}}],
    }}, cluster.namespace, sub="status")


def end_pod(cluster, name: str, code: int, message: str, disrupted=False) -> None:
    conditions = [{"type": "DisruptionTarget", "status": "True",
                   "reason": "TerminationByKubelet"}] if disrupted else []
    cluster.api.patch(PODS, name, {"status": {
        "phase": "Succeeded" if code == 0 else "Failed", "conditions": conditions,
        "containerStatuses": [{"name": "trainer", "image": "trainer", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": {
            "exitCode": code, "message": message, "startedAt": "2026-11-01T12:00:05Z",
            "finishedAt": "2026-11-01T12:01:05Z"}}}],
    }}, cluster.namespace, sub="status")


def reconcile(cluster, service, name="svc", sync=False):
    return service.reconcile(cluster.job(name), sync_children=sync)


def first_status(cluster, service, clock, name="svc"):
    """The attempt's first status write, once its pods exist: at the scheduler's verdict
    or, none having come, when the wait for it is over."""
    clock.advance(VERDICT_WAIT_SECONDS)
    result = reconcile(cluster, service, name)
    assert result.wrote_status, result
    return result


def test_creates_children_once_with_owner_refs_then_writes_nothing_when_unchanged(env):
    cluster, kube, service, events, clock, _ = env
    job = apply(cluster)
    result = reconcile(cluster, service, sync=True)
    # The pods are created; the status write waits for the scheduler's verdict on them.
    assert not result.wrote_status and result.retry_after == VERDICT_WAIT_SECONDS
    assert not cluster.status("svc")
    assert first_status(cluster, service, clock).phase == "Scheduling"
    head = cluster.api.get(PODS, "svc-head", cluster.namespace)
    assert head["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert head["metadata"]["labels"]["kubetune.dev/attempt"] == "1"
    assert head["spec"]["securityContext"]["runAsUser"] == 65532
    assert cluster.api.get(CONFIGMAPS, "svc-spec", cluster.namespace) is not None
    assert cluster.api.get(SERVICES, "svc-head", cluster.namespace) is not None
    status = cluster.status("svc")
    assert status["attempt"] == 1 and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Reconciling"] == "True"

    reconcile(cluster, service)  # observes Pending once: message moves to pods pending
    before = dict(kube.requests)
    result = reconcile(cluster, service, sync=True)
    spent = {verb: kube.requests[verb] - before.get(verb, 0) for verb in kube.requests}
    assert not result.wrote_status
    assert spent.get("POST", 0) == 0 and spent.get("PATCH", 0) == 0  # nothing re-created
    assert len([p for p in cluster.pods() if p["metadata"]["name"] == "svc-head"]) == 1


def test_the_first_status_write_carries_the_schedulers_verdict(env):
    """One status write and one Event start an attempt: its pods created, then the real
    scheduler's verdict on them (no node fits), not "created" and then the verdict."""
    cluster, kube, service, events, clock, _ = env
    apply(cluster)
    reconcile(cluster, service, sync=True)

    def verdict():
        pod = cluster.api.get(PODS, "svc-head", cluster.namespace)
        conditions = (pod.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "PodScheduled"), None)

    wait_for(verdict, 30, "the scheduler's verdict")
    before = kube.requests["PATCH"]
    result = reconcile(cluster, service)  # within the wait: the verdict is already there
    assert result.wrote_status and kube.requests["PATCH"] - before == 1
    status = cluster.status("svc")
    assert (status["phase"], status["attempt"], status["observedGeneration"]) == ("Scheduling", 1, 1)
    assert "nextAttemptAfter" not in status
    assert status["conditions"][0]["reason"] == "Unschedulable", status["conditions"]
    assert events == [("Normal", "PodsCreated", "attempt 1 created on spot capacity; "
                       f"pods pending (Unschedulable): {verdict()['message']}")]
    before = kube.requests["PATCH"]
    assert not reconcile(cluster, service).wrote_status  # started: nothing new to say
    assert kube.requests["PATCH"] == before and len(events) == 1


def test_configmap_is_patched_only_when_the_spec_changed(env):
    cluster, kube, service, *_ = env
    apply(cluster)
    reconcile(cluster, service, sync=True)
    cluster.api.patch(FINETUNEJOBS, "svc", {"spec": {"spot": {"maxRecoveries": 4}}}, cluster.namespace)
    before = kube.requests["PATCH"]
    reconcile(cluster, service, sync=True)
    data = cluster.api.get(CONFIGMAPS, "svc-spec", cluster.namespace)["data"]["spec.json"]
    assert '"maxRecoveries": 4' in data
    assert kube.requests["PATCH"] - before == 2  # the ConfigMap and the status
    assert cluster.status("svc")["observedGeneration"] == 2


def test_preemption_is_a_recovery_with_backoff_and_a_new_attempt(env):
    cluster, kube, service, events, clock, polls = env
    apply(cluster)
    reconcile(cluster, service, sync=True)
    first_status(cluster, service, clock)
    add_node(cluster, "spot-1", SPOT)
    run_pod(cluster, "svc-head")
    polls.append({"phase": "Training", "step": 6, "totalSteps": 12, "loss": 2.5,
                  "lastCheckpoint": {"step": 4, "uri": "s3://b/c/step-4"},
                  "updatedAt": "2026-11-01T12:00:30Z"})
    assert reconcile(cluster, service).phase == "Running"
    assert cluster.status("svc")["progress"]["display"] == "6/12 (50%)"

    end_pod(cluster, "svc-head", 75, '{"result": "Preempted", "steps": 7, '
            '"checkpoint": {"step": 7, "uri": "s3://b/c/step-7"}}', disrupted=True)
    result = reconcile(cluster, service)
    status = cluster.status("svc")
    assert result.phase == "Recovering"
    assert (status["recoveries"], status["errorRetries"], status["attempt"]) == (1, 0, 2)
    assert status["lastCheckpoint"]["step"] == 7
    assert status["nextAttemptAfter"].startswith("2026-11-01T12:00:04")  # 1 s after now
    assert cluster.api.get(PODS, "svc-head", cluster.namespace) is None  # the ended attempt's pod
    assert ("Normal", "Preempted") in [(kind, reason) for kind, reason, _ in events]

    assert reconcile(cluster, service).retry_after is not None  # backoff: not yet
    assert cluster.api.get(PODS, "svc-head", cluster.namespace) is None
    clock.advance(2)
    before = dict(kube.requests)
    assert not reconcile(cluster, service).wrote_status  # pods created, status follows
    # The pods listed, attempt 1's ConfigMap and Service read (not POSTed again for a
    # 409 each), the head pod created.
    assert {verb: n - before.get(verb, 0) for verb, n in kube.requests.items()
            if n != before.get(verb, 0)} == {"GET": 3, "POST": 1}
    head = cluster.api.get(PODS, "svc-head", cluster.namespace)
    assert head["metadata"]["labels"]["kubetune.dev/attempt"] == "2"
    first_status(cluster, service, clock)
    assert events[-1][1] == "PodsCreated" and "attempt 2" in events[-1][2]
    # A second look at the same state counts nothing twice.
    reconcile(cluster, service)
    assert cluster.status("svc")["recoveries"] == 1

    run_pod(cluster, "svc-head", started="2026-11-01T12:02:00Z")
    polls.append({"phase": "Training", "step": 7, "totalSteps": 12,
                  "lastCheckpoint": {"step": 7, "uri": "s3://b/c/step-7"},
                  "updatedAt": "2026-11-01T12:02:10Z"})
    reconcile(cluster, service)
    assert cluster.status("svc")["lostSteps"] == 0


def secret_calls(cluster, since: int) -> list[tuple[str, str]]:
    """The operator's requests on Secrets after audit-log position `since`."""
    events = cluster.control_plane.audit_events(OPERATOR_USER, since)
    return [(e["verb"], e["requestURI"]) for e in events
            if (e.get("objectRef") or {}).get("resource") == "secrets"]


def token_of(cluster, name: str) -> str:
    secret = cluster.api.get(SECRETS, f"{name}-ray-auth", cluster.namespace)
    return base64.b64decode(secret["data"]["token"]).decode()


def test_multi_worker_job_shares_one_token_created_once_and_never_read(env):
    cluster, kube, service, events, clock, _ = env
    job = apply(cluster, "multi", **{"resources.workers": 2})
    create = ("create", f"/api/v1/namespaces/{cluster.namespace}/secrets")
    mark = cluster.control_plane.audit_mark()
    reconcile(cluster, service, "multi", sync=True)
    first_status(cluster, service, clock, "multi")
    assert secret_calls(cluster, mark) == [create]
    secret = cluster.api.get(SECRETS, "multi-ray-auth", cluster.namespace)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    token = token_of(cluster, "multi")
    assert len(token) >= 40
    for pod in ("multi-head", "multi-worker-1"):
        env_vars = {e["name"]: e for e in cluster.api.get(PODS, pod, cluster.namespace)["spec"][
            "containers"][0]["env"]}
        assert env_vars["RAY_AUTH_MODE"]["value"] == "token"
        assert env_vars["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "multi-ray-auth", "key": "token"}

    mark = cluster.control_plane.audit_mark()
    reconcile(cluster, service, "multi", sync=True)  # a spec sync leaves the Secret alone
    assert secret_calls(cluster, mark) == []

    add_node(cluster, "spot-1", SPOT)
    run_pod(cluster, "multi-head")
    run_pod(cluster, "multi-worker-1")
    end_pod(cluster, "multi-head", 75, "{}", disrupted=True)
    end_pod(cluster, "multi-worker-1", 1, "", disrupted=True)
    assert reconcile(cluster, service, "multi").phase == "Recovering"
    clock.advance(3)
    mark = cluster.control_plane.audit_mark()
    reconcile(cluster, service, "multi")
    first_status(cluster, service, clock, "multi")
    head = cluster.api.get(PODS, "multi-head", cluster.namespace)
    assert head["metadata"]["labels"]["kubetune.dev/attempt"] == "2"
    assert secret_calls(cluster, mark) == [create]  # 409: the first token stays
    assert token_of(cluster, "multi") == token
    assert token not in json.dumps([cluster.job("multi"), events])


def test_a_token_secret_left_by_an_earlier_operator_is_kept(env):
    """An operator that died after creating the Secret but before the pods: the next one
    gets 409 on create, takes it as "exists", and the pods read the stored token."""
    cluster, kube, service, *_ = env
    job = apply(cluster, "multi", **{"resources.workers": 3})
    cluster.api.create(SECRETS, {
        "metadata": {"name": "multi-ray-auth", "namespace": cluster.namespace,
                     "ownerReferences": [{"apiVersion": "kubetune.dev/v1alpha1",
                                          "kind": "FineTuneJob", "name": "multi",
                                          "uid": job["metadata"]["uid"], "controller": True}]},
        "data": {"token": base64.b64encode(b"earlier-token").decode()}}, cluster.namespace)
    reconcile(cluster, service, "multi", sync=True)
    assert token_of(cluster, "multi") == "earlier-token"
    assert {p["metadata"]["name"] for p in cluster.pods()} == {
        "multi-head", "multi-worker-1", "multi-worker-2"}


def test_single_worker_job_creates_no_secret(env):
    cluster, kube, service, *_ = env
    apply(cluster)
    mark = cluster.control_plane.audit_mark()
    reconcile(cluster, service, sync=True)
    assert secret_calls(cluster, mark) == []
    assert cluster.api.get(SECRETS, "svc-ray-auth", cluster.namespace) is None

def test_backoff_delays_the_next_attempt(env):
    cluster, kube, service, events, clock, polls = env
    apply(cluster, **{"spot.backoff": {"initialSeconds": 30, "maxSeconds": 60}})
    reconcile(cluster, service, sync=True)
    run_pod(cluster, "svc-head")
    end_pod(cluster, "svc-head", 75, "{}")
    reconcile(cluster, service)
    result = reconcile(cluster, service)
    assert cluster.api.get(PODS, "svc-head", cluster.namespace) is None
    assert result.retry_after is not None and 28 <= result.retry_after <= 30
    clock.advance(31)
    reconcile(cluster, service)
    assert cluster.api.get(PODS, "svc-head", cluster.namespace) is not None


def test_error_uses_the_error_budget_and_fails_naming_the_cause(env):
    cluster, kube, service, events, clock, polls = env
    apply(cluster)
    reconcile(cluster, service, sync=True)
    for attempt in (1, 2):
        run_pod(cluster, "svc-head")
        end_pod(cluster, "svc-head", 1, '{"result": "Failed", "message": '
                '"dataset file:///nope.jsonl: no such file"}')
        reconcile(cluster, service)
        clock.advance(5)
        reconcile(cluster, service)
    status = cluster.status("svc")
    assert status["phase"] == "Failed"
    assert (status["recoveries"], status["errorRetries"]) == (0, 1)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "no such file" in failed["message"]
    assert events[-1][0] == "Warning"


def test_stale_view_cannot_count_a_preemption_twice(env):
    cluster, kube, service, events, clock, _ = env
    apply(cluster)
    reconcile(cluster, service, sync=True)
    first_status(cluster, service, clock)
    run_pod(cluster, "svc-head")
    end_pod(cluster, "svc-head", 75, "{}", disrupted=True)
    stale = cluster.job("svc")
    assert service.reconcile(stale).wrote_status
    again = service.reconcile(stale)  # same old body: the write is refused (409)
    assert again.conflict and cluster.status("svc")["recoveries"] == 1


def test_invalid_spec_creates_nothing_and_names_the_field(bare_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(bare_cluster.kubeconfig))
    events = []
    service = FineTuneService(Kube(), OperatorConfig(), emit=lambda *a: events.append(a[1:]))
    body = finetunejob("bad", "/m", "http://127.0.0.1:9")
    body["spec"]["training"]["learningRate"] = -1
    create_until_accepted(bare_cluster, body)
    with pytest.raises(SpecRefused, match="spec.training.learningRate"):
        service.reconcile(bare_cluster.job("bad"))
    status = bare_cluster.status("bad")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "spec.training.learningRate" in stalled["message"]
    assert bare_cluster.pods() == []
    assert events == [("Warning", "InvalidSpec", status["message"])]


def test_finalizer_runs_a_cleanup_pod_and_gives_up_after_bounded_failures(env):
    cluster, kube, *_ = env
    job = apply(cluster)
    finalizer = Finalizer(kube, OperatorConfig())
    tries, outcome = 0, None
    for _ in range(10):
        outcome = finalizer.finalize(job, tries)
        if outcome.done:
            break
        pod = cluster.api.get(PODS, "svc-cleanup", cluster.namespace)
        assert pod["spec"]["containers"][0]["command"][-1] == \
            f"s3://ftj-out/runs/{cluster.namespace}/svc/checkpoints/"
        env_names = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env_names
        cluster.api.patch(PODS, "svc-cleanup", {"status": {"phase": "Failed"}}, cluster.namespace,
                          sub="status")
        outcome = finalizer.finalize(job, tries)
        tries += 1
        if outcome.done:
            break
    assert outcome.done and "NOT deleted" in outcome.warning and tries == 3


def test_spot_pods_pending_too_long_fall_back_to_on_demand(env):
    cluster, kube, service, events, clock, polls = env
    apply(cluster, **{"spot.strategy": "FallbackToOnDemand",
                      "spot.fallbackAfterPendingSeconds": 60})
    reconcile(cluster, service, sync=True)
    created = cluster.api.get(PODS, "svc-head", cluster.namespace)["metadata"]["creationTimestamp"]
    clock.now = datetime.fromisoformat(created.replace("Z", "+00:00"))
    cluster.api.patch(PODS, "svc-head", {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}},
        cluster.namespace, sub="status")
    assert reconcile(cluster, service).phase == "Scheduling"
    clock.advance(61)
    assert reconcile(cluster, service).phase == "Recovering"
    status = cluster.status("svc")
    assert (status["capacityType"], status["attempt"], status["recoveries"]) == \
        ("on-demand", 2, 0)
    assert ("Normal", "FallbackToOnDemand") in [(kind, reason) for kind, reason, _ in events]
    reconcile(cluster, service)
    head = cluster.api.get(PODS, "svc-head", cluster.namespace)
    assert head["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand"}
    assert head["metadata"]["labels"]["kubetune.dev/capacity-type"] == "on-demand"
