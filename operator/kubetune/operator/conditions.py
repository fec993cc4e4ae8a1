"""kstatus-style conditions from a job's phase, and status patches only on change.

kstatus (what Flux, `kubectl wait` and Argo CD-style health read) says: while
`Reconciling` is True the object is in progress; `Stalled` True means it has failed and
will not progress by itself; otherwise it is Current. Ready follows Flux's convention.
Jobs add Succeeded / Failed, so `kubectl wait --for=condition=Succeeded` ends on success
and `--for=condition=Failed` on failure, and Promoted: True once the adapter passed the
job's evaluation gate (or the job has none). An adapter that missed the gate is written but
not promoted: phase NotPromoted, which reads as a failure (Stalled, Failed; Ready False)
because the job did not deliver a servable adapter and retrying would measure the same
adapter again; Promoted is Unknown until then. Every condition is always present, each
carries observedGeneration, and lastTransitionTime moves only when the
condition's status flips — so an unchanged job yields a byte-equal status and no write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from kubetune.api import Condition
from kubetune.api.finetunejob_status import FineTunePhase

ConditionStatus = Literal["True", "False", "Unknown"]
JOB_CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Succeeded", "Failed", "Promoted")

IN_PROGRESS_PHASES = {"Pending", "Scheduling", "Running", "Recovering"}


def job_condition_statuses(phase: FineTunePhase) -> dict[str, ConditionStatus]:
    """The status of each condition type in a phase."""
    if phase == "Succeeded":
        return {
            "Ready": "True",
            "Reconciling": "False",
            "Stalled": "False",
            "Succeeded": "True",
            "Failed": "False",
            "Promoted": "True",
        }
    if phase in ("Failed", "NotPromoted"):
        return {
            "Ready": "False",
            "Reconciling": "False",
            "Stalled": "True",
            "Succeeded": "False",
            "Failed": "True",
            "Promoted": "False",
        }
    if phase in IN_PROGRESS_PHASES:
        return {
            "Ready": "False",
            "Reconciling": "True",
            "Stalled": "False",
            "Succeeded": "False",
            "Failed": "False",
            "Promoted": "Unknown",
        }
    raise ValueError(f"status.phase: unknown FineTuneJob phase {phase!r}")


def _find(conditions: list[Condition], kind: str) -> Condition | None:
    return next((condition for condition in conditions if condition.type == kind), None)


def job_conditions(
    phase: FineTunePhase,
    reason: str,
    message: str,
    generation: int | None,
    previous: list[Condition] | None,
    now: datetime,
    stalled: bool = False,
) -> list[Condition]:
    """All six conditions for `phase`, each carrying the phase's reason and message, so
    whichever condition a tool reads explains the job's state. `stalled`: an in-progress
    phase that cannot go on until someone acts (a child the API server refuses for
    good): Stalled True and Reconciling False, which kstatus reads as failed, while the
    phase still says how far the job got."""
    statuses = job_condition_statuses(phase)
    if stalled:
        statuses = {**statuses, "Reconciling": "False", "Stalled": "True"}
    result = []
    for kind in JOB_CONDITION_TYPES:
        status = statuses[kind]
        old = _find(previous or [], kind)
        since = old.last_transition_time if old is not None and old.status == status else now
        result.append(
            Condition(
                type=kind,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return result


def _diff(old: dict, new: dict) -> dict:
    """A JSON merge patch (RFC 7386) turning `old` into `new`; lists are replaced whole."""
    patch = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = _diff(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch


def status_patch(old_status: dict | None, new_status: dict) -> dict | None:
    """`{"status": <merge patch>}` to apply with PATCH .../status, or None when the wire
    form of the status did not change (then nothing is written at all)."""
    patch = _diff(old_status or {}, new_status)
    return {"status": patch} if patch else None
