"""Reconcile one ModelServe: resolve adapters, apply children, observe, write status.

One entry point (`reconcile`, or `reconcile_by_name` from a fresh read) serves create,
resume, update, the periodic timer and the watches (FineTuneJobs, the serve's own
Deployment and Service), so every path converges the same way. All Kubernetes I/O goes
through `kube.Kube`; pod answers come from each ready pod's adapter agent (GET
/v1/adapters on the agent's port: what it verified and loaded into vLLM). Calls for
the same ModelServe are serialised in-process: the timer, the create/update handler and
a watch event may fire together, and two interleaved reconciles would write flapping
status.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from kubetune.api import MODELSERVE, ModelServeSpec, SpecError, parse_spec
from kubetune.api.modelserve import AGENT_PORT

from ..api_errors import classify_error
from ..child_fields import MODELSERVE as OWNER
from ..child_fields import describe
from ..conditions import status_patch
from ..config import OperatorConfig
from ..kube import CONFIGMAPS, FINETUNEJOBS, PODS, SERVICES, Kind, Kube, KubeError
from ..refusals import FAILED_CREATE, Backoff, Refused
from . import naming
from .apply import apply_patch, with_last_applied
from .builders import ServeMeta, build_children, endpoint
from .refusals import probe_pod
from .resolve import referenced_jobs, resolve_adapters
from .status import Observed, PodReport, compute_status, invalid_spec_status, refused_status

log = logging.getLogger("kubetune.operator.modelserve")

DEPLOYMENTS = Kind("apps", "v1", "deployments")
PDBS = Kind("policy", "v1", "poddisruptionbudgets")
MODELSERVES = Kind(MODELSERVE.group, MODELSERVE.version, MODELSERVE.plural)
CHILD_KINDS = {"ConfigMap": CONFIGMAPS, "Service": SERVICES, "Deployment": DEPLOYMENTS,
               "PodDisruptionBudget": PDBS}
POD_TIMEOUT = 3.0
_UNREAD = object()  # `_apply`: the live object was not read yet


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def pod_ready(pod: Mapping) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def ask_pod(pod: Mapping, port: int = AGENT_PORT, timeout: float = POD_TIMEOUT) -> PodReport:
    """GET /v1/adapters of one pod's agent; a pod that does not answer reports nothing."""
    name = pod["metadata"]["name"]
    ready = pod_ready(pod)
    ip = (pod.get("status") or {}).get("podIP")
    if not ready or not ip:
        return PodReport(name, ready)
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/v1/adapters", timeout=timeout) as answer:
            body = json.loads(answer.read())
        adapters = {a["name"]: a for a in body.get("adapters") or [] if "name" in a}
        return PodReport(name, ready, adapters)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return PodReport(name, ready, None, str(exc))


def ask_pods(pods: list[Mapping], port: int = AGENT_PORT) -> list[PodReport]:
    if not pods:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        return list(pool.map(lambda pod: ask_pod(pod, port), pods))


class InvalidServe(SpecError):
    """The spec is invalid: status says Stalled; the handler turns this into an Event."""


