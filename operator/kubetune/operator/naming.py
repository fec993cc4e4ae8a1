"""Deterministic names and labels of a FineTuneJob's children.

The same job always yields the same child names, so a create after an operator restart
hits 409 "already exists" instead of making a duplicate. Names must be DNS-1035 labels
(a Service name: lowercase, starts with a letter, at most 63 characters) while a job name
may be a 253-character DNS subdomain with dots; whenever a name has to be shortened or
rewritten, a hash of the full job name keeps two jobs from colliding.
"""

from __future__ import annotations

import hashlib
import re

from .config import CapacityType

MAX_NAME = 63
HASH_LEN = 8
APP_NAME = "kubetune"

COMPONENT_HEAD = "ray-head"
COMPONENT_WORKER = "ray-worker"
COMPONENT_SPEC = "spec"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "kubetune.dev/finetunejob"
LABEL_ATTEMPT = "kubetune.dev/attempt"
LABEL_CAPACITY = "kubetune.dev/capacity-type"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def child_name(job: str, suffix: str) -> str:
    """`<job>-<suffix>`, or `<job prefix>-<hash>-<suffix>` when that is not a valid label."""
    if not job:
        raise ValueError("metadata.name: a FineTuneJob needs a name")
    plain = f"{job}-{suffix}"
    if len(plain) <= MAX_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", plain):
        return plain
    cleaned = re.sub(r"[^a-z0-9-]", "-", job.lower())
    if not cleaned[:1].isalpha():
        cleaned = "j" + cleaned
    room = MAX_NAME - len(suffix) - HASH_LEN - 2
    if room < 1:
        raise ValueError(f"child suffix {suffix!r} leaves no room for the job name")
    prefix = cleaned[:room].rstrip("-") or "j"
    return f"{prefix}-{_digest(job)}-{suffix}"


def spec_configmap_name(job: str) -> str:
    return child_name(job, "spec")


def head_pod_name(job: str) -> str:
    return child_name(job, "head")


def head_service_name(job: str) -> str:
    """Same name as the head pod: the Service exists to give the head a stable DNS name."""
    return child_name(job, "head")


def worker_pod_name(job: str, index: int) -> str:
    """Worker pods are numbered from 1: the head is Ray Train rank 0."""
    if index < 1:
        raise ValueError(f"worker index starts at 1, got {index}")
    return child_name(job, f"worker-{index}")


def label_value(text: str) -> str:
    """A label value for `text`: itself when valid, else a 63-char prefix plus hash."""
    if len(text) <= MAX_NAME and _LABEL_VALUE.match(text):
        return text
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[: MAX_NAME - HASH_LEN - 1]
    prefix = prefix.strip("-_.") or "x"
    return f"{prefix}-{_digest(text)}"


def selector_labels(job: str) -> dict[str, str]:
    """Labels every child of the job carries; list children with these."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: label_value(job),
        LABEL_MANAGED_BY: APP_NAME,
        LABEL_JOB: label_value(job),
    }


def head_selector(job: str) -> dict[str, str]:
    """Selects the head pod of any attempt (the Service keeps working across recoveries)."""
    return {LABEL_JOB: label_value(job), LABEL_COMPONENT: COMPONENT_HEAD}


def child_labels(
    job: str,
    component: str,
    attempt: int | None = None,
    capacity_type: CapacityType | None = None,
) -> dict[str, str]:
    """Standard labels; pods also carry their attempt and capacity type."""
    labels = {**selector_labels(job), LABEL_COMPONENT: component}
    if attempt is not None:
        if attempt < 1:
            raise ValueError(f"attempt starts at 1, got {attempt}")
        labels[LABEL_ATTEMPT] = str(attempt)
    if capacity_type is not None:
        labels[LABEL_CAPACITY] = capacity_type
    return labels
