"""Kopf handlers for FineTuneJob: thin — route each trigger to one run for the job.

What triggers a reconcile (`FineTuneService.reconcile`), all through one `Router`, so a
job is never reconciled twice at once and a burst of triggers becomes one more run:
- the job itself: its first sighting in this process (creation, or operator start) and
  every spec change (metadata.generation ahead of status.observedGeneration, the kstatus
  way); these also bring the ConfigMap and Service in line with the spec;
- its pods and their nodes, the moment they change (`watches`): an Eviction, a
  DisruptionTarget condition, a container ending, a pod deleted, a spot-interruption
  taint, a Node deleted;
- a reconcile asking to come back (a backoff ending, a conflict, a pod on a deleted
  node reaching the end of its grace period);
- a periodic run, $KUBETUNE_RECONCILE_INTERVAL seconds (default 10) after the last one,
  for every job not yet finished: it polls the trainer's progress, and is the safety
  net should an event be missed.
A run reads the job's body from the `finetunejobs` index (what Kopf's own timer would
have been handed, at no cost; the status write is conditional on its resourceVersion,
so a stale body can only fail) and its pods and nodes from a snapshot of the watches'
indexes: a periodic run of an idle job makes no API request. $KUBETUNE_WATCH_CHILDREN=0
turns the pod and node watches off (reads go to the API, only the periodic run notices
changes): for the benchmark's side-by-side, and a way back should a cluster's pod churn
make the watch too costly.

The finalizer is ours too: added by the first run (one PATCH), removed once the
`Finalizer` is done (one PATCH). Kopf has no change handler or timer for jobs, so it
writes nothing on them: no last-handled-configuration or progress annotations (what
Kopf's create/update handlers cost, one PATCH per job). Status is ours alone, written
in one conditional patch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import logging
import os
import time

import kopf
import urllib3

from kubetune.api import FINETUNEJOB

from . import kubeconn
from .api_errors import classify_error, retry_delay
from .config import children_watched, load_config
from .finalizer import Finalized, Finalizer
from .finetune_service import TERMINAL, FineTuneService, SpecRefused
from .kube import FINETUNEJOBS, Kube, KubeError
from .metrics import METRICS, serve
from .naming import label_value
from .router import Retry, Router
from .watches import NODE_INDEX, POD_INDEX, Watches
from .watches import register as register_watches

# Ours, on FineTuneJobs. Kopf's own (KOPF_FINALIZER, on ModelServes) must differ: Kopf
# strips its finalizer from any object it watches without a handler that needs it.
# Earlier operators let Kopf finalize jobs (KOPF_FINALIZER): see `legacy_cleanup`.
FINALIZER = "kubetune.dev/finetunejob-cleanup"
KOPF_FINALIZER = "kubetune.dev/finalizer"
INTERVAL = float(os.environ.get("KUBETUNE_RECONCILE_INTERVAL", "10"))
WORKERS = int(os.environ.get("KUBETUNE_RECONCILE_WORKERS", "8"))
MAX_DELETE_RETRIES = 120
CONFLICT_RETRY_SECONDS = 0.5
ECHO_WAIT_SECONDS = 5.0  # how long a run waits for the watch to bring our own last write
JOB_INDEX = "finetunejobs"
RESOURCE = (FINETUNEJOB.group, FINETUNEJOB.version, FINETUNEJOB.plural)

log = logging.getLogger("kubetune.operator")
registry = kopf.OperatorRegistry()


def job_key(namespace: str, name: str) -> tuple[str, str]:
    """A job's key in every index: (namespace, the job label its pods carry)."""
    return (namespace, label_value(name))


def plain_body(body) -> dict:
    """A job's body as plain dicts, without managedFields (large, never read)."""
    plain = copy.deepcopy(dict(body))
    (plain.get("metadata") or {}).pop("managedFields", None)
    return plain


