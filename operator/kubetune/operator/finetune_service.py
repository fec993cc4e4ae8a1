"""Reconcile one FineTuneJob: observe its pods, decide, commit one status write, act.

Handlers (create/resume/update and the timer) all call `FineTuneService.reconcile`.
The order of effects is what makes an operator restart at any moment harmless:
1. the decision and every counter it moves are committed in ONE conditional status
   write (the job's resourceVersion is the precondition, so two reconciles racing on a
   stale view cannot both count the same preemption);
2. only then are the ended attempt's pods deleted;
3. the next attempt's pods (deterministic names, 409 = already there) are created by a
   later reconcile once the old ones are gone and the backoff has passed.
A restart between any two steps finds the status ahead of the pods and just continues.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus, SpecError, parse_spec

from . import accounting, attempt_start, evaluation_status, job_status, refusals
from . import progress as progress_mod
from .builders import JobMeta, build_children, needs_ray_auth
from .cluster_view import ApiView, ClusterView, stopped_by
from .conditions import job_conditions, status_patch
from .config import OperatorConfig
from .kube import FINETUNEJOBS, PODS, Kube, KubeError
from .metrics import METRICS, Metrics
from .naming import LABEL_ATTEMPT, head_pod_name, selector_labels
from .pod_state import PodState, attempt_state, classify_missing_pod, classify_pod, parse_time
from .recovery import Decision, RecoveryState, decide

log = logging.getLogger("kubetune.operator")
TERMINAL = ("Succeeded", "NotPromoted", "Failed")
INVALID_SPEC = "InvalidSpec"
RAY_AUTH_TOKEN_BYTES = 32
# How long a new attempt's first status write waits for the scheduler's verdict on its
# pods (ms on a healthy cluster, ~1 s for a burst of 200 jobs), see `_first_status`.
VERDICT_WAIT_SECONDS = 3.0
VERDICT_FORGET_SECONDS = 3600.0  # a wait entry whose job never came back is dropped then
Emit = Callable[[dict, str, str, str], None]


class SpecRefused(Exception):
    """The spec cannot run; the status already says why (handlers: PermanentError)."""


@dataclass(frozen=True)
class Result:
    """What a reconcile did; `retry_after` asks the caller to come back sooner."""

    phase: str | None
    wrote_status: bool = False
    conflict: bool = False
    retry_after: float | None = None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def attempt_of(pod: dict) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT, "0"))
    except ValueError:
        return 0


class FineTuneService:
    """All decisions about FineTuneJobs; I/O only through `kube`, `emit`, `poll` and the
    view pods and nodes are read from (`view`: the API unless a reconcile brings a
    snapshot of the operator's watch caches, see `cluster_view`)."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: Emit,
                 now: Callable[[], datetime] = utcnow, poll=progress_mod.fetch,
                 metrics: Metrics = METRICS, view: ClusterView | None = None):
        self.kube, self.config, self.emit, self.now = kube, config, emit, now
        self.poll, self.metrics = poll, metrics
        self.view = view or ApiView(kube)
        self.profile = config.spot_profile()
        self.wait_grace = self.profile.deleted_node_pods == "AfterGracePeriod"
        # (job uid, attempt) -> until when its first status write waits for the scheduler
        self.verdict_waits: dict[tuple[str, int], datetime] = {}
        self.starter = attempt_start.Starter(kube)  # remembers refused attempts

    # --- entry point ------------------------------------------------------------------
    def reconcile(self, body: dict, sync_children: bool = False,
                  view: ClusterView | None = None) -> Result:
        """`sync_children`: also bring the ConfigMap and Service in line with the spec
        (on create/resume/update; the timer only watches pods). `view`: where this
        reconcile reads pods and nodes (default: the service's own)."""
        self.metrics.inc("reconciles_total")
        meta = body["metadata"]
        status = job_status.read(body)
        generation = meta.get("generation")
        if status.phase in TERMINAL and status.observed_generation == generation:
            return Result(status.phase)
        try:
            job = JobMeta.from_meta(meta)
            spec = parse_spec(FineTuneJobSpec, body.get("spec"))
            capacity = status.capacity_type or RecoveryState.initial(spec).capacity_type
            # A fresh token each reconcile, but only the first one reaches the API server:
            # the Secret is create-only, so later creates get 409 and the stored one stays.
            token = secrets.token_urlsafe(RAY_AUTH_TOKEN_BYTES) if needs_ray_auth(spec) else None
            children = build_children(job, spec, self.config, status.attempt or 1, capacity,
                                      ray_auth_token=token)
        except SpecError as exc:
            self._refuse(body, status, str(exc))
            raise SpecRefused(str(exc)) from None
        if status.phase == "Failed" and status.conditions and \
                status.conditions[0].reason == INVALID_SPEC:
            status = FineTuneJobStatus()  # the spec was fixed: start afresh
        return self._reconcile(body, job, spec, status, children, sync_children,
                               view or self.view)

    def _reconcile(self, body, job: JobMeta, spec: FineTuneJobSpec, status: FineTuneJobStatus,
                   children: list[dict], sync: bool, view: ClusterView) -> Result:
        state = (RecoveryState.from_status(spec, status, status.attempt) if status.attempt
                 else RecoveryState.initial(spec))
        pods = view.pods(job.namespace, selector_labels(job.name))
        if any(attempt_of(p) > state.attempt for p in pods):
            # Pods of a later attempt than this status knows: the body predates the
            # write that started them (a watch a moment behind). Never act on it.
            return Result(status.phase, conflict=True, retry_after=1.0)
        current = [p for p in pods if attempt_of(p) == state.attempt]
        stale = [p for p in pods if attempt_of(p) < state.attempt and _is_attempt_pod(p)]
        held = attempt_start.clear_stale(self.kube, job.namespace, stale, view, self.now(),
                                         self.wait_grace)
        wanted_pods = [c for c in children if c["kind"] == "Pod"]
        # An attempt counts as started once the status write after creating its pods
        # cleared nextAttemptAfter; from then on a missing pod is a lost pod.
        started = status.attempt is not None and status.next_attempt_after is None
        # Pods this process created for the attempt, its first status write still to
        # come: missing now, they were lost (an eviction in that window counts), or are
        # not in the watch cache yet (`_observe` asks the API); never created again.
        created = (job.uid, state.attempt) in self.verdict_waits
        if not current and not started and not created:
            return _sooner(self._start_attempt(body, job, status, state, children,
                                               blocked=bool(stale)), held)
        if not started and not created:  # an operator restart came between
            names = {p["metadata"]["name"] for p in current}
            missing = [c for c in wanted_pods if c["metadata"]["name"] not in names]
            if missing and not view.authoritative:  # perhaps only not in the cache yet
                return self._reconcile(body, job, spec, status, children, sync,
                                       view.confirmed())
            # Deleted before the attempt's first status write: recreate. The Secret
            # follows the pods (`attempt_start`): a restart may have come between.
            subset = missing + [c for c in children if c["kind"] == "Secret"]
            stopped = self._create(body, job, status, children, subset, current) \
                if subset else None
            if stopped is not None or missing:
                return stopped or Result(status.phase, retry_after=1.0)
        if sync:  # the token Secret matters only when pods are created: skip it here
            self.starter.sync([c for c in children if c["kind"] not in ("Pod", "Secret")],
                              lambda text: self.emit(body, "Warning", "FailedUpdate", text))
        observed = self._observe(view, wanted_pods, current)
        if observed is None:  # the snapshot lacks a pod or a node: only the API can tell
            return self._reconcile(body, job, spec, status, children, False, view.confirmed())
        outcome, by_name, sightings, stopping = observed
        if outcome.kind == "Preempted" and not outcome.terminated:
            return _sooner(self._drain(body, spec, status, state, outcome, sightings), stopping)
        decision = decide(spec, state, outcome, self.now())
        if not started and decision.action == "wait":
            return self._first_status(body, job, spec, status, state, decision, outcome,
                                      sightings, by_name)
        self.verdict_waits.pop((job.uid, state.attempt), None)
        if job_status.nothing_new(status, decision):
            return Result(status.phase)
        new = self._next_status(body, spec, status, decision, outcome, sightings, by_name)
        result = self._commit(body, status, new, decision)
        if result.wrote_status and (decision.starts_new_attempt or decision.action in
                                    ("succeed", "fail")):
            self._end_attempt(job, current, keep_head=not decision.starts_new_attempt)
        return result

    # --- steps ------------------------------------------------------------------------
    def _start_attempt(self, body, job, status, state: RecoveryState, children, blocked: bool):
        """Create the attempt's children once the old pods are gone and backoff is over.
        The status write that marks the attempt started waits for the pods' first
        sighting (`_first_status`), so that it can carry the scheduler's verdict."""
        now = self.now()
        wait = (status.next_attempt_after - now).total_seconds() \
            if status.next_attempt_after else 0.0
        if blocked or wait > 0:
            return Result(status.phase, retry_after=max(1.0, wait))
        # A later attempt finds its ConfigMap and Service from the first: GET, not POST+409+GET.
        stopped = self._create(body, job, status, children, likely_exist=state.attempt > 1)
        if stopped is not None:
            return stopped
        for key, until in list(self.verdict_waits.items()):
            if until < now - timedelta(seconds=VERDICT_FORGET_SECONDS):  # a job deleted
                self.verdict_waits.pop(key, None)
        self.verdict_waits[(job.uid, state.attempt)] = now + timedelta(seconds=VERDICT_WAIT_SECONDS)
        return Result(status.phase, retry_after=VERDICT_WAIT_SECONDS)

    def _first_status(self, body, job, spec, status, state: RecoveryState, decision: Decision,
                      outcome: PodState, sightings: list, by_name: dict) -> Result:
        """The attempt's first status write, which marks it started (a pod missing from
        then on is a lost pod). It carries what the pods show, the scheduler's verdict
        (a node, or Unschedulable and why) included: written as soon as the pods were
        created it would say only "created", and the verdict a moment later would need a
        second write. When no verdict comes within VERDICT_WAIT_SECONDS of the pods'
        creation (or this process did not create them: written at once), it says
        PodsCreated. The Event is PodsCreated either way."""
        key = (job.uid, state.attempt)
        created = f"attempt {state.attempt} created on {state.capacity_type} capacity"
        if decision.reason == "Scheduling":  # no verdict yet
            deadline = self.verdict_waits.get(key)
            if deadline is not None and deadline > self.now():
                return Result(status.phase,
                              retry_after=max(0.2, (deadline - self.now()).total_seconds()))
            new = job_status.base(body, status, "Scheduling", "PodsCreated", created, state,
                                  self.now())
            message = created
        else:
            new = self._next_status(body, spec, status, decision, outcome, sightings, by_name)
            message = f"{created}; {new.message}"
        result = self._commit(body, status, new, None, reason="PodsCreated", message=message)
        if result.wrote_status:
            self.verdict_waits.pop(key, None)
        return result

    def _create(self, body, job: JobMeta, status, children: list[dict], subset=None,
                current=(), likely_exist: bool = False) -> Result | None:
        """Create the attempt's children (`subset` of them); None once all are there. A
        refusal removes them again, is reported (status, a FailedCreate Event) and tried
        again after a backoff, at once after a spec edit (`attempt_start`, `refusals`)."""
        held = self.starter.start(job.uid, body["metadata"].get("generation"), children,
                                  subset, list(current), likely_exist, self.now())
        if held is None or held.refused is None:
            return held and Result(status.phase, retry_after=held.retry_after)
        log.warning("%s/%s: %s; next try in %.0fs", job.namespace, job.name,
                    held.refused.message, held.retry_after)
        new = refusals.refused_status(body, status, held.refused, self.now())
        result = self._commit(body, status, new, None, reason=refusals.FAILED_CREATE,
                              message=held.refused.message)
        return replace(result, retry_after=held.retry_after)

    def _observe(self, view: ClusterView, wanted_pods: list[dict], current: list[dict]):
        """One PodState for the attempt: head plus workers, missing ones counted as lost;
        each existing pod with its node as seen, for the GPU-time records; and when to
        look again if a pod on a deleted Node is not yet counted as stopped.

        None when `view` is a snapshot that lacks a pod or a node: an absence in a cache
        may just be an event not yet arrived, and a lost pod or a deleted node ends the
        attempt, so the caller asks the API. A pod gone together with its node (the pod
        watch saw on which node it ran, and that node is gone too) was reclaimed with
        its machine; other missing pods were deleted by someone."""
        by_name = {p["metadata"]["name"]: p for p in current}
        nodes: dict[str, dict | None] = {}
        states, sightings = [], []
        now, held = self.now(), None

        def node_of(name: str) -> dict | None:
            if name not in nodes:
                nodes[name] = view.node(name)
            return nodes[name]

        for wanted in wanted_pods:
            pod = by_name.get(wanted["metadata"]["name"])
            if pod is None:
                if not view.authoritative:
                    return None
                last = view.memory.pod_nodes.get((wanted["metadata"]["name"], attempt_of(wanted)))
                states.append(classify_missing_pod(False if last and node_of(last) is None
                                                   else None))
                continue
            node_name = (pod.get("spec") or {}).get("nodeName")
            node, exists = None, None
            if node_name and not _finished(pod):
                node = node_of(node_name)
                if node is None and not view.authoritative:
                    return None
                exists = node is not None
            state = classify_pod(pod, node, exists, self.profile)
            if exists is False and not state.terminated:
                stopped = stopped_by(pod, view.memory.nodes_gone.get(node_name), self.wait_grace)
                if stopped is not None and stopped <= now:
                    state = replace(state, terminated=True)
                elif stopped is not None:
                    held = stopped if held is None else min(held, stopped)
            states.append(state)
            gone_at = view.memory.nodes_gone.get(node_name) if exists is False else None
            sightings.append(accounting.PodSighting(pod, node, node_gone=exists is False,
                                                    gone_at=gone_at))
        wait = (held - now).total_seconds() if held is not None else None
        return attempt_state(states[0], states[1:]), by_name, sightings, wait

    def _drain(self, body, spec, status, state, outcome: PodState, sightings: list):
        """A preempted attempt whose pods still run: they are saving a checkpoint (or, on
        a node with an interruption taint, about to be drained by the cloud's handler).
        Nothing is counted until they stopped; the next attempt must not race them. Their
        GPU time is recorded meanwhile: a pod whose node is gone stops counting now, not
        when pod GC gets round to deleting it."""
        message = f"preempted ({outcome.reason}); waiting for the pods to save a checkpoint"
        new = job_status.base(body, status, "Recovering", outcome.reason, message, state,
                              self.now())
        new = self._account(new, spec, state.attempt, sightings, self.now(), ended=False)
        return self._commit(body, status, new, None)

    def _end_attempt(self, job: JobMeta, current: list[dict], keep_head: bool) -> None:
        """Delete the ended attempt's pods; a finished head stays for `kubectl logs`."""
        head = head_pod_name(job.name)
        for pod in current:
            name = pod["metadata"]["name"]
            if keep_head and name == head:
                continue
            self.kube.delete(PODS, name, job.namespace)

    # --- status -----------------------------------------------------------------------
    def _next_status(self, body, spec, status: FineTuneJobStatus, decision: Decision,
                     outcome: PodState, sightings: list, by_name: dict) -> FineTuneJobStatus:
        now = self.now()
        new = job_status.base(body, status, decision.phase, decision.reason,
                              decision.message, decision.next, self.now())
        head = by_name.get(head_pod_name(body["metadata"]["name"]))
        if decision.phase == "Running":
            if new.start_time is None:
                new = new.model_copy(update={"start_time": now})
            polled = self.poll(head, self.config.trainer_status_port) if head else None
            if polled is not None:
                started = parse_time((head.get("status") or {}).get("startTime"))
                new = progress_mod.fold(new, polled, started)
                new = evaluation_status.fold(new, spec, polled.get("evaluation"))
        if outcome.summary:
            new = progress_mod.fold_summary(new, outcome.summary)
            new = evaluation_status.fold(new, spec, outcome.summary.get("evaluation"))
        if decision.action == "succeed":
            new = job_status.succeeded(new, outcome.summary, now)
            new = job_status.promote(body, spec, new, decision, now)
        if decision.starts_new_attempt:
            new = new.model_copy(update={
                "next_attempt_after": now + timedelta(seconds=decision.delay_seconds)})
        new = self._account(new, spec, status.attempt or 1, sightings, now,
                            ended=decision.starts_new_attempt or decision.action in
                            ("succeed", "fail"))
        if decision.action == "fail":
            new = new.model_copy(update={"completion_time": now})
        return new

    def _account(self, new: FineTuneJobStatus, spec, attempt: int, sightings, now,
                 ended: bool) -> FineTuneJobStatus:
        return job_status.account(new, spec, attempt, sightings, now, ended,
                                  self.config.price_table())

    def _refuse(self, body, status: FineTuneJobStatus, message: str) -> None:
        """An invalid spec: Failed + Stalled naming the field; nothing is created."""
        generation = body["metadata"].get("generation")
        new = status.model_copy(update={
            "phase": "Failed", "message": message, "observed_generation": generation,
            "conditions": job_conditions("Failed", INVALID_SPEC, message, generation,
                                         status.conditions, self.now()),
        })
        self._commit(body, status, new, None, reason=INVALID_SPEC)

    def _commit(self, body, old: FineTuneJobStatus, new: FineTuneJobStatus,
                decision: Decision | None, reason: str | None = None,
                message: str | None = None) -> Result:
        """One conditional status write, only when the wire form changed; then Events."""
        patch = status_patch(body.get("status") or {}, new.to_wire())
        if patch is None:
            return Result(new.phase)
        if new.attempts_usage:
            new = job_status.priced(new, self.config.price_table(), self.now())
            patch = status_patch(body.get("status") or {}, new.to_wire())
        meta = body["metadata"]
        patch["metadata"] = {"resourceVersion": meta.get("resourceVersion")}
        try:
            self.kube.patch(FINETUNEJOBS, meta["name"], meta["namespace"], patch, "status")
        except KubeError as exc:
            if exc.status == 409:
                return Result(old.phase, conflict=True, retry_after=1.0)
            raise
        self.metrics.inc("status_writes_total")
        log.info("%s/%s: %s (attempt %s, recoveries %s, error retries %s): %s",
                 meta["namespace"], meta["name"], new.phase, new.attempt, new.recoveries,
                 new.error_retries, new.message)
        self._announce(body, old, new, decision, reason, message)
        return Result(new.phase, wrote_status=True)

    def _announce(self, body, old, new, decision: Decision | None, reason: str | None,
                  message: str | None = None) -> None:
        """An Event when the phase moves or an attempt begins or ends (`message`
        replaces the status message in it)."""
        if decision is not None and decision.action in ("recover", "fallback"):
            self.metrics.inc("recoveries_total")
        if decision is not None and decision.action == "retry":
            self.metrics.inc("error_retries_total")
        moved = (decision is not None and decision.starts_new_attempt) or message is not None
        if old.phase == new.phase and not moved:
            return
        warning = new.phase in ("Failed", "NotPromoted") or reason == refusals.FAILED_CREATE \
            or (decision is not None and decision.action == "retry")
        why = reason or new.conditions[0].reason
        self.emit(body, "Warning" if warning else "Normal", why,
                  message or new.message or new.phase)


def _sooner(result: Result, seconds: float | None) -> Result:
    """`result`, asking to come back within `seconds` too."""
    if seconds is None or (result.retry_after is not None and result.retry_after <= seconds):
        return result
    return replace(result, retry_after=max(0.2, seconds))


def _is_attempt_pod(pod: dict) -> bool:
    return attempt_of(pod) > 0


def _finished(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
