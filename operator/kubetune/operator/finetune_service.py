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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus, SpecError, parse_spec
from kubetune.api.finetunejob_status import AdapterRef

from . import evaluation_status
from . import progress as progress_mod
from .builders import JobMeta, build_children, needs_ray_auth
from .conditions import job_conditions, status_patch
from .config import OperatorConfig
from .kube import FINETUNEJOBS, NODES, PODS, Kind, Kube, KubeError
from .metrics import METRICS, Metrics
from .naming import LABEL_ATTEMPT, head_pod_name, selector_labels
from .pod_state import PodState, attempt_state, classify_missing_pod, classify_pod, parse_time
from .recovery import Decision, RecoveryState, add_gpu_seconds, decide, pod_gpu_interval

log = logging.getLogger("kubetune.operator")
TERMINAL = ("Succeeded", "NotPromoted", "Failed")
INVALID_SPEC = "InvalidSpec"
RAY_AUTH_TOKEN_BYTES = 32
# Create-only (RBAC grants nothing else): never through Kube.ensure, which reads on a 409.
SECRETS = Kind("", "v1", "secrets")
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


def read_status(body: dict) -> FineTuneJobStatus:
    """The stored status; an unreadable one (hand-edited) counts as empty."""
    try:
        return FineTuneJobStatus.model_validate(body.get("status") or {})
    except ValueError:
        return FineTuneJobStatus()


