"""Classify a pod (and its node) into what it means for the job: is this a preemption —
which costs a recovery, never an error retry — or a failure of the user's training?

Pure: the caller fetches the pod and its node and passes them in. The rules, in order:
a trainer that exited 0 succeeded (even if a disruption notice came in its last seconds);
any sign of infrastructure taking the pod away (DisruptionTarget condition, node gone,
eviction or node shutdown, the trainer's own exit code 75 "preempted, checkpoint saved",
a spot-interruption taint on the node) is a preemption; any other non-zero exit is a
user-code failure carrying the trainer's termination message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from .builders import TRAINER_CONTAINER, WORKER_CONTAINER
from .config import SpotProfile

PodKind = Literal["Pending", "Running", "Succeeded", "Preempted", "Failed", "Lost"]

EXIT_PREEMPTED = 75
MAX_MESSAGE = 1024
# Pod status.reason values set when the node, not the workload, ended the pod.
INFRASTRUCTURE_REASONS = {"Evicted", "Shutdown", "NodeShutdown", "Terminated", "NodeLost"}
_CREDENTIAL_PATTERNS = (
    re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}"),
    re.compile(r"(?i)(aws_secret_access_key|secret[_-]?key|password|token)(\s*[=:]\s*)\S+"),
)


@dataclass(frozen=True)
class PodState:
    """What one pod means for the job.

    `terminated` tells whether the pod's containers have stopped: a preempted pod that
    still runs (a disruption notice, an interruption taint) is saving its checkpoint, and
    its replacement must wait for it. `summary` is the trainer's final JSON, if any.
    """

    kind: PodKind
    reason: str
    message: str = ""
    terminated: bool = False
    exit_code: int | None = None
    summary: dict = field(default_factory=dict)
    pending_since: datetime | None = None


def sanitize_message(text: str | None) -> str:
    """Bound a message for status/Events and blank anything that looks like a credential."""
    text = (text or "").strip()
    text = _CREDENTIAL_PATTERNS[0].sub("[redacted]", text)
    text = _CREDENTIAL_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    if len(text) > MAX_MESSAGE:
        text = "…" + text[-(MAX_MESSAGE - 1) :]
    return text


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(pod: dict, kind: str) -> dict | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def main_container_status(pod: dict) -> dict | None:
    """Status of the trainer (head) or ray-worker container."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") in (TRAINER_CONTAINER, WORKER_CONTAINER):
            return status
    return None


def _terminated(pod: dict) -> dict | None:
    status = main_container_status(pod) or {}
    return (status.get("state") or {}).get("terminated")


def _summary(termination_message: str) -> dict:
    try:
        value = json.loads(termination_message)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _failure_message(terminated: dict, summary: dict) -> str:
    raw = terminated.get("message") or ""
    for key in ("error", "message"):
        if isinstance(summary.get(key), str) and summary[key]:
            return sanitize_message(summary[key])
    return sanitize_message(raw)


def classify_missing_pod(node_exists: bool | None) -> PodState:
    """The pod we created is gone from the API. Gone with its node: the node was
    reclaimed. Otherwise someone or something deleted it: Lost, recovered like a
    preemption but not evidence about spot capacity."""
    if node_exists is False:
        return PodState("Preempted", "NodeDeleted", "the pod was deleted with its node", True)
    return PodState("Lost", "PodDeleted", "the pod was deleted", True)


