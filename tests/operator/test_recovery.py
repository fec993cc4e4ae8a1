"""Recovery decisions: separate budgets, named strategies, bounded backoff, accounting."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from operator_specs import make_spec

from kubetune.api import FineTuneJobStatus
from kubetune.api.finetunejob import BackoffSpec
from kubetune.operator.pod_state import PodState
from kubetune.operator.recovery import (
    RecoveryState,
    backoff_delay,
    decide,
    lost_steps,
)

NOW = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
PREEMPTED = PodState("Preempted", "TerminationByKubelet", "node shutdown", True)
LOST = PodState("Lost", "PodDeleted", "the pod was deleted", True)
FAILED = PodState("Failed", "Error", "dataset not found", True, 1)
SPOT = {
    "enabled": True,
    "maxRecoveries": 3,
    "fallbackAfterPreemptions": 2,
    "fallbackAfterPendingSeconds": 600,
    "backoff": {"initialSeconds": 10, "maxSeconds": 25},
}


def pending(reason: str, waited_seconds: int) -> PodState:
    return PodState("Pending", reason, "", pending_since=NOW - timedelta(seconds=waited_seconds))


def state(attempt=1, capacity="spot", recoveries=0, errors=0) -> RecoveryState:
    return RecoveryState(attempt, capacity, recoveries, errors)


CASES = [
    # id, spot policy, state, outcome, action, phase, next state, delay
    (
        "success",
        SPOT,
        state(),
        PodState("Succeeded", "Completed"),
        "succeed",
        "Succeeded",
        state(),
        0,
    ),
    ("running", SPOT, state(), PodState("Running", "Running"), "wait", "Running", state(), 0),
    (
        "pending briefly",
        SPOT,
        state(),
        pending("Unschedulable", 599),
        "wait",
        "Scheduling",
        state(),
        0,
    ),
    (
        "pending too long on spot",
        SPOT,
        state(),
        pending("Unschedulable", 600),
        "fallback",
        "Recovering",
        state(2, "on-demand"),
        0,
    ),
    (
        "pending too long, not for capacity",
        SPOT,
        state(),
        pending("ImagePullBackOff", 6000),
        "wait",
        "Scheduling",
        state(),
        0,
    ),
    (
        "pending too long already on-demand",
        SPOT,
        state(capacity="on-demand"),
        pending("Unschedulable", 6000),
        "wait",
        "Scheduling",
        state(capacity="on-demand"),
        0,
    ),
    (
        "pending too long, StayOnSpot",
        {**SPOT, "strategy": "StayOnSpot"},
        state(),
        pending("Unschedulable", 6000),
        "wait",
        "Scheduling",
        state(),
        0,
    ),
    (
        "first preemption",
        SPOT,
        state(),
        PREEMPTED,
        "recover",
        "Recovering",
        state(2, "spot", 1),
        10,
    ),
    (
        "lost pod recovers like a preemption",
        SPOT,
        state(),
        LOST,
        "recover",
        "Recovering",
        state(2, "spot", 1),
        10,
    ),
    (
        "second preemption falls back",
        SPOT,
        state(2, "spot", 1),
        PREEMPTED,
        "fallback",
        "Recovering",
        state(3, "on-demand", 2),
        20,
    ),
    (
        "StayOnSpot never falls back",
        {**SPOT, "strategy": "StayOnSpot"},
        state(3, "spot", 2),
        PREEMPTED,
        "recover",
        "Recovering",
        state(4, "spot", 3),
        25,
    ),
    (
        "preemption on on-demand",
        SPOT,
        state(3, "on-demand", 2),
        PREEMPTED,
        "recover",
        "Recovering",
        state(4, "on-demand", 3),
        25,
    ),
    (
        "recovery budget exhausted",
        SPOT,
        state(4, "on-demand", 3),
        PREEMPTED,
        "fail",
        "Failed",
        state(4, "on-demand", 3),
        0,
    ),
    ("error retry", SPOT, state(), FAILED, "retry", "Recovering", state(2, "spot", 0, 1), 10),
    (
        "error budget exhausted",
        SPOT,
        state(3, "spot", 0, 2),
        FAILED,
        "fail",
        "Failed",
        state(3, "spot", 0, 2),
        0,
    ),
    (
        "preemption does not spend error budget",
        SPOT,
        state(3, "spot", 0, 2),
        PREEMPTED,
        "recover",
        "Recovering",
        state(4, "spot", 1, 2),
        10,
    ),
    (
        "error does not spend recovery budget",
        SPOT,
        state(4, "on-demand", 3, 0),
        FAILED,
        "retry",
        "Recovering",
        state(5, "on-demand", 3, 1),
        10,
    ),
]


@pytest.mark.parametrize(
    "spot, current, outcome, action, phase, expected, delay",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(spot, current, outcome, action, phase, expected, delay):
    decision = decide(make_spec(spot=spot), current, outcome, NOW)
    assert (decision.action, decision.phase, decision.next, decision.delay_seconds) == (
        action,
        phase,
        expected,
        delay,
    )
    assert decision.starts_new_attempt == (decision.next.attempt == current.attempt + 1)


@pytest.mark.parametrize(
    "current, outcome, reason, mentions",
    [
        (
            state(4, "on-demand", 3),
            PREEMPTED,
            "RecoveryBudgetExhausted",
            ["spec.spot.maxRecoveries=3", "node shutdown"],
        ),
        (
            state(3, "spot", 0, 2),
            FAILED,
            "ErrorBudgetExhausted",
            ["spec.retries.maxErrorRetries=2", "dataset not found"],
        ),
    ],
)
def test_failure_names_the_exhausted_budget_and_cause(current, outcome, reason, mentions):
    decision = decide(make_spec(spot=SPOT), current, outcome, NOW)
    assert decision.reason == reason
    for text in mentions:
        assert text in decision.message


def test_fallback_message_names_the_setting():
    decision = decide(make_spec(spot=SPOT), state(), pending("Unschedulable", 700), NOW)
    assert "spec.spot.fallbackAfterPendingSeconds=600" in decision.message
    decision = decide(make_spec(spot=SPOT), state(2, "spot", 1), PREEMPTED, NOW)
    assert "spec.spot.fallbackAfterPreemptions=2" in decision.message


def test_two_preemptions_then_success_count_two_recoveries_and_no_errors():
    spec = make_spec(spot={"enabled": True, "strategy": "StayOnSpot"})
    current = RecoveryState.initial(spec)
    for outcome in (
        PodState("Running", "Running"),
        PREEMPTED,
        PodState("Running", "Running"),
        PREEMPTED,
    ):
        current = decide(spec, current, outcome, NOW).next
    final = decide(spec, current, PodState("Succeeded", "Completed"), NOW)
    assert final.action == "succeed"
    assert final.next == RecoveryState(
        attempt=3, capacity_type="spot", recoveries=2, error_retries=0
    )


def test_failing_trainer_ends_failed_after_its_retries_without_recoveries():
    spec = make_spec(retries={"maxErrorRetries": 2})
    current = RecoveryState.initial(spec)
    actions = []
    for _ in range(3):
        decision = decide(spec, current, FAILED, NOW)
        actions.append(decision.action)
        current = decision.next
    assert actions == ["retry", "retry", "fail"]
    assert (current.recoveries, current.error_retries) == (0, 2)


@pytest.mark.parametrize(
    "spot_enabled, status, expected",
    [
        (False, FineTuneJobStatus(), RecoveryState(1, "on-demand")),
        (True, FineTuneJobStatus(), RecoveryState(1, "spot")),
        (
            True,
            FineTuneJobStatus(recoveries=2, error_retries=1, capacity_type="on-demand"),
            RecoveryState(4, "on-demand", 2, 1),
        ),
    ],
)
def test_state_from_status(spot_enabled, status, expected):
    assert RecoveryState.from_status(make_spec(spot={"enabled": spot_enabled}), status) == expected


@pytest.mark.parametrize(
    "initial, maximum, counts, delays",
    [
        (10, 300, [1, 2, 3, 4, 5, 6, 100], [10, 20, 40, 80, 160, 300, 300]),
        (0, 60, [1, 5], [0, 0]),
        (7, 7, [1, 2], [7, 7]),
    ],
)
def test_backoff_is_exponential_and_bounded(initial, maximum, counts, delays):
    policy = BackoffSpec(initial_seconds=initial, max_seconds=maximum)
    assert [backoff_delay(policy, n) for n in counts] == delays
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(policy, 0)


@pytest.mark.parametrize(
    "done, checkpoint, expected",
    [(120, 100, 20), (120, 120, 0), (None, 50, 0), (30, None, 30), (10, 50, 0)],
)
def test_lost_steps(done, checkpoint, expected):
    assert lost_steps(done, checkpoint) == expected