class Runtime:
    """What the start-up builds, and what runs remember between triggers. Touched only
    from Kopf's event loop; the service and the finalizer run in `executor`."""

    def __init__(self, watch_children: bool = children_watched()) -> None:
        self.kube: Kube | None = None
        self.service: FineTuneService | None = None
        self.finalizer: Finalizer | None = None
        self.executor: concurrent.futures.Executor | None = None
        self.jobs = None  # the `finetunejobs` index, handed over by Kopf at start-up
        self.router = Router(self.run)
        self.watches = Watches(self._watched) if watch_children else None
        self.synced: dict[tuple, int] = {}  # generation whose ConfigMap/Service were synced
        self.written: dict[tuple, tuple[str, float]] = {}  # rv a write was based on, when
        self.awaiting: set[tuple] = set()  # runs skipped until that write's echo arrives
        self.failed_cleanups: dict[str, int] = {}
        self.api_failures: dict[tuple, int] = {}  # API errors in a row, per job
        self.delete_tries: dict[str, int] = {}

    def _watched(self, key) -> None:
        METRICS.inc("watch_triggers_total")
        self.router.poke(key)

    def body(self, key) -> dict | None:
        found = list((self.jobs or {}).get(key, ()))
        return copy.deepcopy(found[0]) if found else None

    async def _call(self, fn, *args):
        """`fn(*args)` in a worker thread, with this context (kopf.event() needs it)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, context.run, fn, *args)

    async def run(self, key, sync: bool) -> float | None:
        """One run for the job at `key`: finalize, add the finalizer, or reconcile.
        Returns when to come back (None: only when something changes)."""
        body = self.body(key)
        if body is None:  # the job is gone (its pods' last events may still poke)
            self.router.forget(key)
            return None
        meta = body["metadata"]
        written = self.written.get(key)
        if written and written[0] == meta.get("resourceVersion") and \
                time.monotonic() - written[1] < ECHO_WAIT_SECONDS:
            # Our last write was based on this very body: the watch has not brought the
            # result yet, and deciding from it again would only end in a 409.
            self.awaiting.add(key)
            return ECHO_WAIT_SECONDS
        try:
            if meta.get("deletionTimestamp"):
                return await self._finalize(key, body) if FINALIZER in _finalizers(body) \
                    else None
            if FINALIZER not in _finalizers(body):
                body, sync = await self._call(self._add_finalizer, body), True
                if body is None:
                    return CONFLICT_RETRY_SECONDS  # changed meanwhile: its event pokes too
            rv = body["metadata"].get("resourceVersion")
            if sync:  # now, so that triggers arriving meanwhile ask for no second sync
                self.synced[key] = body["metadata"].get("generation")
            view = self.watches.snapshot(self.kube, key) if self.watches else None
            result = await self._call(self.service.reconcile, body, sync, view)
        except SpecRefused as exc:
            if sync:  # once per spec edit; the status and a Warning Event already say it
                log.error("%s/%s: invalid spec, failed permanently until it changes: %s",
                          meta["namespace"], meta["name"], exc)
            return None
        except (KubeError, urllib3.exceptions.HTTPError) as exc:
            # The API unreachable or overloaded (a refused child is no error: the
            # service reports it): retried later each time, 1 s doubling up to a minute.
            METRICS.inc("errors_total")
            if sync:
                self.synced.pop(key, None)
            failures = self.api_failures[key] = self.api_failures.get(key, 0) + 1
            raise Retry(f"API error: {exc}", retry_delay(classify_error(exc), failures)) \
                from None
        except Exception:
            METRICS.inc("errors_total")
            if sync:
                self.synced.pop(key, None)
            raise
        self.api_failures.pop(key, None)
        if result.wrote_status:
            self.written[key] = (rv, time.monotonic())
        if result.phase in TERMINAL:
            return result.retry_after
        return min(result.retry_after or INTERVAL, INTERVAL)

    def _add_finalizer(self, body: dict) -> dict | None:
        """Block the job's deletion until `_finalize` is done; the new body, or None on
        a conflict (the object changed: its next event brings the fresh one)."""
        meta = body["metadata"]
        kept = [f for f in _finalizers(body) if f != KOPF_FINALIZER]  # ours replaces it
        patch = {"metadata": {"finalizers": [*kept, FINALIZER],
                              "resourceVersion": meta.get("resourceVersion")}}
        try:
            return plain_body(self.kube.patch(FINETUNEJOBS, meta["name"], meta["namespace"],
                                              patch))
        except KubeError as exc:
            if exc.status in (404, 409):
                return None
            raise

    async def _finalize(self, key, body: dict) -> float | None:
        """The job is being deleted: the `Finalizer`'s steps, then release it."""
        meta = body["metadata"]
        uid = meta["uid"]
        tries = self.delete_tries.get(uid, 0)
        self.delete_tries[uid] = tries + 1
        outcome = await self._call(self.finalizer.finalize, body,
                                   self.failed_cleanups.get(uid, 0))
        retry_after = self.judge_cleanup(body, tries, outcome)
        if retry_after is not None:
            return retry_after
        patch = {"metadata": {"finalizers": [f for f in _finalizers(body) if f != FINALIZER],
                              "resourceVersion": meta.get("resourceVersion")}}
        try:
            await self._call(self.kube.patch, FINETUNEJOBS, meta["name"], meta["namespace"],
                             patch)
        except KubeError as exc:
            if exc.status == 409:
                return CONFLICT_RETRY_SECONDS
            if exc.status != 404:
                raise
        self.written[key] = (meta.get("resourceVersion"), time.monotonic())
        return None

    def judge_cleanup(self, body: dict, tries: int, outcome: Finalized) -> float | None:
        """After cleanup step number `tries` (from 0): the Events it calls for, and None
        when the finalizer may go (done, or abandoned after MAX_DELETE_RETRIES steps: the
        checkpoints are kept), else seconds until the next step. Both finalizers (ours,
        and Kopf's on jobs of earlier operators) keep their books here."""
        uid = body["metadata"]["uid"]
        if outcome.warning:
            self.failed_cleanups[uid] = self.failed_cleanups.get(uid, 0) + 1
            kopf.warn(body, reason="CheckpointCleanupFailed", message=outcome.warning)
        if outcome.done:
            return None
        if tries + 1 < MAX_DELETE_RETRIES:
            return outcome.retry_after
        kopf.warn(body, reason="CheckpointCleanupAbandoned",
                  message="checkpoint cleanup did not finish; the checkpoints were kept")
        return None

    def forget(self, key, uid: str | None) -> None:
        self.router.forget(key)
        self.synced.pop(key, None)
        self.written.pop(key, None)
        self.awaiting.discard(key)
        self.api_failures.pop(key, None)
        if uid:
            self.failed_cleanups.pop(uid, None)
            self.delete_tries.pop(uid, None)
        if self.watches:
            self.watches.forget_job(key)


