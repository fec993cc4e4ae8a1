"""How a FineTuneJob's next status is built from a decision: pure, no I/O.

Split from `finetune_service` (which observes, decides and writes) so that the shape of
a status write can be read and tested on its own: the phase and conditions every write
carries, the GPU-time records and their prices, what success and the promotion gate add.
"""

from __future__ import annotations

from datetime import datetime

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob_status import AdapterRef
from kubetune.api.usage import UsageTotals

from . import accounting, evaluation_status
from . import progress as progress_mod
from .conditions import job_conditions
from .config import PricingConfig
from .recovery import Decision, RecoveryState


def read(body: dict) -> FineTuneJobStatus:
    """The stored status; an unreadable one (hand-edited) counts as empty."""
    try:
        return FineTuneJobStatus.model_validate(body.get("status") or {})
    except ValueError:
        return FineTuneJobStatus()


def nothing_new(status: FineTuneJobStatus, decision: Decision) -> bool:
    """Pods just created that the scheduler has not looked at yet: "pods pending
    (Scheduling)" tells nothing the attempt's PodsCreated status does not, and watching
    pods sees this state on every attempt, a moment before the scheduler's verdict (a
    node, or Unschedulable and why), which is written when it comes."""
    return (decision.action == "wait" and decision.reason == "Scheduling"
            and status.phase == "Scheduling" and bool(status.conditions)
            and status.conditions[0].reason == "PodsCreated")


def base(body: dict, status: FineTuneJobStatus, phase: str, reason: str, message: str,
         state: RecoveryState, now: datetime) -> FineTuneJobStatus:
    """Phase, message, conditions and the attempt's counters: what every write says. It
    clears nextAttemptAfter, which marks the attempt as started."""
    generation = body["metadata"].get("generation")
    return status.model_copy(update={
        "phase": phase, "message": message, "observed_generation": generation,
        "conditions": job_conditions(phase, reason, message, generation,
                                     status.conditions, now),
        "attempt": state.attempt, "capacity_type": state.capacity_type,
        "recoveries": state.recoveries, "error_retries": state.error_retries,
        "next_attempt_after": None,
    })


def account(new: FineTuneJobStatus, spec: FineTuneJobSpec, attempt: int, sightings,
            now: datetime, ended: bool, table: PricingConfig | None) -> FineTuneJobStatus:
    """Open and close the attempt's GPU-time records; when the attempt ends, close
    what still runs (its pods are deleted after this write) and total it all up."""
    if not new.attempts_usage and new.older_attempts_usage is None and new.gpu_seconds:
        # Totals written before per-attempt records existed: keep them as the past.
        new = new.model_copy(update={
            "older_attempts_usage": UsageTotals(gpu_seconds=new.gpu_seconds)})
    usage = accounting.observe(new.attempts_usage, attempt, sightings,
                               spec.resources.gpu_resource_name, now)
    if ended:
        usage = accounting.close_attempt(usage, attempt, now)
    new = new.model_copy(update={"attempts_usage": usage})
    return priced(new, table, now) if ended else new


def priced(new: FineTuneJobStatus, table: PricingConfig | None,
           now: datetime) -> FineTuneJobStatus:
    """Totals by capacity type and cost, running pods counted up to `now`. Done when
    an attempt ends and whenever the status is written anyway, so that an idle job's
    running GPU time never causes a write of its own."""
    usage, older = accounting.trim(new.attempts_usage, new.older_attempts_usage, table, now)
    usage, gpu, cost = accounting.priced(usage, older, table, now)
    return new.model_copy(update={"attempts_usage": usage, "older_attempts_usage": older,
                                  "gpu_seconds": gpu, "cost": cost})


def succeeded(new: FineTuneJobStatus, summary: dict, now: datetime) -> FineTuneJobStatus:
    """The adapter the trainer reported and the final progress."""
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


def promote(body: dict, spec: FineTuneJobSpec, new: FineTuneJobStatus, decision: Decision,
            now: datetime) -> FineTuneJobStatus:
    """Judge the gate on the final evaluation. A miss keeps the written adapter in
    status (for inspection, or a ModelServe that allows unpromoted adapters) but
    ends the job NotPromoted, with the reason in every condition."""
    gate = evaluation_status.verdict(spec, new)
    if gate is None:
        return new
    new = evaluation_status.with_verdict(new, gate)
    adapter_uri = new.adapter.uri if new.adapter else None
    if gate.passed:
        return base(body, new, "Succeeded", decision.reason,
                    f"{decision.message} and promoted: {gate.message}", decision.next, now)
    return base(body, new, "NotPromoted", evaluation_status.NOT_PROMOTED_REASON,
                evaluation_status.not_promoted_message(adapter_uri, gate), decision.next, now)