class FineTuneService:
    """All decisions about FineTuneJobs; I/O only through `kube`, `emit` and `poll`."""

    def __init__(self, kube: Kube, config: OperatorConfig, emit: Emit,
                 now: Callable[[], datetime] = utcnow, poll=progress_mod.fetch,
                 metrics: Metrics = METRICS):
        self.kube, self.config, self.emit, self.now = kube, config, emit, now
        self.poll, self.metrics = poll, metrics
        self.profile = config.spot_profile()

    # --- entry point ------------------------------------------------------------------
    def reconcile(self, body: dict, sync_children: bool = False) -> Result:
        """`sync_children`: also bring the ConfigMap and Service in line with the spec
        (on create/resume/update; the timer only watches pods)."""
        self.metrics.inc("reconciles_total")
        meta = body["metadata"]
        status = read_status(body)
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
        return self._reconcile(body, job, spec, status, children, sync_children)

    def _reconcile(self, body, job: JobMeta, spec: FineTuneJobSpec,
                   status: FineTuneJobStatus, children: list[dict], sync: bool) -> Result:
        state = (RecoveryState.from_status(spec, status, status.attempt) if status.attempt
                 else RecoveryState.initial(spec))
        pods = self.kube.list(PODS, job.namespace, selector_labels(job.name))
        current = [p for p in pods if attempt_of(p) == state.attempt]
        stale = [p for p in pods if attempt_of(p) != state.attempt and _is_attempt_pod(p)]
        for pod in stale:
            if not pod["metadata"].get("deletionTimestamp"):
                self.kube.delete(PODS, pod["metadata"]["name"], job.namespace)
        wanted_pods = [c for c in children if c["kind"] == "Pod"]
        # An attempt counts as started once the status write after creating its pods
        # cleared nextAttemptAfter; from then on a missing pod is a lost pod.
        started = status.attempt is not None and status.next_attempt_after is None
        if not current and not started:
            return self._start_attempt(body, job, status, state, children, blocked=bool(stale))
        if sync:  # the token Secret matters only when pods are created: skip it here
            self._ensure(job, [c for c in children if c["kind"] not in ("Pod", "Secret")],
                         likely_exist=True)
        outcome, by_name = self._observe(wanted_pods, current)
        if outcome.kind == "Preempted" and not outcome.terminated:
            return self._drain(body, job, status, state, outcome, current)
        decision = decide(spec, state, outcome, self.now())
        new = self._next_status(body, spec, status, decision, outcome, current, by_name)
        result = self._commit(body, status, new, decision)
        if result.wrote_status and (decision.starts_new_attempt or decision.action in
                                    ("succeed", "fail")):
            self._end_attempt(job, current, keep_head=not decision.starts_new_attempt)
        return result

    # --- steps ------------------------------------------------------------------------
    def _start_attempt(self, body, job, status, state: RecoveryState, children, blocked: bool):
        """Create the attempt's children once the old pods are gone and backoff is over."""
        now = self.now()
        wait = (status.next_attempt_after - now).total_seconds() \
            if status.next_attempt_after else 0.0
        if blocked or wait > 0:
            return Result(status.phase, retry_after=max(1.0, wait))
        self._ensure(job, children)
        message = f"attempt {state.attempt} created on {state.capacity_type} capacity"
        new = self._base_status(body, status, "Scheduling", "PodsCreated", message, state)
        return self._commit(body, status, new, None)

    def _ensure(self, job: JobMeta, children: list[dict], likely_exist: bool = False) -> None:
        """Create each child, or patch what drifted on an existing one. A Secret is only
        created (409 = it exists, keep it): the operator never reads or changes one."""
        for child in children:
            if child["kind"] == "Secret":
                self.kube.create(SECRETS, child)
            else:
                self.kube.ensure(child, likely_exists=likely_exist)

    def _observe(self, wanted_pods: list[dict], current: list[dict]):
        """One PodState for the attempt: head plus workers, missing ones counted as lost."""
        by_name = {p["metadata"]["name"]: p for p in current}
        nodes: dict[str, dict | None] = {}
        states = []
        for wanted in wanted_pods:
            pod = by_name.get(wanted["metadata"]["name"])
            if pod is None:
                states.append(classify_missing_pod(None))
                continue
            node_name = (pod.get("spec") or {}).get("nodeName")
            node, exists = None, None
            if node_name and not _finished(pod):
                if node_name not in nodes:
                    nodes[node_name] = self.kube.get(NODES, node_name)
                node = nodes[node_name]
                exists = node is not None
            states.append(classify_pod(pod, node, exists, self.profile))
        return attempt_state(states[0], states[1:]), by_name

    def _drain(self, body, job, status, state, outcome: PodState, current: list[dict]):
        """A preempted attempt whose pods still run: they are saving a checkpoint (or, on
        a node with an interruption taint, about to be drained by the cloud's handler).
        Nothing is counted until they stopped; the next attempt must not race them."""
        message = f"preempted ({outcome.reason}); waiting for the pods to save a checkpoint"
        new = self._base_status(body, status, "Recovering", outcome.reason, message, state)
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
    def _base_status(self, body, status: FineTuneJobStatus, phase: str, reason: str,
                     message: str, state: RecoveryState) -> FineTuneJobStatus:
        generation = body["metadata"].get("generation")
        return status.model_copy(update={
            "phase": phase, "message": message, "observed_generation": generation,
            "conditions": job_conditions(phase, reason, message, generation,
                                         status.conditions, self.now()),
            "attempt": state.attempt, "capacity_type": state.capacity_type,
            "recoveries": state.recoveries, "error_retries": state.error_retries,
            "next_attempt_after": None,
        })

    def _next_status(self, body, spec, status: FineTuneJobStatus, decision: Decision,
                     outcome: PodState, current: list[dict], by_name: dict) -> FineTuneJobStatus:
        now = self.now()
        new = self._base_status(body, status, decision.phase, decision.reason,
                                decision.message, decision.next)
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
            new = self._succeeded(new, outcome.summary, now)
            new = self._promote(body, spec, new, decision)
        if decision.starts_new_attempt:
            new = new.model_copy(update={
                "next_attempt_after": now + timedelta(seconds=decision.delay_seconds)})
        if decision.starts_new_attempt or decision.action in ("succeed", "fail"):
            intervals = [i for i in (pod_gpu_interval(p, spec.resources.gpu_resource_name)
                                     for p in current) if i is not None]
            new = new.model_copy(update={
                "gpu_seconds": add_gpu_seconds(status.gpu_seconds, intervals, now)})
        if decision.action == "fail":
            new = new.model_copy(update={"completion_time": now})
        return new

    def _succeeded(self, new: FineTuneJobStatus, summary: dict, now) -> FineTuneJobStatus:
        adapter = summary.get("adapter") if isinstance(summary, dict) else None
        update: dict = {"completion_time": now}
        if isinstance(adapter, dict) and adapter.get("uri") and adapter.get("sha256"):
            update["adapter"] = AdapterRef(uri=adapter["uri"], sha256=adapter["sha256"],
                                           size_bytes=adapter.get("sizeBytes"))
        steps = summary.get("steps") if isinstance(summary, dict) else None
        if isinstance(steps, int) and steps > 0:
            done = progress_mod.to_progress({
                "step": steps, "totalSteps": steps, "phase": "Succeeded",
                "loss": summary.get("trainLoss"), "evalLoss": summary.get("evalLoss")})
            update["progress"] = done.model_copy(update={"updated_at": now})
        return new.model_copy(update=update)

    def _promote(self, body, spec, new: FineTuneJobStatus, decision: Decision
                 ) -> FineTuneJobStatus:
        """Judge the gate on the final evaluation. A miss keeps the written adapter in
        status (for inspection, or a ModelServe that allows unpromoted adapters) but
        ends the job NotPromoted, with the reason in every condition."""
        gate = evaluation_status.verdict(spec, new)
        if gate is None:
            return new
        new = evaluation_status.with_verdict(new, gate)
        adapter_uri = new.adapter.uri if new.adapter else None
        if gate.passed:
            return self._base_status(body, new, "Succeeded", decision.reason,
                                     f"{decision.message} and promoted: {gate.message}",
                                     decision.next)
        return self._base_status(body, new, "NotPromoted", evaluation_status.NOT_PROMOTED_REASON,
                                 evaluation_status.not_promoted_message(adapter_uri, gate),
                                 decision.next)

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
                decision: Decision | None, reason: str | None = None) -> Result:
        """One conditional status write, only when the wire form changed; then Events."""
        patch = status_patch(body.get("status") or {}, new.to_wire())
        if patch is None:
            return Result(new.phase)
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
        self._announce(body, old, new, decision, reason)
        return Result(new.phase, wrote_status=True)

    def _announce(self, body, old, new, decision: Decision | None, reason: str | None) -> None:
        if decision is not None and decision.action in ("recover", "fallback"):
            self.metrics.inc("recoveries_total")
        if decision is not None and decision.action == "retry":
            self.metrics.inc("error_retries_total")
        moved = decision is not None and decision.starts_new_attempt
        if old.phase == new.phase and not moved:
            return
        warning = new.phase in ("Failed", "NotPromoted") or (
            decision is not None and decision.action == "retry")
        why = reason or new.conditions[0].reason
        self.emit(body, "Warning" if warning else "Normal", why, new.message or new.phase)


def _is_attempt_pod(pod: dict) -> bool:
    return attempt_of(pod) > 0


def _finished(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
