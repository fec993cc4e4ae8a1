"""Conditions follow kstatus; status is patched only when it changed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kubetune.api import FineTuneJobStatus
from kubetune.operator.conditions import job_conditions, status_patch

T0 = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def by_type(conditions) -> dict[str, str]:
    return {condition.type: condition.status for condition in conditions}


@pytest.mark.parametrize(
    "phase, ready, reconciling, stalled, succeeded, failed, promoted",
    [
        ("Pending", "False", "True", "False", "False", "False", "Unknown"),
        ("Scheduling", "False", "True", "False", "False", "False", "Unknown"),
        ("Running", "False", "True", "False", "False", "False", "Unknown"),
        ("Recovering", "False", "True", "False", "False", "False", "Unknown"),
        ("Succeeded", "True", "False", "False", "True", "False", "True"),
        ("NotPromoted", "False", "False", "True", "False", "True", "False"),
        ("Failed", "False", "False", "True", "False", "True", "False"),
    ],
)
def test_conditions_per_phase(phase, ready, reconciling, stalled, succeeded, failed, promoted):
    conditions = job_conditions(phase, "Why", "because", 3, None, T0)
    assert by_type(conditions) == {
        "Ready": ready,
        "Reconciling": reconciling,
        "Stalled": stalled,
        "Succeeded": succeeded,
        "Failed": failed,
        "Promoted": promoted,
    }
    assert all(c.observed_generation == 3 and c.last_transition_time == T0 for c in conditions)
    assert all(c.reason == "Why" and c.message == "because" for c in conditions)


def kstatus(conditions) -> str:
    """kstatus' generic rule for a custom resource: Stalled True -> Failed, Reconciling
    True -> InProgress, else Current."""
    statuses = by_type(conditions)
    if statuses.get("Stalled") == "True":
        return "Failed"
    if statuses.get("Reconciling") == "True":
        return "InProgress"
    return "Current"


@pytest.mark.parametrize(
    "phase, expected",
    [
        ("Pending", "InProgress"),
        ("Running", "InProgress"),
        ("Recovering", "InProgress"),
        ("Succeeded", "Current"),
        ("NotPromoted", "Failed"),
        ("Failed", "Failed"),
    ],
)
def test_kstatus_reading(phase, expected):
    assert kstatus(job_conditions(phase, "R", "", 1, None, T0)) == expected


def test_transition_time_moves_only_when_status_flips():
    running = job_conditions("Running", "Training", "", 1, None, T0)
    recovering = job_conditions("Recovering", "Preempted", "recovery 1/10", 1, running, T1)
    assert all(c.last_transition_time == T0 for c in recovering)  # every status unchanged
    assert recovering[0].reason == "Preempted"
    done = job_conditions(
        "Succeeded", "TrainingSucceeded", "", 1, recovering, T1 + timedelta(hours=1)
    )
    times = {c.type: c.last_transition_time for c in done}
    assert times["Stalled"] == T0 and times["Failed"] == T0
    assert times["Ready"] == times["Succeeded"] == times["Reconciling"] == T1 + timedelta(hours=1)


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="status.phase"):
        job_conditions("Exploded", "R", "", 1, None, T0)


def wire(**fields) -> dict:
    return FineTuneJobStatus(**fields).to_wire()


def test_unchanged_status_is_not_written():
    conditions = job_conditions("Running", "Training", "", 2, None, T0)
    old = wire(phase="Running", conditions=conditions, observed_generation=2)
    again = job_conditions("Running", "Training", "", 2, conditions, T1)
    assert status_patch(old, wire(phase="Running", conditions=again, observed_generation=2)) is None


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (None, {"phase": "Pending"}, {"status": {"phase": "Pending"}}),
        (
            {"phase": "Running", "recoveries": 0},
            {"phase": "Recovering", "recoveries": 1},
            {"status": {"phase": "Recovering", "recoveries": 1}},
        ),
        ({"phase": "Running", "message": "x"}, {"phase": "Running"}, {"status": {"message": None}}),
        (
            {"progress": {"step": 1, "loss": 2.0}},
            {"progress": {"step": 2, "loss": 2.0}},
            {"status": {"progress": {"step": 2}}},
        ),
        (
            {"conditions": [{"type": "Ready", "status": "False"}]},
            {"conditions": [{"type": "Ready", "status": "True"}]},
            {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        ),
        ({"phase": "Running"}, {"phase": "Running"}, None),
    ],
)
def test_status_patch_is_a_minimal_merge_patch(old, new, expected):
    assert status_patch(old, new) == expected
