"""The ModelServe's status from what was observed: pure, so every rule is table-tested.

Inputs are the adapter resolutions, the Deployment (its status is what the Deployment
controller reports) and one report per server pod (its GET /v1/adapters answer). An
adapter counts as loaded on a replica only when that replica reports the same URI (and
manifest sha256, when both are known) as Loaded: a pod that has not yet seen the new
ConfigMap still reports the old adapter and must not make the new one look loaded.

Phases and kstatus conditions:
  Progressing  rollout or adapter loads under way   Reconciling=True
  Ready        all replicas ready, every resolved adapter Loaded everywhere   Ready=True
  Degraded     settled, but an adapter Failed (bad adapter, failed job), or the
               Deployment's pods are refused for good (ReplicaFailure)   Stalled=True
  Failed       the spec is invalid (nothing is created), or the API server refuses a
               child for good (ChildRefused, naming the field: a new serve keeps no
               child, a running one serves on as it was)   Stalled=True
  Pending      a child waits for a ResourceQuota (QuotaExceeded)   Reconciling=True
Adapters waiting for a FineTuneJob stay Pending without holding Ready back: the serve
serves everything it can, and picks the adapter up when the job succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from kubetune.api import Condition, ModelServeStatus
from kubetune.api.modelserve import AdapterStatus

from .refusals import replica_failure
from .resolve import Resolution

SERVE_CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")
PHASE_CONDITIONS = {
    "Ready": {"Ready": "True", "Reconciling": "False", "Stalled": "False"},
    "Progressing": {"Ready": "False", "Reconciling": "True", "Stalled": "False"},
    "Pending": {"Ready": "False", "Reconciling": "True", "Stalled": "False"},
    "Degraded": {"Ready": "False", "Reconciling": "False", "Stalled": "True"},
    "Failed": {"Ready": "False", "Reconciling": "False", "Stalled": "True"},
}
MAX_MESSAGE = 512


@dataclass(frozen=True)
class PodReport:
    """One server pod: whether Kubernetes counts it ready, and its /v1/adapters answer
    (`adapters` is None when the pod could not be asked)."""

    name: str
    ready: bool
    adapters: dict[str, dict] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Observed:
    generation: int | None
    desired_replicas: int
    deployment: Mapping | None
    pods: list[PodReport] = field(default_factory=list)


def conditions_for(
    phase: str, reason: str, message: str, generation: int | None,
    previous: list[Condition], now: datetime,
) -> list[Condition]:
    """The three conditions; lastTransitionTime moves only when a status flips, so an
    unchanged serve yields a byte-equal status and no write."""
    result = []
    for kind in SERVE_CONDITION_TYPES:
        status = PHASE_CONDITIONS[phase][kind]
        old = next((c for c in previous if c.type == kind), None)
        since = old.last_transition_time if old is not None and old.status == status else now
        result.append(Condition(
            type=kind, status=status, reason=reason, message=message,
            last_transition_time=since, observed_generation=generation,
        ))
    return result


def _matches(view: Mapping, resolution: Resolution) -> bool:
    if (view.get("uri") or "").rstrip("/") != (resolution.uri or "").rstrip("/"):
        return False
    return not (resolution.sha256 and view.get("sha256") and view["sha256"] != resolution.sha256)


def adapter_statuses(resolutions: list[Resolution], pods: list[PodReport]) -> list[AdapterStatus]:
    reporting = [pod for pod in pods if pod.ready and pod.adapters is not None]
    result = []
    for res in resolutions:
        if not res.resolved:
            result.append(AdapterStatus(name=res.name, state=res.state, message=res.message))
            continue
        loaded, failures = 0, []
        for pod in reporting:
            view = pod.adapters.get(res.name)
            if view is None or not _matches(view, res):
                continue
            if view.get("state") == "Loaded":
                loaded += 1
            elif view.get("state") == "Failed":
                failures.append(f"{pod.name}: {view.get('message') or 'failed'}")
        if failures:
            state, message = "Failed", "; ".join(failures)[:MAX_MESSAGE]
        elif reporting and loaded == len(reporting):
            state, message = "Loaded", None
        elif reporting:
            state, message = "Loading", f"loaded on {loaded}/{len(reporting)} ready replicas"
        else:
            state, message = "Loading", "no ready replica has reported yet"
        result.append(AdapterStatus(
            name=res.name, state=state, message=message, uri=res.uri, sha256=res.sha256,
            replicas_loaded=loaded,
        ))
    return result


def rollout(observed: Observed) -> tuple[int, int, str | None]:
    """(replicas, readyReplicas, why the rollout is not complete or None)."""
    deployment = observed.deployment
    if deployment is None:
        return 0, 0, "Deployment not created yet"
    status = deployment.get("status") or {}
    replicas = int(status.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    want = observed.desired_replicas
    generation = (deployment.get("metadata") or {}).get("generation")
    if generation is not None and int(status.get("observedGeneration") or 0) < int(generation):
        return replicas, ready, "Deployment change not yet observed by its controller"
    if updated < want:
        return replicas, ready, f"rolling out: {updated}/{want} replicas updated"
    if replicas > want:
        # The Deployment controller counts no terminating pod in status.replicas: the
        # surplus is old replicas kept serving (maxUnavailable 0) until the updated
        # ones are ready.
        return replicas, ready, (
            f"rolling out: {replicas - want} old replicas serving until the updated ones "
            "are ready")
    if ready < want:
        return replicas, ready, f"{ready}/{want} replicas ready"
    return replicas, ready, None


def previous_status(previous: Mapping | None) -> ModelServeStatus:
    """The stored status, or only its conditions when the rest no longer validates (an
    older operator's shape): a bad old status must not block writing a good new one."""
    try:
        return ModelServeStatus.model_validate(previous or {})
    except ValidationError:
        conditions = []
        for item in (previous or {}).get("conditions") or []:
            try:
                conditions.append(Condition.model_validate(item))
            except ValidationError:
                continue
        return ModelServeStatus(conditions=conditions)


def compute_status(
    resolutions: list[Resolution], observed: Observed, endpoint: str,
    previous: Mapping | None, now: datetime,
) -> dict:
    """The status to write, in wire form."""
    old = previous_status(previous)
    replicas, ready, not_done = rollout(observed)
    adapters = adapter_statuses(resolutions, observed.pods)
    resolved = [a for a in adapters if a.uri is not None]
    loading = [a.name for a in resolved if a.state == "Loading"]
    failed = [a for a in adapters if a.state == "Failed"]
    pending = [a for a in adapters if a.state == "Pending"]
    refused = replica_failure(observed.deployment) if not_done is not None else None
    if refused is not None:  # the ReplicaSet cannot create pods: not a rollout under way
        phase, reason, message = refused
    elif not_done is not None:
        phase, reason, message = "Progressing", "RollingOut", not_done
    elif observed.desired_replicas > 0 and loading:
        phase, reason = "Progressing", "AdaptersLoading"
        message = f"loading adapters: {', '.join(loading)}"
    elif failed:
        phase, reason = "Degraded", "AdapterFailed"
        message = "; ".join(f"adapter {a.name}: {a.message}" for a in failed)
    else:
        phase, reason = "Ready", "Serving"
        message = f"{ready}/{observed.desired_replicas} replicas ready, " + (
            f"{len(resolved)} adapters loaded"
        )
    if pending and phase != "Progressing":
        message += "; pending: " + "; ".join(f"{a.name}: {a.message}" for a in pending)
    message = message[:MAX_MESSAGE]
    status = ModelServeStatus(
        phase=phase,
        message=message,
        conditions=conditions_for(phase, reason, message, observed.generation, old.conditions, now),
        observed_generation=observed.generation,
        replicas=replicas,
        ready_replicas=ready,
        ready_display=f"{ready}/{observed.desired_replicas}",
        endpoint=endpoint,
        adapters=adapters,
        adapters_display=f"{sum(a.state == 'Loaded' for a in adapters)}/{len(adapters)}",
    )
    return status.to_wire()


def invalid_spec_status(
    message: str, generation: int | None, previous: Mapping | None, now: datetime
) -> dict:
    """Failed + Stalled: the spec must be fixed by its author; nothing was created."""
    old = previous_status(previous)
    message = message[:MAX_MESSAGE]
    status = old.model_copy(update={
        "phase": "Failed",
        "message": message,
        "conditions": conditions_for(
            "Failed", "InvalidSpec", message, generation, old.conditions, now),
        "observed_generation": generation,
    })
    return status.to_wire()


def refused_status(
    refused_message: str, reason: str, permanent: bool, generation: int | None,
    previous: Mapping | None, now: datetime,
) -> dict:
    """A child refused before the serve could start (see `refusals`): Failed + Stalled
    naming the field when it cannot pass without a change, Pending + Reconciling with
    the quota's message while a quota is exceeded. Nothing else changes."""
    old = previous_status(previous)
    message = refused_message[:MAX_MESSAGE]
    phase = "Failed" if permanent else "Pending"
    status = old.model_copy(update={
        "phase": phase,
        "message": message,
        "conditions": conditions_for(phase, reason, message, generation, old.conditions, now),
        "observed_generation": generation,
    })
    return status.to_wire()