def _finalizers(body: dict) -> list[str]:
    return list(body["metadata"].get("finalizers") or [])


runtime = Runtime()


def post_event(body: dict, kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **kwargs) -> None:
    settings.scanning.disabled = True  # RBAC grants no CRD or namespace listing
    # Kopf's own persistence now serves ModelServes only (see the module docstring).
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration")
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING  # our own Events are explicit, not log lines
    # Kopf keeps a worker per object alive this long after its last event. With every pod
    # watched, a burst (200 jobs applied at once) kept ~10 MiB of idle workers at the
    # default 5 s; 1 s keeps a burst's events on one worker and the peak at its level
    # before the pod watch (bench_operator: peak RSS).
    settings.batching.idle_timeout = 1.0
    config = load_config()
    runtime.kube = kube = Kube(kubeconn.Connection(pool_size=WORKERS))
    runtime.service = FineTuneService(kube, config, emit=post_event)
    runtime.finalizer = Finalizer(kube, config)
    runtime.executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=WORKERS, thread_name_prefix="reconcile")
    runtime.jobs = kwargs[JOB_INDEX]
    if runtime.watches:
        runtime.watches.pods_index = kwargs[POD_INDEX]
        runtime.watches.nodes_index = kwargs[NODE_INDEX]
    METRICS.api_requests = lambda: dict(kube.requests)
    port = os.environ.get("KUBETUNE_METRICS_PORT")
    if port:
        serve(METRICS, int(port))


@kopf.on.login(registry=registry)
def login(**kwargs):
    """The credentials the reconciles' `Kube` uses too (one loader: `kubeconn.login`)."""
    return kubeconn.login(**kwargs)


@kopf.index(*RESOURCE, id=JOB_INDEX, registry=registry)
async def finetunejobs(namespace, name, body, **_) -> dict:
    """Every job's latest body, for the runs the watches and the router start."""
    return {job_key(namespace, name): plain_body(body)}


@kopf.on.event(*RESOURCE, id="finetunejob-changed", registry=registry)
async def job_changed(type, namespace, name, meta, uid, **_) -> None:  # noqa: A002
    """Route the job's own changes: creation, spec edits, deletion, our writes' echoes."""
    key = job_key(namespace, name)
    if type == "DELETED":
        runtime.forget(key, uid)
        return
    if meta.get("deletionTimestamp"):
        if FINALIZER in (meta.get("finalizers") or []):
            runtime.router.poke(key)
        return
    # Once per generation in this process: creation, operator start, each spec edit.
    sync = runtime.synced.get(key, -1) != meta.get("generation")
    if sync or key in runtime.awaiting:
        runtime.awaiting.discard(key)
        runtime.router.poke(key, sync=sync)


def _has_legacy_finalizer(meta, **_) -> bool:
    return KOPF_FINALIZER in (meta.get("finalizers") or [])


@kopf.on.delete(*RESOURCE, id="finetunejob-legacy-cleanup", when=_has_legacy_finalizer,
                registry=registry)
def legacy_cleanup(body, retry, **_) -> None:
    """A job that an earlier operator finalized through Kopf (KOPF_FINALIZER), deleted
    before this operator's first run replaced that finalizer with ours (a finalizer
    cannot be added to an object being deleted): its cleanup runs here, through Kopf,
    which keeps its finalizer on such jobs only (this handler's filter) and releases it
    once this returns. Every other job is finalized by `Runtime._finalize`."""
    job = plain_body(body)
    failed = runtime.failed_cleanups.get(job["metadata"]["uid"], 0)
    outcome = runtime.finalizer.finalize(job, failed)
    retry_after = runtime.judge_cleanup(job, retry, outcome)
    if retry_after is not None:
        raise kopf.TemporaryError("checkpoint cleanup still running", delay=max(1.0, retry_after))


if runtime.watches:
    register_watches(registry, runtime.watches)

# ModelServe's handlers run in the same operator process, on the same registry.
from .modelserve.handlers import register as _register_modelserve  # noqa: E402

_register_modelserve(registry)
