"""A ModelServe reacts to its Deployment and Service as they change, not at the next
timer tick: the operator (`python -m kubetune.operator`, its resync timer set to 600 s so
it cannot be what answers) against the real API server and controller manager.

No kubelet runs here, so the test plays the kubelet's part for the server pod the real
Deployment and ReplicaSet controllers created: it marks the pod Ready through the pods'
status subresource, as a kubelet reports a passing readiness probe. The ReplicaSet and
Deployment controllers then count it (readyReplicas, availableReplicas, the Available
condition), and that Deployment status change must reach `status.readyReplicas` of the
ModelServe within BOUND seconds. Then the ModelServe's Service is deleted and must be
back within BOUND seconds. With `KUBETUNE_WATCH_CHILDREN=0` neither is seen in that time
(the same steps, the opposite verdict), which is what makes the first case a test.
"""

from __future__ import annotations

import time

import polling
import pytest
from ftj_harness import wait_for

from kubetune.devenv.controlplane import Identity
from kubetune.devenv.kubeapi import DEPLOYMENTS, MODELSERVES, PODS, SERVICES
from kubetune.operator.modelserve import naming

pytestmark = pytest.mark.integration
BOUND = 5.0  # seconds: "at once", with room for a loaded CI machine
RESYNC = "600"
SERVE = "events"
SERVER = naming.server_name(SERVE)
IDLE = 2.0  # seconds after it all settled in which the operator must ask nothing


def serve_body() -> dict:
    """Served from nowhere reachable: its pod is never run, only reported on."""
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelServe",
            "metadata": {"name": SERVE},
            "spec": {"baseModel": {"uri": "s3://models/tiny"},
                     "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "2Gi"}}}


def first_within(seconds: float, *probes):
    """Poll every probe until all have answered (or time is up); each one's first
    truthy moment, in seconds from now (None: never within the time)."""
    began, seen = time.monotonic(), [None] * len(probes)
    while time.monotonic() - began < seconds and None in seen:
        for i, probe in enumerate(probes):
            if seen[i] is None and probe():
                seen[i] = time.monotonic() - began
        time.sleep(0.05)
    return seen


def requests(cluster, user: str, since: int) -> list[tuple[str, str]]:
    """(verb, resource) of each request of `user` from audit-log position `since`; watches
    left out (a watch is one long request, not a per-event cost)."""
    seen = {}
    for event in cluster.control_plane.audit_events(user, since):
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}"
                                               if ref.get("subresource") else "")
        if event["verb"] != "watch":
            seen[event["auditID"]] = (event["verb"], resource)
    return list(seen.values())


def mark_ready(api, namespace: str, pod: dict) -> None:
    """What a kubelet writes once every container's readiness probe passes."""
    conditions = [{"type": kind, "status": "True",
                   "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                  for kind in ("ContainersReady", "Ready")]
    api.request("PATCH", PODS.path(namespace, pod["metadata"]["name"], "status"),
                {"status": {"conditions": conditions}},
                content_type="application/strategic-merge-patch+json")


@pytest.mark.parametrize("watch", [True, False], ids=["watches", "watches-off"])
def test_deployment_status_and_a_deleted_service_reach_the_modelserve_at_once(cluster, watch):
    api, ns = cluster.api, cluster.namespace
    user = f"kubetune-operator-{ns}"  # its own user: the audit log tells its requests apart
    kubeconfig = cluster.control_plane.kubeconfig(Identity(user, ("system:masters",)), ns)
    operator = cluster.operator({"KUBECONFIG": str(kubeconfig),
                                 "KUBETUNE_SERVE_RESYNC_SECONDS": RESYNC,
                                 "KUBETUNE_WATCH_CHILDREN": "1" if watch else "0"}).start()
    try:
        api.create(MODELSERVES, serve_body(), ns)

        def serve_status() -> dict:
            return (api.get(MODELSERVES, SERVE, ns) or {}).get("status") or {}

        def deployment_settled():
            deployment = api.get(DEPLOYMENTS, SERVER, ns) or {"metadata": {}}
            status = deployment.get("status") or {}
            return (status.get("observedGeneration") == deployment["metadata"].get("generation")
                    and status.get("unavailableReplicas") == 1)

        def server_pod():
            selector = ",".join(f"{k}={v}" for k, v in naming.selector(SERVE).items())
            pods = api.list(PODS, ns, selector)
            return pods[0] if len(pods) == 1 else None

        polling.wait_for(lambda: serve_status().get("phase"), "the create reconcile",
                         timeout=60, on_timeout=lambda: operator.log_text()[-3000:])
        wait_for(deployment_settled, 30, "the Deployment controller to observe the Deployment")
        pod = wait_for(server_pod, 30, "the ReplicaSet's pod")
        time.sleep(1.0)  # the settling events are handled (or, off, ignored)
        assert serve_status().get("readyReplicas", 0) == 0, serve_status()

        # (a) the pod turns ready: the controllers count it, the ModelServe must show it.
        mark = cluster.control_plane.audit_mark()
        mark_ready(api, ns, pod)
        counted, shown = first_within(
            BOUND,
            lambda: ((api.get(DEPLOYMENTS, SERVER, ns) or {}).get("status") or {}).get(
                "readyReplicas") == 1,
            lambda: serve_status().get("readyReplicas") == 1)
        assert counted is not None, "the Deployment controller never counted the ready pod"

        # (b) someone deletes the Service: it must come back.
        uid = api.get(SERVICES, SERVER, ns)["metadata"]["uid"]
        api.delete(SERVICES, SERVER, ns)
        (back,) = first_within(BOUND, lambda: (api.get(SERVICES, SERVER, ns) or {}).get(
            "metadata", {}).get("uid") not in (None, uid))

        time.sleep(1.0)  # the recreated Service's own events arrive
        asked = requests(cluster, user, mark)
        idle_mark = cluster.control_plane.audit_mark()
        time.sleep(IDLE)
        idle = requests(cluster, user, idle_mark)
        runs = asked.count(("get", "modelserves"))  # one per event-driven reconcile

        def show(value):
            return "not within %.1fs" % BOUND if value is None else "%.3fs" % value

        print(f"\n[{'watches' if watch else 'watches off'}] pod Ready -> Deployment "
              f"readyReplicas=1: {show(counted)}; -> ModelServe readyReplicas=1: {show(shown)}"
              f"; Service deleted -> recreated: {show(back)} (resync timer {RESYNC}s); "
              f"{runs} reconciles, {len(asked)} requests in all; idle {IDLE:g}s: {len(idle)}")
        assert idle == [], idle  # our own writes' echoes started no reconcile
        if watch:
            assert shown is not None, (serve_status(), operator.log_text()[-3000:])
            assert back is not None, operator.log_text()[-3000:]
            status = serve_status()
            assert status["phase"] == "Ready" and status["readyDisplay"] == "1/1", status
            # Two changes, each a handful of watch events: a few runs, not one per event.
            assert 2 <= runs <= 6, asked
        else:  # only the 600 s timer would notice: the same checks fail without watches
            assert shown is None, serve_status()
            assert back is None
            assert runs == 0, asked
    finally:
        operator.stop()
