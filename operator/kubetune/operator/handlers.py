"""Kopf handlers for FineTuneJob: thin — take the body, call a service, map the outcome.

Create, resume and spec updates reconcile at once; a timer re-reconciles every
$KUBETUNE_RECONCILE_INTERVAL seconds (default 10) because pods, nodes and the trainer's
progress change without touching the job. Handlers return nothing: Kopf would store a
return value in status, which is ours alone and written in one conditional patch.
"""

from __future__ import annotations

import logging
import os
import threading

import kopf

from kubetune.api import FINETUNEJOB

from .config import load_config
from .finalizer import Finalizer
from .finetune_service import FineTuneService, Result, SpecRefused
from .kube import Kube, KubeError
from .metrics import METRICS, serve

FINALIZER = "kubetune.dev/finalizer"
INTERVAL = float(os.environ.get("KUBETUNE_RECONCILE_INTERVAL", "10"))
MAX_DELETE_RETRIES = 120
RESOURCE = (FINETUNEJOB.group, FINETUNEJOB.version, FINETUNEJOB.plural)

registry = kopf.OperatorRegistry()


class Runtime:
    """The services built at start-up, plus per-job locks: Kopf runs a timer tick and a
    change handler of the same job concurrently; one reconcile per job at a time."""

    service: FineTuneService | None = None
    finalizer: Finalizer | None = None
    failed_cleanups: dict[str, int] = {}
    _locks: dict[str, threading.Lock] = {}
    _guard = threading.Lock()

    @classmethod
    def lock(cls, uid: str) -> threading.Lock:
        with cls._guard:
            return cls._locks.setdefault(uid, threading.Lock())

    @classmethod
    def forget(cls, uid: str) -> None:
        """The job is gone: drop its lock and cleanup count."""
        with cls._guard:
            cls._locks.pop(uid, None)
            cls.failed_cleanups.pop(uid, None)


def post_event(body: dict, kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.scanning.disabled = True  # RBAC grants no CRD or namespace listing
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration")
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING  # our own Events are explicit, not log lines
    config = load_config()
    kube = Kube()
    Runtime.service = FineTuneService(kube, config, emit=post_event)
    Runtime.finalizer = Finalizer(kube, config)
    METRICS.api_requests = lambda: dict(kube.requests)
    port = os.environ.get("KUBETUNE_METRICS_PORT")
    if port:
        serve(METRICS, int(port))


@kopf.on.login(registry=registry)
def login(**kwargs):
    """$KUBECONFIG when set (read now, not at import), else the pod's service account."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _reconcile(body, sync_children: bool) -> Result | None:
    body = _plain(body)
    lock = Runtime.lock(body["metadata"]["uid"])
    if not lock.acquire(timeout=60 if sync_children else 0):
        return None  # the other handler is on it
    try:
        return Runtime.service.reconcile(body, sync_children=sync_children)
    except KubeError as exc:
        METRICS.inc("errors_total")
        raise kopf.TemporaryError(f"API error, will retry: {exc}", delay=5) from None
    except Exception:
        METRICS.inc("errors_total")  # Kopf logs it and retries the handler
        raise
    finally:
        lock.release()


@kopf.on.resume(*RESOURCE, registry=registry)
@kopf.on.create(*RESOURCE, registry=registry)
@kopf.on.update(*RESOURCE, field="spec", registry=registry)
def reconcile(body, **_) -> None:
    """A status write lost to a concurrent change (409) is not retried here: the
    children are in place and the next timer tick decides again from fresh state."""
    try:
        _reconcile(body, sync_children=True)
    except SpecRefused as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from None


@kopf.timer(*RESOURCE, interval=INTERVAL, initial_delay=INTERVAL, registry=registry)
def tick(body, **_) -> None:
    try:
        _reconcile(body, sync_children=False)
    except SpecRefused:
        pass  # already in status and announced; the next spec edit reconciles again


@kopf.on.delete(*RESOURCE, registry=registry)
def delete(body, retry: int, **_) -> None:
    body = _plain(body)
    uid = body["metadata"]["uid"]
    outcome = Runtime.finalizer.finalize(body, Runtime.failed_cleanups.get(uid, 0))
    if outcome.warning:
        Runtime.failed_cleanups[uid] = Runtime.failed_cleanups.get(uid, 0) + 1
        kopf.warn(body, reason="CheckpointCleanupFailed", message=outcome.warning)
    if outcome.done:
        Runtime.forget(uid)
        return
    if retry >= MAX_DELETE_RETRIES:
        kopf.warn(body, reason="CheckpointCleanupAbandoned",
                  message="checkpoint cleanup did not finish; the checkpoints were kept")
        Runtime.forget(uid)
        return
    raise kopf.TemporaryError("waiting for the checkpoint cleanup pod", delay=outcome.retry_after)


def _plain(body) -> dict:
    """Kopf's Body as plain nested dicts (the services take and return plain data)."""
    import copy

    return copy.deepcopy(dict(body))


# ModelServe's handlers run in the same operator process, on the same registry.
from .modelserve.handlers import register as _register_modelserve  # noqa: E402

_register_modelserve(registry)