class ServeService:
    """`emit(body, type, reason, message)` posts an Event (the handlers pass Kopf's)."""

    def __init__(self, kube: Kube, config: OperatorConfig,
                 probe: Callable[[list[Mapping], int], list[PodReport]] = ask_pods,
                 clock: Callable[[], datetime] = utcnow,
                 emit: Callable[[Mapping, str, str, str], None] | None = None):
        self.kube = kube
        self.config = config
        self.probe = probe
        self.clock = clock
        self.emit = emit or (lambda *_: None)
        self.refusals = Backoff()  # (namespace, name) -> refused tries of a generation
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def reconcile(self, body: Mapping) -> dict:
        """Converge one ModelServe; returns the status it has now. Raises InvalidServe
        (after writing a Stalled status) when the spec cannot be served."""
        meta = ServeMeta.from_meta(body["metadata"])
        with self._lock(meta.namespace, meta.name):
            return self._reconcile(meta, body)

    def reconcile_by_name(self, namespace: str, name: str) -> dict | None:
        """Reconcile from a fresh read; None when the ModelServe is gone or going. The
        read is made under the lock, so a run that waited for another one starts from
        the status that one wrote, not from a body read before it."""
        with self._lock(namespace, name):
            body = self.kube.get(MODELSERVES, name, namespace)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            return self._reconcile(ServeMeta.from_meta(body["metadata"]), body)

    def _reconcile(self, meta: ServeMeta, body: Mapping) -> dict:
        generation = body["metadata"].get("generation")
        old_status = dict(body.get("status") or {})
        try:
            spec = parse_spec(ModelServeSpec, dict(body.get("spec") or {}))
        except SpecError as exc:
            self._write_status(meta, old_status, invalid_spec_status(
                str(exc), generation, old_status, self.clock()))
            raise InvalidServe(exc.problems) from None
        key = (meta.namespace, meta.name)
        if self.refusals.wait(key, generation, self.clock()) is not None:
            return old_status  # refused: retried after a backoff, at once on a spec edit
        jobs = {name: self.kube.get(FINETUNEJOBS, name, meta.namespace)
                for name in referenced_jobs(spec)}
        resolutions = resolve_adapters(spec, jobs)
        try:
            children = build_children(meta, spec, self.config, resolutions)
        except SpecError as exc:
            self._write_status(meta, old_status, invalid_spec_status(
                str(exc), generation, old_status, self.clock()))
            raise InvalidServe(exc.problems) from None
        refused = self._apply_all(meta, children)
        if refused is not None:
            return self._refused(meta, body, old_status, refused)
        self.refusals.clear(key)
        if not any(child["kind"] == "PodDisruptionBudget" for child in children):
            self._delete_owned(PDBS, naming.server_name(meta.name), meta)
        deployment = self.kube.get(DEPLOYMENTS, naming.server_name(meta.name), meta.namespace)
        pods = self.kube.list(PODS, meta.namespace, naming.selector(meta.name))
        observed = Observed(generation, spec.replicas, deployment, self.probe(pods, AGENT_PORT))
        status = compute_status(resolutions, observed, endpoint(meta, spec), old_status,
                                self.clock())
        self._write_status(meta, old_status, status)
        return status

    def _apply_all(self, meta: ServeMeta, children: list[dict]) -> Refused | None:
        """Apply every child; a `Refused` when the API server refuses one (or, in a dry
        run, a pod of a Deployment about to be created or changed: `refusals`). A serve
        refused before its Deployment existed keeps no child; a running one keeps its
        children as they were (the refused edit is reported, the old pods serve on)."""
        deployment = next(c for c in children if c["kind"] == "Deployment")
        live = self.kube.get(DEPLOYMENTS, deployment["metadata"]["name"], meta.namespace)
        child = probe_pod(deployment)
        try:
            if live is None or apply_patch(deployment, live) is not None:
                self.kube.create(PODS, child, dry_run=True)
            for child in children:
                self._apply(child, live if child is deployment else _UNREAD)
        except KubeError as exc:
            verdict = classify_error(exc)
            if not verdict.refused:
                raise
            if live is None:
                for made in children:
                    self._delete_owned(CHILD_KINDS[made["kind"]], made["metadata"]["name"], meta)
            field, message = describe(OWNER, child, verdict)
            return Refused(verdict, child, field, message)
        return None

    def _refused(self, meta: ServeMeta, body: Mapping, old_status: dict,
                 refused: Refused) -> dict:
        """Stalled (or waiting for a quota) naming the field, a FailedCreate Event when
        that is news, and the next try after a backoff."""
        generation = body["metadata"].get("generation")
        now = self.clock()
        delay = self.refusals.record((meta.namespace, meta.name), generation,
                                     refused.verdict, now)
        log.warning("%s/%s: %s; next try in %.0fs", meta.namespace, meta.name,
                    refused.message, delay)
        status = refused_status(refused.message, refused.reason, refused.verdict.permanent,
                                generation, old_status, now)
        if self._write_status(meta, old_status, status):
            self.emit(body, "Warning", FAILED_CREATE, refused.message)
        return status

    def _apply(self, desired: dict, actual=_UNREAD) -> str:
        """`actual`: the live object (None: absent) when the caller has just read it."""
        kind = CHILD_KINDS[desired["kind"]]
        name, namespace = desired["metadata"]["name"], desired["metadata"]["namespace"]
        if actual is _UNREAD:
            actual = self.kube.get(kind, name, namespace)
        if actual is None:
            return "created" if self.kube.create(kind, with_last_applied(desired)) else "exists"
        patch = apply_patch(desired, actual)
        if patch is None:
            return "unchanged"
        self.kube.patch(kind, name, namespace, patch)
        log.info("patched %s %s/%s", desired["kind"], namespace, name)
        return "patched"

    def _delete_owned(self, kind: Kind, name: str, meta: ServeMeta) -> None:
        actual = self.kube.get(kind, name, meta.namespace)
        owners = ((actual or {}).get("metadata") or {}).get("ownerReferences") or []
        if any(owner.get("uid") == meta.uid for owner in owners):
            self.kube.delete(kind, name, meta.namespace)

    def _write_status(self, meta: ServeMeta, old: dict, new: dict) -> bool:
        """Only when the wire form changed: an unchanged serve costs no write."""
        patch = status_patch(old, new)
        if patch is not None:
            self.kube.patch(MODELSERVES, meta.name, meta.namespace, patch, "status")
        return patch is not None
