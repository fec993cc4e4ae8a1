"""Start a FineTuneJob attempt: clear the ended one's pods, then create the children so
that a refusal leaves nothing behind.

Order: the ConfigMap and the Service (which the pods mount and dial), then the pods,
then the Ray token Secret last. The operator may create a Secret but never delete one
(least privilege: it never reads Secrets either), so the Secret is only created once
every pod was accepted; a container that starts before it is there waits, as the
kubelet retries a missing secretKeyRef (CreateContainerConfigError), and the Secret
follows its pods within the same reconcile.

When the API server refuses a child (`api_errors`: a 4xx other than 409/429), every
child of the attempt is deleted again: the ConfigMap, the Service and whichever pods
exist, whether this call, an earlier refused try or a run before an operator restart
created them. Nothing runs at that point (an attempt's pods are only created once the
previous attempt's are gone), and the next try creates them afresh. A transient answer
(5xx, 429, a timeout) raises: the caller retries, and the children created so far are
found again then (409, or a GET), so they are reused rather than left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .api_errors import classify_error
from .child_fields import FINETUNEJOB, describe
from .cluster_view import ClusterView, stopped_by
from .kube import KINDS_BY_OBJECT, PODS, Kind, Kube, KubeError
from .refusals import Backoff, Refused

# Create-only (RBAC grants nothing else): never through Kube.ensure, which reads on a 409.
SECRETS = Kind("", "v1", "secrets")
_ORDER = {"ConfigMap": 0, "Service": 1, "Pod": 2, "Secret": 3}


def clear_stale(kube: Kube, namespace: str, stale: list[dict], view: ClusterView,
                now: datetime, wait_grace: bool) -> float | None:
    """Delete the pods of ended attempts (each by uid: a cache's old pod must never
    hit a new one of the same name). One stuck terminating on a deleted Node is
    force-deleted once it has surely stopped (`stopped_by`, the API confirming the
    Node is gone): no kubelet will ever confirm it, and the next attempt's pod needs
    its name. Returns the seconds until such a pod may go, if one must still wait."""
    held, api = None, None
    for pod in stale:
        meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
        if not meta.get("deletionTimestamp"):
            kube.delete(PODS, meta["name"], namespace, uid=meta.get("uid"))
            continue
        stopped = stopped_by(pod, view.memory.nodes_gone.get(node), wait_grace) \
            if node else None
        if stopped is None:
            continue
        if stopped > now:
            held = stopped if held is None else min(held, stopped)
            continue
        api = api or view.confirmed()
        if api.node(node) is None:
            kube.delete(PODS, meta["name"], namespace, uid=meta.get("uid"), grace_seconds=0)
    return (held - now).total_seconds() if held is not None else None


def creation_order(children: list[dict]) -> list[dict]:
    """`children` in the order to create them (stable within a kind)."""
    return sorted(children, key=lambda child: _ORDER.get(child["kind"], 1))


def create(kube: Kube, children: list[dict], subset: list[dict] | None = None,
           likely_exist: bool = False) -> Refused | None:
    """Create (or bring in line) `subset` of the attempt's `children` (default: all).
    None when every one is there; a `Refused` once the API server refused one, after
    removing the attempt's children again. `likely_exist`: the ConfigMap and Service
    are probably there already (a later attempt), so read them first instead of a POST
    answered 409; an attempt's pods are new by definition."""
    for child in creation_order(children if subset is None else subset):
        try:
            if child["kind"] == "Secret":
                kube.create(SECRETS, child)
            else:
                kube.ensure(child, likely_exists=likely_exist and child["kind"] != "Pod")
        except KubeError as exc:
            verdict = classify_error(exc)
            if not verdict.refused:
                raise
            remove(kube, children)
            field, message = describe(FINETUNEJOB, child, verdict)
            meta = child["metadata"]
            return Refused(verdict, {"kind": child["kind"], "metadata": {
                "name": meta["name"], "namespace": meta.get("namespace")}}, field, message)
    return None


def remove(kube: Kube, children: list[dict]) -> None:
    """Delete the attempt's children the operator may delete (all but the Secret, which
    is created only after every pod was accepted), last created first."""
    for child in reversed(creation_order(children)):
        kind = KINDS_BY_OBJECT.get(child["kind"])
        if kind is None:
            continue
        meta = child["metadata"]
        kube.delete(kind, meta["name"], meta.get("namespace"))


@dataclass(frozen=True)
class Held:
    """Why an attempt's children are not all there: `refused` by the API server just now
    (None: an earlier refusal's backoff still runs), and seconds until the next try."""

    retry_after: float
    refused: Refused | None = None


class Starter:
    """Creates attempts' children through `kube`, remembering refusals per job uid so
    that a refused attempt is tried again after a backoff (`refusals.Backoff`), at once
    when the spec changed (a new generation)."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self.backoff = Backoff()

    def start(self, uid: str, generation: int | None, children: list[dict],
              subset: list[dict] | None, current: list[dict], likely_exist: bool,
              now: datetime) -> Held | None:
        """`create` unless a refusal's backoff runs or the refused try's pods (in
        `current`, the attempt's pods as seen) are still terminating; None once every
        child is there."""
        wait = self.backoff.wait(uid, generation, now)
        if wait is None and self.backoff.holds(uid) and \
                any(p["metadata"].get("deletionTimestamp") for p in current):
            wait = 1.0
        if wait is not None:
            return Held(wait)
        refused = create(self.kube, children, subset, likely_exist)
        if refused is None:
            self.backoff.clear(uid)
            return None
        return Held(self.backoff.record(uid, generation, refused.verdict, now), refused)

    def sync(self, children: list[dict], warn: Callable[[str], None]) -> None:
        """Bring a running attempt's ConfigMap and Service in line with the spec. A
        refusal (an edit the API server will not take) goes to `warn`; the running
        attempt keeps what it has."""
        for child in children:
            try:
                self.kube.ensure(child, likely_exists=True)
            except KubeError as exc:
                if not classify_error(exc).refused:
                    raise
                warn(f"{child['kind']} {child['metadata']['name']}: {exc.message}")
