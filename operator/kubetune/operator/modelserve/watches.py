"""Watches on the Deployments and Services ModelServes own: a change that matters
reconciles the owning ModelServe at once instead of at the next timer tick.

Why: readiness of the serving replicas reaches the ModelServe's status through its
Deployment's status (the Deployment controller sums its pods), and a Service someone
deleted stops traffic; both used to wait for `KUBETUNE_SERVE_RESYNC_SECONDS`.

- Kopf event handlers, filtered by the labels the builders put on the server's children
  (`naming.LABEL_MODELSERVE` present, component `server`), so every other Deployment and
  Service in the watched namespaces is dropped before any code of ours runs.
- Each event is reduced to a small signature of what a reconcile acts on
  (`deployment_signature`, `service_signature`); an event whose signature equals the one
  seen last for that object (a status write of ours echoed back, a resync, metadata
  churn) is dropped. A deletion always counts. First sightings (the listing at start-up,
  our own creates) count not: the ModelServe's own resume/create handler covers them.
- What counts pokes the `Router` (`operator/router.py`) under the owner's key: one run
  per ModelServe at a time, and every poke arriving while it runs folds into ONE more
  run, which reads the newest state. The run calls `ServeService.reconcile_by_name` in a
  thread, which takes the same per-ModelServe lock as the create/update handler and the
  timer, so no two reconciles of one ModelServe ever interleave.
- The owner comes from the child's controller reference (label values can be hashed,
  names cannot), so routing costs no request; the reconcile makes only its usual ones.

Kopf runs these async handlers in its event loop, the only thread that touches the
signatures and the router.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping

import kopf

from kubetune.api import MODELSERVE

from ..kube import KubeError
from ..naming import LABEL_COMPONENT
from ..router import Retry, Router
from . import naming
from .service import InvalidServe, ServeService

log = logging.getLogger("kubetune.operator.modelserve")

CHILD_LABELS = {naming.LABEL_MODELSERVE: kopf.PRESENT, LABEL_COMPONENT: naming.COMPONENT_SERVER}
# Signatures only spare reconciles; should deletions be missed, forgetting them all costs
# one reconcile per child at its next event.
SIGNATURE_LIMIT = 50_000

Key = tuple[str, str]  # (namespace, ModelServe name)


def _deleting(meta: Mapping) -> bool:
    return bool(meta.get("deletionTimestamp"))


def deployment_signature(body: Mapping) -> tuple:
    """What `status.rollout` reads (generation against observedGeneration, replica
    counts) plus the conditions and the deletion mark. metadata.generation moves on
    any spec edit, so a Deployment someone changed is put back at once too."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conditions = tuple(sorted(
        (c.get("type") or "", c.get("status") or "", c.get("reason") or "")
        for c in status.get("conditions") or []))
    return ("deployment", meta.get("generation"), _deleting(meta),
            status.get("observedGeneration"), status.get("replicas"),
            status.get("readyReplicas"), status.get("availableReplicas"),
            status.get("updatedReplicas"), status.get("unavailableReplicas"), conditions)


def service_signature(body: Mapping) -> tuple:
    """The fields `build_service` sets (type, selector, ports), so a hand edit of them
    is put back; the API server's defaults and the status never change it."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    ports = tuple((p.get("name"), p.get("port"), str(p.get("targetPort")), p.get("protocol"))
                  for p in spec.get("ports") or [])
    selector = tuple(sorted((spec.get("selector") or {}).items()))
    return ("service", _deleting(meta), spec.get("type"), selector, ports)


def owner_key(body: Mapping) -> Key | None:
    """(namespace, name) of the ModelServe a child belongs to, from its owner reference."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == MODELSERVE.kind and \
                str(ref.get("apiVersion", "")).split("/")[0] == MODELSERVE.group:
            return (meta.get("namespace"), ref.get("name"))
    return None


class ChildWatch:
    """The signature seen last per child (by uid); decides which events poke."""

    def __init__(self, poke: Callable[[Hashable], None]):
        self.poke = poke
        self.signatures: dict[str, tuple] = {}
        self.routed = 0
        self.dropped = 0

    def event(self, kind: str | None, body: Mapping,
              signature: Callable[[Mapping], tuple]) -> bool:
        """Record one watch event (`kind`: None for a listing, ADDED, MODIFIED,
        DELETED); True when it poked the owning ModelServe."""
        key = owner_key(body)
        uid = (body.get("metadata") or {}).get("uid")
        if kind == "DELETED":
            self.signatures.pop(uid, None)
        else:
            new = signature(body)
            old = self.signatures.get(uid)
            if len(self.signatures) >= SIGNATURE_LIMIT and old is None:
                self.signatures.clear()
            self.signatures[uid] = new
            # First sight: the listing at start-up or a create (ours, usually); the
            # ModelServe's resume/create handler reconciles it anyway. A MODIFIED
            # without a record (memory cleared) counts: the change is unknown.
            if old == new or (old is None and kind != "MODIFIED"):
                self.dropped += 1
                return False
        if key is None:
            return False
        self.routed += 1
        self.poke(key)
        return True


class ServeTriggers:
    """The one queue of event-driven ModelServe reconciles: the Deployment and Service
    watches and the FineTuneJob watch poke it; the Router runs `reconcile_by_name` in a
    worker thread, one run per ModelServe at a time, pokes during a run folded into one
    more run, API errors retried after `retry_seconds`."""

    def __init__(self, service: Callable[[], ServeService], retry_seconds: float = 10.0):
        self.service = service
        self.retry_seconds = retry_seconds
        self.router = Router(self._run, error_retry=retry_seconds)
        self.children = ChildWatch(self.poke)

    def poke(self, key: Hashable) -> None:
        """From Kopf's event loop only; never blocks."""
        self.router.poke(key)

    async def _run(self, key: Hashable, _sync: bool) -> float | None:
        namespace, name = key
        try:
            found = await asyncio.to_thread(self.service().reconcile_by_name, namespace, name)
        except InvalidServe:
            return None  # status already says Stalled; the spec's author must act
        except KubeError as exc:
            raise Retry(f"ModelServe {namespace}/{name}: {exc}", self.retry_seconds) from None
        if found is None:  # gone or going: drop what the router keeps for it
            self.router.forget(key)
        return None


def register(registry: kopf.OperatorRegistry, triggers: ServeTriggers) -> None:
    """Add the Deployment and Service event handlers to `registry`."""

    @kopf.on.event("apps", "v1", "deployments", id="modelserve-deployment-changed",
                   labels=CHILD_LABELS, registry=registry)
    async def deployment_changed(type, body, **_) -> None:  # noqa: A002 (Kopf's kwarg)
        triggers.children.event(type, body, deployment_signature)

    @kopf.on.event("v1", "services", id="modelserve-service-changed",
                   labels=CHILD_LABELS, registry=registry)
    async def service_changed(type, body, **_) -> None:  # noqa: A002
        triggers.children.event(type, body, service_signature)
