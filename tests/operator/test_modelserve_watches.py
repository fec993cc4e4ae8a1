"""ModelServe child watches without an API server: which Deployment and Service events
poke the owning ModelServe (signatures, first sightings, deletions, owners), that pokes
arriving during a run fold into one more run, and that every reconcile path of one
ModelServe is serialised by the service's lock."""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import pytest

from kubetune.operator.kube import KubeError
from kubetune.operator.modelserve.service import InvalidServe, ServeService
from kubetune.operator.modelserve.watches import (
    ChildWatch,
    ServeTriggers,
    deployment_signature,
    owner_key,
    service_signature,
)

OWNER = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe", "name": "chat",
         "uid": "ms-uid", "controller": True}


def deployment(uid="d-1", owners=(OWNER,), generation=1, **status) -> dict:
    return {"metadata": {"name": "chat-serve", "namespace": "ns", "uid": uid,
                         "generation": generation, "resourceVersion": "1",
                         "ownerReferences": list(owners)},
            "spec": {"replicas": 1},
            "status": status}


def service(uid="s-1", **spec) -> dict:
    return {"metadata": {"name": "chat-serve", "namespace": "ns", "uid": uid,
                         "resourceVersion": "1", "ownerReferences": [OWNER]},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                     "selector": {"kubetune.dev/modelserve": "chat",
                                  "app.kubernetes.io/component": "server"},
                     "ports": [{"name": "http", "port": 8080, "targetPort": "http",
                                "protocol": "TCP"}], **spec},
            "status": {"loadBalancer": {}}}


def changed(body: dict, path: str, value) -> dict:
    body = copy.deepcopy(body)
    node = body
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return body


READY = deployment(observedGeneration=1, replicas=1, updatedReplicas=1, readyReplicas=1,
                   availableReplicas=1, conditions=[
                       {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "lastUpdateTime": "t1", "lastTransitionTime": "t1"}])


@pytest.mark.parametrize("path,value", [
    ("status.readyReplicas", 0),
    ("status.availableReplicas", 0),
    ("status.updatedReplicas", 0),
    ("status.replicas", 2),
    ("status.unavailableReplicas", 1),
    ("status.observedGeneration", 0),
    ("metadata.generation", 2),
    ("metadata.deletionTimestamp", "2026-01-01T00:00:00Z"),
    ("status.conditions", [{"type": "Available", "status": "False",
                            "reason": "MinimumReplicasUnavailable"}]),
])
def test_a_deployment_change_that_a_reconcile_reads_changes_its_signature(path, value):
    assert deployment_signature(changed(READY, path, value)) != deployment_signature(READY)


@pytest.mark.parametrize("path,value", [
    ("metadata.resourceVersion", "2"),
    ("metadata.annotations", {"deployment.kubernetes.io/revision": "2"}),
    ("metadata.managedFields", [{"manager": "kube-controller-manager"}]),
    ("status.conditions", [{"type": "Available", "status": "True",
                            "reason": "MinimumReplicasAvailable",
                            "lastUpdateTime": "t2", "lastTransitionTime": "t1"}]),
])
def test_deployment_noise_leaves_its_signature_alone(path, value):
    assert deployment_signature(changed(READY, path, value)) == deployment_signature(READY)


@pytest.mark.parametrize("path,value,differs", [
    ("spec.type", "NodePort", True),
    ("spec.selector", {"app": "other"}, True),
    ("spec.ports", [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}],
     True),
    ("metadata.deletionTimestamp", "2026-01-01T00:00:00Z", True),
    ("metadata.resourceVersion", "9", False),
    ("status.loadBalancer", {"ingress": [{"ip": "1.2.3.4"}]}, False),
    ("spec.sessionAffinity", "None", False),
])
def test_a_service_signature_holds_what_the_builder_sets(path, value, differs):
    base = service()
    assert (service_signature(changed(base, path, value)) != service_signature(base)) is differs


def test_the_owner_is_the_modelserve_in_the_owner_references():
    assert owner_key(READY) == ("ns", "chat")
    job = {**OWNER, "kind": "FineTuneJob"}
    foreign = {**OWNER, "apiVersion": "example.com/v1"}
    assert owner_key(deployment(owners=(job, foreign))) is None
    assert owner_key(deployment(owners=())) is None


def test_only_changes_that_matter_poke_the_owner():
    poked: list = []
    watch = ChildWatch(poked.append)
    progressing = deployment(observedGeneration=1, replicas=1, updatedReplicas=1)
    assert not watch.event(None, progressing, deployment_signature)  # listing at start
    assert not watch.event("MODIFIED", copy.deepcopy(progressing), deployment_signature)
    assert not watch.event("MODIFIED", changed(progressing, "metadata.resourceVersion", "7"),
                           deployment_signature)  # e.g. an annotation written
    assert watch.event("MODIFIED", READY, deployment_signature)  # the replica turned ready
    assert not watch.event("MODIFIED", copy.deepcopy(READY), deployment_signature)
    assert watch.event("DELETED", READY, deployment_signature)
    assert not watch.event("ADDED", deployment(uid="d-2"), deployment_signature)  # our create
    assert poked == [("ns", "chat"), ("ns", "chat")]
    assert watch.routed == 2 and "d-1" not in watch.signatures


