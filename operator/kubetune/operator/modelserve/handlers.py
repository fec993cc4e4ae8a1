"""Kopf handlers for ModelServe: parse nothing, decide nothing, call the service.

`register(registry)` adds them to an operator's registry (the operator's own, in
`operator/handlers.py`; a test's, with its own service). Nothing registers at import, so
the handlers never land twice or on a registry nobody runs. Paths into the one
`ServeService.reconcile`:
- create / resume / update of a ModelServe;
- a timer (`KUBETUNE_SERVE_RESYNC_SECONDS`, default 15 s) that re-resolves adapters and
  reads replicas and per-pod adapter states, which change without any ModelServe edit;
- a FineTuneJob reaching Succeeded, NotPromoted or Failed (or going away) reconciles, at once, every
  ModelServe that references it, through an index of ModelServes by referenced job;
- a change of a Deployment or Service a ModelServe owns (the Deployment's replica counts,
  conditions, observedGeneration, a spec edit, a deletion; the Service's spec or its
  deletion) reconciles the owner at once (`watches`); `KUBETUNE_WATCH_CHILDREN=0` turns
  these two watches off, as it does the FineTuneJob's pod and node watches.
The event-driven paths (the last two) share one queue (`watches.ServeTriggers`): one
run per ModelServe at a time, a burst folded into one more run; every path takes the
service's per-ModelServe lock, so the timer and the create/update handler never
interleave with them. The timer stays the safety net, and the one reader of per-pod
adapter states (the agents report them over HTTP, not through the API).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import kopf

from kubetune.api import FINETUNEJOB, MODELSERVE

from ..api_errors import classify_error, retry_delay
from ..config import children_watched, load_config
from ..kube import Kube, KubeError
from .service import InvalidServe, ServeService
from .watches import ServeTriggers
from .watches import register as register_watches

RESYNC_SECONDS = float(os.environ.get("KUBETUNE_SERVE_RESYNC_SECONDS", "15"))
RETRY_SECONDS = 10
TERMINAL_JOB_PHASES = {"Succeeded", "NotPromoted", "Failed"}
GROUP, VERSION = MODELSERVE.group, MODELSERVE.version


def post_event(body, kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message)


def default_service() -> ServeService:
    """Built on first use, so $KUBECONFIG and the config file are read at run time."""
    return ServeService(Kube(), load_config(), emit=post_event)


def register(registry: kopf.OperatorRegistry,
             make_service: Callable[[], ServeService] = default_service,
             resync_seconds: float = RESYNC_SECONDS,
             watch_children: bool = children_watched()) -> ServeTriggers:
    """Returns the event-driven queue (tests read its counters)."""
    holder: list[ServeService] = []

    def service() -> ServeService:
        if not holder:
            holder.append(make_service())
        return holder[0]

    triggers = ServeTriggers(service, retry_seconds=RETRY_SECONDS)

    # Explicit ids: a nested function's default id ("register.<locals>.…") would end up
    # in progress annotations and in the name of the index's kwarg.
    @kopf.on.resume(GROUP, VERSION, MODELSERVE.plural, id="modelserve-reconcile", registry=registry)
    @kopf.on.create(GROUP, VERSION, MODELSERVE.plural, id="modelserve-reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, MODELSERVE.plural, id="modelserve-reconcile", field="spec",
                    registry=registry)
    def reconcile_modelserve(body, retry, **_) -> None:
        """A child the API server refuses is no error here: the service reports it
        (Stalled or waiting, an Event) and the timer retries it after a backoff. What
        raises is the API unreachable or overloaded: retried, later each time."""
        try:
            service().reconcile(body)
        except InvalidServe as exc:
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
            raise kopf.PermanentError(str(exc)) from None
        except KubeError as exc:
            delay = retry_delay(classify_error(exc), retry + 1)
            raise kopf.TemporaryError(str(exc), delay=delay) from None

    @kopf.timer(GROUP, VERSION, MODELSERVE.plural, id="modelserve-resync",
                interval=resync_seconds, initial_delay=resync_seconds, registry=registry)
    def resync_modelserve(body, logger, **_) -> None:
        try:
            service().reconcile(body)
        except InvalidServe:
            pass  # status already says Stalled; the Event was posted on create/update
        except KubeError as exc:
            logger.warning("resync failed, next in %ss: %s", resync_seconds, exc)

    @kopf.index(GROUP, VERSION, MODELSERVE.plural, id="modelserves_by_job", registry=registry)
    def modelserves_by_job(namespace, name, spec, **_) -> dict:
        refs = {(a.get("fineTuneJobRef") or {}).get("name") for a in spec.get("adapters") or []}
        return {(namespace, job): name for job in refs if job}

    @kopf.on.event(FINETUNEJOB.group, FINETUNEJOB.version, FINETUNEJOB.plural,
                   id="modelserve-finetunejob-watch", registry=registry)
    async def finetunejob_changed(event, namespace, name, status,
                                  modelserves_by_job: kopf.Index, **_) -> None:
        if event.get("type") != "DELETED" and status.get("phase") not in TERMINAL_JOB_PHASES:
            return
        for serve in sorted(set(modelserves_by_job.get((namespace, name), []))):
            triggers.poke((namespace, serve))

    if watch_children:
        register_watches(registry, triggers)
    return triggers