def classify_pod(
    pod: dict,
    node: dict | None,
    node_exists: bool | None,
    profile: SpotProfile,
) -> PodState:
    """Classify a pod that still exists in the API.

    `node` is the pod's node when fetched; `node_exists` is False when the lookup said
    404, None when it was not looked up (e.g. the pod is not scheduled yet).
    """
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    terminated = _terminated(pod)
    exit_code = terminated.get("exitCode") if terminated else None
    summary = _summary(terminated.get("message")) if terminated else {}
    done = terminated is not None or phase in ("Succeeded", "Failed")

    if phase == "Succeeded" or exit_code == 0:
        return PodState("Succeeded", "Completed", "", True, exit_code, summary)

    disruption = _condition(pod, "DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        return PodState(
            "Preempted",
            disruption.get("reason") or "DisruptionTarget",
            sanitize_message(disruption.get("message")),
            done,
            exit_code,
            summary,
        )
    if exit_code == EXIT_PREEMPTED:
        return PodState(
            "Preempted",
            "CheckpointedOnSigterm",
            "the trainer saved a checkpoint and exited 75",
            True,
            exit_code,
            summary,
        )
    if status.get("reason") in INFRASTRUCTURE_REASONS:
        return PodState(
            "Preempted",
            status["reason"],
            sanitize_message(status.get("message")),
            done,
            exit_code,
            summary,
        )
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name and node_exists is False:
        return PodState(
            "Preempted",
            "NodeDeleted",
            f"node {node_name} no longer exists",
            done,
            exit_code,
            summary,
        )
    taint = profile.is_interrupting(node) if node_name else None
    if taint and not done:
        return PodState(
            "Preempted", "SpotInterruption", f"node {node_name} has taint {taint}", False
        )

    if terminated is not None:
        reason = terminated.get("reason") or "Error"
        if reason != "OOMKilled":
            reason = "Error"
        message = _failure_message(terminated, summary) or f"exit code {exit_code}"
        if reason == "OOMKilled":
            message = f"out of memory (OOMKilled, exit code {exit_code}); {message}".rstrip("; ")
        return PodState("Failed", reason, message, True, exit_code, summary)
    if phase == "Failed":
        return PodState(
            "Failed",
            status.get("reason") or "PodFailed",
            sanitize_message(status.get("message")),
            True,
        )
    if phase == "Unknown":
        return PodState("Lost", "NodeUnreachable", f"node {node_name} stopped reporting the pod")
    if phase == "Running":
        return PodState("Running", "Running")
    return _pending(pod)


def _pending(pod: dict) -> PodState:
    """Why a pod waits: unschedulable (no capacity), or a container that cannot start."""
    since = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    waiting = ((main_container_status(pod) or {}).get("state") or {}).get("waiting")
    if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
        return PodState(
            "Pending",
            waiting["reason"],
            sanitize_message(waiting.get("message")),
            pending_since=since,
        )
    scheduled = _condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return PodState(
            "Pending",
            scheduled.get("reason") or "Unschedulable",
            sanitize_message(scheduled.get("message")),
            pending_since=since,
        )
    return PodState(
        "Pending",
        "Scheduling" if not (pod.get("spec") or {}).get("nodeName") else "Starting",
        pending_since=since,
    )


_SEVERITY = {"Succeeded": 0, "Running": 1, "Pending": 2, "Lost": 3, "Failed": 4, "Preempted": 5}


def attempt_state(head: PodState, workers: list[PodState]) -> PodState:
    """One state for the whole attempt (head plus worker pods).

    The head's trainer decides success (workers exit on their own once it is done). A
    preemption anywhere explains the rest: when a spot worker vanishes, the trainer on the
    head fails as a consequence, and that must count as a recovery, not as a user error.
    Otherwise the worst state wins.
    """
    if head.kind == "Succeeded":
        return head
    states = [head, *workers]
    preempted = [state for state in states if state.kind == "Preempted"]
    if preempted:
        first = preempted[0]
        return PodState(
            "Preempted",
            first.reason,
            first.message,
            all(state.terminated or state.kind == "Succeeded" for state in states),
            head.exit_code,
            head.summary,
        )
    pending = [state for state in states if state.kind == "Pending"]
    worst = max(states, key=lambda state: _SEVERITY[state.kind])
    if worst.kind == "Pending":
        since = [state.pending_since for state in pending if state.pending_since]
        return PodState(
            "Pending", worst.reason, worst.message, pending_since=min(since) if since else None
        )
    return worst