def test_a_relist_with_a_changed_object_pokes_and_an_unknown_modification_too():
    poked: list = []
    watch = ChildWatch(poked.append)
    watch.event(None, service(), service_signature)
    assert watch.event(None, service(type="NodePort"), service_signature)  # after a gap
    assert watch.event("MODIFIED", service(uid="s-9"), service_signature)  # no record
    assert watch.event("DELETED", service(), service_signature)
    assert len(poked) == 3


def test_a_child_without_a_modelserve_owner_pokes_nothing():
    poked: list = []
    watch = ChildWatch(poked.append)
    orphan = deployment(owners=())
    watch.event(None, orphan, deployment_signature)
    assert not watch.event("DELETED", orphan, deployment_signature)
    assert poked == []


class BlockingService:
    """`reconcile_by_name` blocks until released; records calls and concurrency."""

    def __init__(self, replies=None):
        self.calls: list[tuple] = []
        self.active = self.max_active = 0
        self.release = threading.Event()
        self.started = threading.Event()
        self.replies = list(replies or [])
        self._guard = threading.Lock()

    def reconcile_by_name(self, namespace, name):
        with self._guard:
            self.calls.append((namespace, name))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            self.release.wait(5)
            reply = self.replies.pop(0) if self.replies else {"phase": "Ready"}
            if isinstance(reply, Exception):
                raise reply
            return reply
        finally:
            with self._guard:
                self.active -= 1


async def until(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_events_during_a_running_reconcile_fold_into_one_more_run():
    fake = BlockingService()

    async def scenario():
        triggers = ServeTriggers(lambda: fake, retry_seconds=0.05)
        key = ("ns", "chat")
        triggers.poke(key)
        await asyncio.to_thread(fake.started.wait, 5)
        for replicas in range(20):  # a rollout's worth of status changes meanwhile
            triggers.children.event(
                "MODIFIED", deployment(readyReplicas=replicas), deployment_signature)
        triggers.poke(("ns", "other"))  # another ModelServe runs beside it
        fake.release.set()
        await until(lambda: len(fake.calls) >= 3 and not triggers.router.busy(key)
                    and not triggers.router.busy(("ns", "other")))
        await asyncio.sleep(0.1)
        return triggers

    triggers = asyncio.run(scenario())
    assert fake.calls.count(("ns", "chat")) == 2  # the first run, then one for the burst
    assert fake.calls.count(("ns", "other")) == 1
    assert triggers.router.stats["coalesced"] >= 18


def test_an_api_error_is_retried_and_a_gone_modelserve_is_forgotten():
    fake = BlockingService(replies=[KubeError(500, "boom"), None])
    fake.release.set()

    async def scenario():
        triggers = ServeTriggers(lambda: fake, retry_seconds=0.05)
        triggers.poke(("ns", "chat"))
        await until(lambda: len(fake.calls) == 2 and not triggers.router.busy(("ns", "chat")))
        await asyncio.sleep(0.2)  # no third run: nothing left to retry
        return triggers

    triggers = asyncio.run(scenario())
    assert len(fake.calls) == 2
    assert len(triggers.router) == 0  # the second run found it gone


def test_an_invalid_spec_is_not_retried():
    fake = BlockingService(replies=[InvalidServe(["spec.replicas: bad"])])
    fake.release.set()

    async def scenario():
        triggers = ServeTriggers(lambda: fake, retry_seconds=0.05)
        triggers.poke(("ns", "chat"))
        await until(lambda: fake.calls and not triggers.router.busy(("ns", "chat")))
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert len(fake.calls) == 1


class OneServeKube:
    """Answers the GET of one ModelServe; nothing else is asked (`_reconcile` is faked)."""

    def get(self, kind, name, namespace=None):
        return {"metadata": {"name": name, "namespace": namespace, "uid": "ms-uid",
                             "generation": 1}}


def test_the_timer_the_handler_and_the_watch_never_reconcile_one_serve_at_once():
    service = ServeService(OneServeKube(), config=None)
    active: dict = {}
    peak: dict = {}
    guard = threading.Lock()

    def fake_reconcile(meta, body):
        with guard:
            active[meta.name] = active.get(meta.name, 0) + 1
            peak[meta.name] = max(peak.get(meta.name, 0), active[meta.name])
        time.sleep(0.05)
        with guard:
            active[meta.name] -= 1
        return {}

    service._reconcile = fake_reconcile
    body = OneServeKube().get(None, "chat", "ns")
    other = OneServeKube().get(None, "other", "ns")
    calls = [lambda: service.reconcile(body),  # create/update handler or timer
             lambda: service.reconcile(body),
             lambda: service.reconcile_by_name("ns", "chat"),  # a watch event
             lambda: service.reconcile_by_name("ns", "chat"),
             lambda: service.reconcile(other), lambda: service.reconcile_by_name("ns", "other")]
    threads = [threading.Thread(target=call) for call in calls]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert peak == {"chat": 1, "other": 1}
    assert time.monotonic() - started >= 4 * 0.05  # the four runs of "chat" in a row
