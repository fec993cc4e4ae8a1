"""The four PATCH flavours of the Kubernetes API, as pure functions `(old, body) -> new`.

- `application/merge-patch+json` (RFC 7386): what kopf and `kubectl apply` on CRs send.
- `application/json-patch+json` (RFC 6902): kopf removes finalizers this way, guarded by a
  `test` of `/metadata/resourceVersion`; a failed test is a 422, as on a real server.
- `application/strategic-merge-patch+json`: an APPROXIMATION. Real strategic merge reads
  patch strategies from the Go types; here lists of objects are merged by a fixed table of
  well-known merge keys (containers/volumes/env by `name`, conditions by `type`, ...), other
  lists are replaced, and the `$patch: delete|replace` directives are honoured on maps and
  keyed list items. Enough for what kubectl and the operator send for core kinds.
- `application/apply-patch+yaml` (server-side apply): an APPROXIMATION with create-or-merge
  semantics: the applied configuration is merged into the live object like a strategic
  merge; there is no field ownership (no managedFields, no conflicts between managers) and
  fields dropped from a later apply are not removed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import yaml

from kubetune.devenv.apiserver_errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, APPLY_PATCH)

# Merge keys of the list fields the operator and kubectl touch on core kinds.
STRATEGIC_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "conditions": "type",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "tolerations": "key",
    "taints": "key",
}


def parse_patch_body(content_type: str, raw: bytes) -> Any:
    """Decode a patch body; apply-patch is YAML (JSON is valid YAML), the others JSON."""
    try:
        if content_type == APPLY_PATCH:
            return yaml.safe_load(raw.decode("utf-8"))
        return json.loads(raw.decode("utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"error decoding patch body: {exc}") from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        return jsonpatch.JsonPatch(ops).apply(target)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our"
                       f" request: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our"
                       f" request: {exc}") from None


def _merge_keyed_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    result = [copy.deepcopy(item) for item in target]
    index = {item.get(key): pos for pos, item in enumerate(result) if isinstance(item, dict)}
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            result.append(copy.deepcopy(item))
            continue
        directive = item.get("$patch")
        pos = index.get(item[key])
        if directive == "delete":
            if pos is not None:
                result[pos] = None
            continue
        if pos is None:
            index[item[key]] = len(result)
            result.append(strategic_merge({}, item))
        else:
            result[pos] = strategic_merge(result[pos], item)
    return [item for item in result if item is not None]


def strategic_merge(target: Any, patch: Any) -> Any:
    """Approximate strategic merge (see the module docstring for what differs)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in STRATEGIC_MERGE_KEYS \
                and isinstance(result.get(key), list):
            result[key] = _merge_keyed_list(result[key], value, STRATEGIC_MERGE_KEYS[key])
        else:
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def apply_patch(content_type: str, old: dict[str, Any], body: Any) -> dict[str, Any]:
    """Dispatch on the Content-Type; the result is a full new object (not yet stored)."""
    if content_type == JSON_PATCH:
        return json_patch(old, body)
    if not isinstance(body, dict):
        raise bad_request(f"{content_type} body must be a JSON object, got {type(body).__name__}")
    if content_type == MERGE_PATCH:
        return merge_patch(old, body)
    if content_type in (STRATEGIC_PATCH, APPLY_PATCH):
        return strategic_merge(old, body)
    raise ApiError(415, "UnsupportedMediaType",
                   f"the body of the request was in an unknown format - accepted media types"
                   f" include: {', '.join(PATCH_TYPES)}")
