"""Create-or-patch of a ModelServe's children, kubectl-apply style, without the I/O.

`kube.ensure` patches only a fixed set of fields per kind and never removes a key; a
Deployment needs more: when a user drops `nodeSelector` or a toleration from the spec,
the key must go from the live pod template too. So, like `kubectl apply`, the last
applied body is kept in an annotation and the patch is a merge patch of the desired
body plus explicit nulls for what the last applied body had and the desired one lacks.
Fields the API server defaults are never in the desired body, so they are left alone.
"""

from __future__ import annotations

import json

from ..conditions import _diff
from ..kube import is_subset

LAST_APPLIED = "kubetune.dev/last-applied"


def _without_last_applied(body: dict) -> dict:
    body = json.loads(json.dumps(body))
    annotations = body.get("metadata", {}).get("annotations") or {}
    annotations.pop(LAST_APPLIED, None)
    if not annotations:
        body.get("metadata", {}).pop("annotations", None)
    return body


def with_last_applied(desired: dict) -> dict:
    """The body to create: the desired body carrying itself as the last-applied record."""
    record = json.dumps(desired, sort_keys=True, separators=(",", ":"))
    body = json.loads(json.dumps(desired))
    body["metadata"].setdefault("annotations", {})[LAST_APPLIED] = record
    return body


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_patch(desired: dict, actual: dict) -> dict | None:
    """Merge patch turning `actual` into `desired` (None when already in sync)."""
    annotations = (actual.get("metadata") or {}).get("annotations") or {}
    try:
        last = json.loads(annotations.get(LAST_APPLIED) or "{}")
    except ValueError:
        last = {}
    body = _without_last_applied(desired)
    record = json.dumps(body, sort_keys=True, separators=(",", ":"))
    drifted = not is_subset(body, _without_last_applied(actual))
    if last == body and not drifted:
        return None
    patch = _merge(_diff(last, body), body)
    patch.pop("apiVersion", None)
    patch.pop("kind", None)
    patch.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = record
    return patch
