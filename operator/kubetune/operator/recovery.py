"""What to do next with a FineTuneJob, given how its current attempt is doing.

Pure decisions in the spirit of SkyPilot's recovery strategies: a preemption consumes the
recovery budget (spec.spot.maxRecoveries) and a user-code failure the error budget
(spec.retries.maxErrorRetries) — never the other way round — and named strategies choose
the capacity type of the next attempt. Each decision carries the full next `RecoveryState`
so the caller commits it with one status write; pods carry their attempt number, so a
reconcile that runs again after that write finds the old attempt's pods and only cleans
them up, instead of counting the same preemption twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from kubetune.api import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.finetunejob import BackoffSpec, SpotPolicy
from kubetune.api.finetunejob_status import FineTunePhase

from .config import CapacityType
from .pod_state import PodState

Action = Literal["wait", "succeed", "recover", "retry", "fallback", "fail"]
# Pending reasons that mean "no node has room", as opposed to e.g. an image pull error
# that on-demand capacity would not fix.
CAPACITY_PENDING_REASONS = {"Unschedulable", "Scheduling"}


@dataclass(frozen=True)
class RecoveryState:
    """The counters a decision reads and writes (all kept in the job's status)."""

    attempt: int
    capacity_type: CapacityType
    recoveries: int = 0
    error_retries: int = 0

    @classmethod
    def initial(cls, spec: FineTuneJobSpec) -> RecoveryState:
        return cls(attempt=1, capacity_type="spot" if spec.spot.enabled else "on-demand")

    @classmethod
    def from_status(
        cls, spec: FineTuneJobSpec, status: FineTuneJobStatus, attempt: int | None = None
    ) -> RecoveryState:
        """From the status; without a stored attempt number it is 1 + recoveries + retries
        (which undercounts only attempts started by a pending-too-long fallback)."""
        initial = cls.initial(spec)
        return cls(
            attempt=attempt or 1 + status.recoveries + status.error_retries,
            capacity_type=status.capacity_type or initial.capacity_type,
            recoveries=status.recoveries,
            error_retries=status.error_retries,
        )


@dataclass(frozen=True)
class Decision:
    """The next step. For recover/retry/fallback: delete the current attempt's pods, then
    after `delay_seconds` create attempt `next.attempt` on `next.capacity_type`."""

    action: Action
    phase: FineTunePhase
    reason: str
    message: str
    next: RecoveryState
    delay_seconds: int = 0

    @property
    def starts_new_attempt(self) -> bool:
        return self.action in ("recover", "retry", "fallback")


def backoff_delay(policy: BackoffSpec, n: int) -> int:
    """Delay before the n-th attempt of a kind (n >= 1): initial * 2^(n-1), capped."""
    if n < 1:
        raise ValueError(f"backoff count starts at 1, got {n}")
    return min(policy.max_seconds, policy.initial_seconds * 2 ** min(n - 1, 32))


class StayOnSpot:
    """Always come back on spot: cheapest, for jobs that can wait for capacity."""

    name = "StayOnSpot"

    def after_preemption(
        self, spot: SpotPolicy, current: CapacityType, recoveries: int
    ) -> CapacityType:
        return current

    def while_pending(
        self, spot: SpotPolicy, current: CapacityType, pending_seconds: float
    ) -> CapacityType:
        return current


class FallbackToOnDemand:
    """Move to on-demand after N preemptions, or when spot pods wait too long for a node."""

    name = "FallbackToOnDemand"

    def after_preemption(
        self, spot: SpotPolicy, current: CapacityType, recoveries: int
    ) -> CapacityType:
        if current == "spot" and recoveries >= spot.fallback_after_preemptions:
            return "on-demand"
        return current

    def while_pending(
        self, spot: SpotPolicy, current: CapacityType, pending_seconds: float
    ) -> CapacityType:
        if current == "spot" and pending_seconds >= spot.fallback_after_pending_seconds:
            return "on-demand"
        return current


STRATEGIES = {strategy.name: strategy for strategy in (StayOnSpot(), FallbackToOnDemand())}


def decide(
    spec: FineTuneJobSpec, state: RecoveryState, outcome: PodState, now: datetime
) -> Decision:
    """The next step for the job whose current attempt is in `outcome`."""
    if outcome.kind == "Succeeded":
        return Decision(
            "succeed", "Succeeded", "TrainingSucceeded", "the adapter is written", state
        )
    if outcome.kind == "Running":
        return Decision("wait", "Running", "Training", "training is running", state)
    if outcome.kind == "Pending":
        return _pending(spec, state, outcome, now)
    if outcome.kind in ("Preempted", "Lost"):
        return _preempted(spec, state, outcome)
    return _failed(spec, state, outcome)


def _pending(
    spec: FineTuneJobSpec, state: RecoveryState, outcome: PodState, now: datetime
) -> Decision:
    waited = (now - outcome.pending_since).total_seconds() if outcome.pending_since else 0.0
    # No elapsed time in the message: it would change the status on every reconcile.
    # How long the job has waited shows in the conditions' lastTransitionTime.
    detail = f"pods pending ({outcome.reason})"
    if outcome.message:
        detail += f": {outcome.message}"
    strategy = STRATEGIES[spec.spot.strategy]
    if outcome.reason in CAPACITY_PENDING_REASONS:
        capacity = strategy.while_pending(spec.spot, state.capacity_type, waited)
        if capacity != state.capacity_type:
            return Decision(
                "fallback",
                "Recovering",
                "FallbackToOnDemand",
                f"no spot capacity after {int(waited)}s "
                "(spec.spot.fallbackAfterPendingSeconds="
                f"{spec.spot.fallback_after_pending_seconds}); "
                "moving to on-demand",
                replace(state, attempt=state.attempt + 1, capacity_type=capacity),
            )
    return Decision("wait", "Scheduling", outcome.reason, detail, state)


def _preempted(spec: FineTuneJobSpec, state: RecoveryState, outcome: PodState) -> Decision:
    cause = f"{outcome.reason}: {outcome.message}" if outcome.message else outcome.reason
    if state.recoveries >= spec.spot.max_recoveries:
        return Decision(
            "fail",
            "Failed",
            "RecoveryBudgetExhausted",
            f"preempted again ({cause}) after {state.recoveries} recoveries; recovery budget "
            f"spec.spot.maxRecoveries={spec.spot.max_recoveries} is exhausted",
            state,
        )
    recoveries = state.recoveries + 1
    capacity = STRATEGIES[spec.spot.strategy].after_preemption(
        spec.spot, state.capacity_type, recoveries
    )
    fell_back = capacity != state.capacity_type
    message = f"recovery {recoveries}/{spec.spot.max_recoveries} after {cause}"
    if fell_back:
        message += (
            f"; moving to on-demand after {recoveries} preemptions "
            f"(spec.spot.fallbackAfterPreemptions={spec.spot.fallback_after_preemptions})"
        )
    return Decision(
        "fallback" if fell_back else "recover",
        "Recovering",
        "FallbackToOnDemand" if fell_back else "Preempted",
        message,
        replace(state, attempt=state.attempt + 1, capacity_type=capacity, recoveries=recoveries),
        backoff_delay(spec.spot.backoff, recoveries),
    )


def _failed(spec: FineTuneJobSpec, state: RecoveryState, outcome: PodState) -> Decision:
    cause = f"{outcome.reason}: {outcome.message}" if outcome.message else outcome.reason
    if state.error_retries >= spec.retries.max_error_retries:
        return Decision(
            "fail",
            "Failed",
            "ErrorBudgetExhausted",
            f"trainer failed ({cause}) after {state.error_retries} error retries; "
            "error budget spec.retries.maxErrorRetries="
            f"{spec.retries.max_error_retries} is exhausted",
            state,
        )
    retries = state.error_retries + 1
    return Decision(
        "retry",
        "Recovering",
        "RetryingAfterError",
        f"error retry {retries}/{spec.retries.max_error_retries} after {cause}",
        replace(state, attempt=state.attempt + 1, error_retries=retries),
        backoff_delay(spec.retries.backoff, retries),
    )


def lost_steps(steps_done: int | None, checkpoint_step: int | None) -> int:
    """Optimizer steps the next attempt must redo: done minus the last checkpoint's step."""
    if not steps_done:
        return 0
    return max(0, steps_done - (checkpoint_step or 0))
