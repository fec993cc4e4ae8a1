"""Which spec field a refused child's field came from: pure, one table per owner kind.

The API server blames a field of the object it refused (a Pod's `spec.nodeSelector`, a
Deployment's `spec.template.spec.serviceAccountName`); the user wrote a field of the
FineTuneJob or ModelServe. These tables follow what the builders derive from the spec
(`builders/pods.py`, `builders/placement.py`, `builders/storage_env.py`,
`modelserve/podspec.py`, `modelserve/builders.py`): keep them in step when a builder
starts deriving a new pod field from the spec. Fields the operator derives from
nothing the user wrote (names, labels hashed from the name, probes) map to nothing;
the message then names the child's field instead.
"""

from __future__ import annotations

import re

from .api_errors import LIMIT_RANGE, QUOTA_EXCEEDED, Verdict

FINETUNEJOB, MODELSERVE = "FineTuneJob", "ModelServe"

# Pod fields (a Deployment's `spec.template.` stripped), first matching rule wins.
_COMMON_POD = (
    (r"spec\.nodeSelector", "spec.resources.nodeSelector"),
    (r"spec\.tolerations", "spec.resources.tolerations"),
    (r"spec\.affinity", "spec.resources.affinity"),
    (r"spec\.priorityClassName", "spec.resources.priorityClassName"),
)
_POD_RULES = {
    FINETUNEJOB: (
        *_COMMON_POD,
        (r"spec\.serviceAccountName", "spec.output.credentials.serviceAccountName"),
        (r"spec\.terminationGracePeriodSeconds", "spec.spot.checkpointBudgetSeconds"),
        (r".*secretKeyRef", "spec.output.credentials.secretRef"),
        (r"spec\.containers\[\d+\]\.image$", "spec.images.trainer"),
        (r"spec\.containers\[\d+\]\.imagePullPolicy", "spec.images.pullPolicy"),
        (r"spec\.containers\[\d+\]\.resources", "spec.resources"),
    ),
    MODELSERVE: (
        *_COMMON_POD,
        (r"spec\.serviceAccountName", "spec.storage.credentials.serviceAccountName"),
        (r".*secretKeyRef", "spec.storage.credentials.secretRef"),
        (r"spec\.containers\[0\]\.image$", "spec.image"),
        (r"spec\.containers\[0\]\.imagePullPolicy", "spec.imagePullPolicy"),
        (r"spec\.containers\[0\]\.resources", "spec.resources"),
        (r"spec\.containers\[0\]\.ports", "spec.port"),
        (r"spec\.volumes\[\d+\]\.persistentVolumeClaim", "spec.baseModel.uri"),
    ),
}
_OTHER_RULES = {
    (FINETUNEJOB, "ConfigMap"): ((r"data", "spec"),),
    (MODELSERVE, "ConfigMap"): ((r"data", "spec.adapters"),),
    (MODELSERVE, "Service"): ((r"spec\.ports", "spec.port"),),
    (MODELSERVE, "Deployment"): ((r"spec\.replicas", "spec.replicas"),),
}
# Quota and LimitRange resource names -> what sizes them in the spec.
_COUNTS = {FINETUNEJOB: "spec.resources.workers", MODELSERVE: "spec.replicas"}


def spec_field(owner: str, child_kind: str, verdict: Verdict) -> str | None:
    """The spec field to name for this refusal of a `child_kind` of an `owner`."""
    if verdict.cause in (QUOTA_EXCEEDED, LIMIT_RANGE) and verdict.resources:
        found = _resource_field(owner, verdict.resources)
        if found:
            return found
    for field in verdict.fields:
        found = _field(owner, child_kind, field)
        if found:
            return found
    return None


def _field(owner: str, child_kind: str, field: str) -> str | None:
    if child_kind == "Deployment" and field.startswith("spec.template."):
        field, child_kind = field[len("spec.template."):], "Pod"
    rules = _POD_RULES.get(owner, ()) if child_kind == "Pod" else \
        _OTHER_RULES.get((owner, child_kind), ())
    for pattern, target in rules:
        if re.match(pattern, field):
            return _resource_in(field, target) if target == "spec.resources" else target
    return None


def _resource_in(field: str, target: str) -> str:
    """`spec.containers[0].resources.limits[cpu]` -> spec.resources.cpu."""
    if re.search(r"\bcpu\b", field):
        return f"{target}.cpu"
    if re.search(r"\bmemory\b", field):
        return f"{target}.memory"
    if re.search(r"\[[^\]]+/[^\]]+\]", field):  # an extended resource: the GPU
        return f"{target}.gpuResourceName"
    return target


def _resource_field(owner: str, resources: tuple[str, ...]) -> str | None:
    """The spec field behind the first resource a quota or LimitRange names (None for
    counts of other kinds: a ConfigMap or a Service per job is no spec field)."""
    name = resources[0].removeprefix("requests.").removeprefix("limits.")
    if name in ("cpu", "memory"):
        return f"spec.resources.{name}"
    if name in ("pods", "count/pods"):
        return _COUNTS[owner]
    if name.startswith("count/"):
        return None
    if "/" in name:
        return "spec.resources.gpusPerWorker"
    return "spec.resources"


def describe(owner: str, child: dict, verdict: Verdict) -> tuple[str | None, str]:
    """(spec field or None, a message naming it): what a condition and an Event say."""
    kind = child.get("kind", "")
    field = spec_field(owner, kind, verdict)
    name = (child.get("metadata") or {}).get("name") or (
        (child.get("metadata") or {}).get("generateName") or "").rstrip("-")
    what = f"{kind} {name} refused ({verdict.cause}, HTTP {verdict.status})" if verdict.status \
        else f"{kind} {name} refused ({verdict.cause})"
    if field:
        return field, f"{field}: {what}: {verdict.message}"
    blamed = f" at {', '.join(verdict.fields)}" if verdict.fields else ""
    return None, f"{what}{blamed}: {verdict.message}"
