"""Evaluation results into status, and the promotion decision at the end of a job.

The trainer reports `{"baseline", "latest", "final"}` (each the scores of one evaluation)
in its progress JSON and its exit summary. The operator keeps whatever it has seen: a
baseline measured by an earlier attempt stays when a resumed attempt does not measure it
again. The gate is judged here, from the spec the operator owns, with the same rule the
trainer wrote into the adapter's manifest (`kubetune.api.evaluation.judge`).
"""

from __future__ import annotations

from kubetune.api.evaluation import (
    EvaluationStatus,
    GateVerdict,
    display,
    judge,
    scores_of,
)
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.finetunejob_status import FineTuneJobStatus

NOT_PROMOTED_REASON = "GateNotMet"


def fold(status: FineTuneJobStatus, spec: FineTuneJobSpec, reported) -> FineTuneJobStatus:
    """`status` with the trainer's reported evaluation merged in (a new copy)."""
    if not isinstance(reported, dict):
        return status
    current = status.evaluation or EvaluationStatus()
    update = {}
    for key in ("baseline", "latest", "final"):
        scores = scores_of(reported.get(key))
        if scores is not None:
            update[key] = scores
    if not update:
        return status
    merged = current.model_copy(update=update)
    merged = merged.model_copy(update={"display": display(spec.evaluation, merged)})
    return status.model_copy(update={"evaluation": merged})


def verdict(spec: FineTuneJobSpec, status: FineTuneJobStatus) -> GateVerdict | None:
    """The gate's verdict on the final evaluation; None when the job has no gate."""
    if spec.evaluation is None or spec.evaluation.gate is None:
        return None
    evaluation = status.evaluation or EvaluationStatus()
    return judge(spec.evaluation.gate, evaluation.baseline, evaluation.final)


def with_verdict(status: FineTuneJobStatus, gate: GateVerdict) -> FineTuneJobStatus:
    evaluation = (status.evaluation or EvaluationStatus()).model_copy(update={"gate": gate})
    return status.model_copy(update={"evaluation": evaluation})


def not_promoted_message(adapter_uri: str | None, gate: GateVerdict) -> str:
    where = f"the adapter is written to {adapter_uri}" if adapter_uri else "the adapter is written"
    return f"{where} but not promoted: {gate.message}"
