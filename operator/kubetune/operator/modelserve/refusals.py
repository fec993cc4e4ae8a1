"""A ModelServe's children refused by the API server: pure helpers, no I/O.

A Deployment is accepted whatever its pods would meet: the ServiceAccount, PodSecurity,
ResourceQuota, LimitRange and Priority admission plugins judge each pod, and their
refusals surface only as the ReplicaSet's FailedCreate (a Deployment condition
`ReplicaFailure`), after the ConfigMap, Service and Deployment exist. So before a
Deployment is created or its template changed, the service asks the API server about
one pod of that template in a dry run (`probe_pod`; one POST, nothing stored): a pod
refused for good leaves no child behind and the ModelServe Stalled naming the field.

What a dry run cannot see (a quota with room for one replica of two, a ServiceAccount
deleted later) still reaches the Deployment's `ReplicaFailure` condition, which
`replica_failure` turns into the ModelServe's phase: Degraded (Stalled) naming the
field, or Progressing with the quota's message while a quota is exceeded.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from ..api_errors import classify_message
from ..child_fields import MODELSERVE, describe
from ..refusals import CHILD_REFUSED, QUOTA_EXCEEDED


def probe_pod(deployment: dict) -> dict:
    """A Pod of the Deployment's template, as the ReplicaSet controller would create it,
    for a dry run. A fixed name, so that the same refusal reads the same each time (no
    status write for it again); the ReplicaSet's pods are `<name>-<hash>-<random>`."""
    meta = deployment["metadata"]
    template = copy.deepcopy(deployment["spec"]["template"])
    pod_meta = {"name": f"{meta['name']}-probe", "namespace": meta.get("namespace"),
                "labels": (template.get("metadata") or {}).get("labels") or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template["spec"]}


def replica_failure(deployment: Mapping | None) -> tuple[str, str, str] | None:
    """(phase, reason, message) when the Deployment's ReplicaSet cannot create pods."""
    conditions = ((deployment or {}).get("status") or {}).get("conditions") or []
    failure = next((c for c in conditions if c.get("type") == "ReplicaFailure"
                    and c.get("status") == "True"), None)
    if failure is None:
        return None
    verdict = classify_message(failure.get("message") or failure.get("reason") or "")
    pod = {"kind": "Pod", "metadata": {"name": (deployment.get("metadata") or {}).get("name")}}
    _, message = describe(MODELSERVE, pod, verdict)
    if verdict.waits:
        return "Progressing", QUOTA_EXCEEDED, message
    return "Degraded", CHILD_REFUSED, message
