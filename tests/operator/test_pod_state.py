"""Pod classification: preemption versus user error, with the reason and message."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kubetune.operator.config import OperatorConfig
from kubetune.operator.pod_state import (
    PodState,
    attempt_state,
    classify_missing_pod,
    classify_pod,
    sanitize_message,
)

KARPENTER = OperatorConfig(spot_provider="karpenter").spot_profile()
CREATED = "2026-11-21T10:00:00Z"


def pod(
    phase="Running",
    *,
    node="node-a",
    conditions=(),
    terminated=None,
    waiting=None,
    reason=None,
    message=None,
    container="trainer",
) -> dict:
    state = {"running": {"startedAt": CREATED}}
    if terminated is not None:
        state = {"terminated": terminated}
    elif waiting is not None:
        state = {"waiting": waiting}
    status = {
        "phase": phase,
        "conditions": list(conditions),
        "containerStatuses": [{"name": container, "state": state}],
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    spec = {"nodeName": node} if node else {}
    return {
        "metadata": {"name": "job-head", "creationTimestamp": CREATED},
        "spec": spec,
        "status": status,
    }


def exited(code: int, reason: str = "Error", message: str = "") -> dict:
    return {"exitCode": code, "reason": reason, "message": message, "finishedAt": CREATED}


def disruption(reason: str) -> dict:
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": f"{reason} happened",
    }


NODE = {"metadata": {"name": "node-a"}, "spec": {}}
TAINTED = {
    "metadata": {"name": "node-a"},
    "spec": {"taints": [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]},
}
SUMMARY = json.dumps({"step": 120, "checkpointStep": 120, "loss": 1.2})

CASES = [
    # id, pod, node, node_exists, expected kind, expected reason, terminated
    (
        "succeeded",
        pod("Succeeded", terminated=exited(0, "Completed", SUMMARY)),
        NODE,
        True,
        "Succeeded",
        "Completed",
        True,
    ),
    (
        "exit 0 wins over a late disruption notice",
        pod(
            "Failed",
            conditions=[disruption("TerminationByKubelet")],
            terminated=exited(0, "Completed"),
        ),
        NODE,
        True,
        "Succeeded",
        "Completed",
        True,
    ),
    (
        "scheduler preemption",
        pod("Running", conditions=[disruption("PreemptionByScheduler")]),
        NODE,
        True,
        "Preempted",
        "PreemptionByScheduler",
        False,
    ),
    (
        "kubelet graceful shutdown",
        pod("Failed", conditions=[disruption("TerminationByKubelet")], terminated=exited(143)),
        NODE,
        True,
        "Preempted",
        "TerminationByKubelet",
        True,
    ),
    (
        "taint manager",
        pod("Running", conditions=[disruption("DeletionByTaintManager")]),
        NODE,
        True,
        "Preempted",
        "DeletionByTaintManager",
        False,
    ),
    (
        "eviction API (drain)",
        pod("Running", conditions=[disruption("EvictionByEvictionAPI")]),
        NODE,
        True,
        "Preempted",
        "EvictionByEvictionAPI",
        False,
    ),
    (
        "disruption condition False is ignored",
        pod("Running", conditions=[{"type": "DisruptionTarget", "status": "False"}]),
        NODE,
        True,
        "Running",
        "Running",
        False,
    ),
    (
        "trainer exit 75",
        pod("Failed", terminated=exited(75, "Error", SUMMARY)),
        NODE,
        True,
        "Preempted",
        "CheckpointedOnSigterm",
        True,
    ),
    (
        "kubelet eviction",
        pod("Failed", reason="Evicted", message="The node was low on resource: memory."),
        NODE,
        True,
        "Preempted",
        "Evicted",
        True,
    ),
    (
        "node shutdown",
        pod("Failed", reason="NodeShutdown", terminated=exited(137)),
        NODE,
        True,
        "Preempted",
        "NodeShutdown",
        True,
    ),
    (
        "GKE terminated",
        pod("Failed", reason="Terminated", terminated=exited(143)),
        NODE,
        True,
        "Preempted",
        "Terminated",
        True,
    ),
    (
        "node deleted under a running pod",
        pod("Running"),
        None,
        False,
        "Preempted",
        "NodeDeleted",
        False,
    ),
    (
        "interruption taint on a running pod's node",
        pod("Running"),
        TAINTED,
        True,
        "Preempted",
        "SpotInterruption",
        False,
    ),
    (
        "OOMKilled is a user error",
        pod("Failed", terminated=exited(137, "OOMKilled")),
        NODE,
        True,
        "Failed",
        "OOMKilled",
        True,
    ),
    (
        "exit 1 is a user error",
        pod("Failed", terminated=exited(1, "Error", "Traceback...\nFileNotFoundError: data")),
        NODE,
        True,
        "Failed",
        "Error",
        True,
    ),
    (
        "phase Failed with no container info",
        pod("Failed", reason="UnexpectedAdmissionError", container="other"),
        NODE,
        True,
        "Failed",
        "UnexpectedAdmissionError",
        True,
    ),
    (
        "unknown phase: node unreachable",
        pod("Unknown"),
        NODE,
        True,
        "Lost",
        "NodeUnreachable",
        False,
    ),
    ("running", pod("Running"), NODE, True, "Running", "Running", False),
    (
        "unschedulable",
        pod(
            "Pending",
            node=None,
            waiting={"reason": "ContainerCreating"},
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        ),
        None,
        None,
        "Pending",
        "Unschedulable",
        False,
    ),
    (
        "image pull backoff",
        pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "pull failed"}),
        NODE,
        True,
        "Pending",
        "ImagePullBackOff",
        False,
    ),
    (
        "missing secret",
        pod(
            "Pending",
            waiting={
                "reason": "CreateContainerConfigError",
                "message": 'secret "minio-creds" not found',
            },
        ),
        NODE,
        True,
        "Pending",
        "CreateContainerConfigError",
        False,
    ),
    (
        "not yet scheduled",
        pod("Pending", node=None, waiting={"reason": "ContainerCreating"}),
        None,
        None,
        "Pending",
        "Scheduling",
        False,
    ),
]


@pytest.mark.parametrize(
    "pod_body, node, node_exists, kind, reason, terminated",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_classify_pod(pod_body, node, node_exists, kind, reason, terminated):
    state = classify_pod(pod_body, node, node_exists, KARPENTER)
    assert (state.kind, state.reason, state.terminated) == (kind, reason, terminated)


def test_taint_of_another_provider_is_not_an_interruption():
    gke = OperatorConfig(spot_provider="gke").spot_profile()
    assert classify_pod(pod("Running"), TAINTED, True, gke).kind == "Running"


def test_failure_message_comes_from_the_termination_message():
    body = pod(
        "Failed",
        terminated=exited(1, "Error", json.dumps({"error": "dataset s3://b/x.jsonl not found"})),
    )
    state = classify_pod(body, NODE, True, KARPENTER)
    assert state.message == "dataset s3://b/x.jsonl not found"
    assert state.exit_code == 1
    oom = classify_pod(pod("Failed", terminated=exited(137, "OOMKilled")), NODE, True, KARPENTER)
    assert "out of memory" in oom.message and "137" in oom.message
    plain = classify_pod(pod("Failed", terminated=exited(3)), NODE, True, KARPENTER)
    assert plain.message == "exit code 3"


def test_trainer_summary_is_parsed():
    state = classify_pod(
        pod("Failed", terminated=exited(75, "Error", SUMMARY)), NODE, True, KARPENTER
    )
    assert state.summary == {"step": 120, "checkpointStep": 120, "loss": 1.2}


def test_pending_since_is_the_pod_creation_time():
    state = classify_pod(
        pod("Pending", node=None, waiting={"reason": "ContainerCreating"}), None, None, KARPENTER
    )
    assert state.pending_since == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "node_exists, kind, reason",
    [
        (False, "Preempted", "NodeDeleted"),
        (True, "Lost", "PodDeleted"),
        (None, "Lost", "PodDeleted"),
    ],
)
def test_missing_pod(node_exists, kind, reason):
    state = classify_missing_pod(node_exists)
    assert (state.kind, state.reason, state.terminated) == (kind, reason, True)


@pytest.mark.parametrize(
    "text, secret",
    [
        ("boto failed with key AKIAABCDEFGHIJKLMNOP", "AKIAABCDEFGHIJKLMNOP"),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI/K7MDENG"),
        ("password: hunter2", "hunter2"),
    ],
)
def test_messages_never_carry_credentials(text, secret):
    cleaned = sanitize_message(text)
    assert secret not in cleaned and "[redacted]" in cleaned


def test_messages_are_bounded():
    assert len(sanitize_message("x" * 10_000)) == 1024


def s(kind, reason="r", terminated=True, since=None) -> PodState:
    return PodState(kind, reason, terminated=terminated, pending_since=since)


T1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T2 = datetime(2026, 1, 2, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "head, workers, kind, reason",
    [
        (
            s("Succeeded"),
            [s("Failed", "Error")],
            "Succeeded",
            "r",
        ),  # workers exit after the head is done
        (s("Failed", "Error"), [s("Preempted", "NodeDeleted")], "Preempted", "NodeDeleted"),
        (
            s("Running", terminated=False),
            [s("Preempted", "SpotInterruption", False)],
            "Preempted",
            "SpotInterruption",
        ),
        (s("Running", terminated=False), [s("Failed", "Error")], "Failed", "Error"),
        (
            s("Running", terminated=False),
            [s("Pending", "Unschedulable", False)],
            "Pending",
            "Unschedulable",
        ),
        (s("Running", terminated=False), [s("Running", terminated=False)], "Running", "r"),
        (
            s("Lost", "NodeUnreachable", False),
            [s("Running", terminated=False)],
            "Lost",
            "NodeUnreachable",
        ),
    ],
)
def test_attempt_state(head, workers, kind, reason):
    state = attempt_state(head, workers)
    assert (state.kind, state.reason) == (kind, reason)


def test_attempt_preempted_is_terminated_only_when_every_pod_stopped():
    assert not attempt_state(s("Running", terminated=False), [s("Preempted")]).terminated
    assert attempt_state(s("Failed"), [s("Preempted")]).terminated


def test_attempt_pending_since_is_the_earliest():
    state = attempt_state(
        s("Pending", "Unschedulable", False, T2), [s("Pending", "Unschedulable", False, T1)]
    )
    assert state.pending_since == T1
