"""A minimal `/openapi/v3`, just enough for kubectl's field-validation negotiation. Pure.

kubectl 1.37 (`--validate=strict`, the default) asks the OpenAPI v3 document of the
object's group-version whether the PATCH operation of that kind accepts the
`fieldValidation` query parameter. If yes, it leaves validation to the server
(`?fieldValidation=Strict`) and this emulator refuses unknown fields itself; if no document
can be found at all, kubectl fails with "failed to download openapi". So each served
group-version gets a document with one PATCH operation per kind, carrying the
`x-kubernetes-group-version-kind` extension and that parameter. No component schemas are
published, so `kubectl explain` does not work and `kubectl apply` on custom resources uses
JSON merge patch, exactly as against a real server (CRDs never take strategic merge).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetune.devenv.apiserver_registry import ResourceRegistry, ResourceType

MERGE_TYPES = ["application/json-patch+json", "application/merge-patch+json",
               "application/apply-patch+yaml"]


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _item_path(rtype: ResourceType) -> str:
    base = "/" + gv_path(rtype.group, rtype.version)
    if rtype.namespaced:
        return f"{base}/namespaces/{{namespace}}/{rtype.plural}/{{name}}"
    return f"{base}/{rtype.plural}/{{name}}"


def _patch_operation(rtype: ResourceType) -> dict[str, Any]:
    content_types = MERGE_TYPES if rtype.custom else \
        MERGE_TYPES + ["application/strategic-merge-patch+json"]
    return {
        "operationId": f"patch{rtype.kind}",
        "parameters": [
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
             "description": "Ignore, Warn or Strict handling of unknown fields."},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        ],
        "requestBody": {"content": {ct: {"schema": {"type": "object"}} for ct in content_types}},
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": {"group": rtype.group, "version": rtype.version,
                                            "kind": rtype.kind},
    }


def group_version_doc(registry: ResourceRegistry, group: str, version: str
                      ) -> dict[str, Any] | None:
    types = [t for t in registry.all() if t.group == group and t.version == version
             and "patch" in t.verbs]
    if not types:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubetune emulated)", "version": "v1.37.0"},
        "paths": {_item_path(t): {"patch": _patch_operation(t)} for t in types},
        "components": {"schemas": {}},
    }


def index_doc(registry: ResourceRegistry) -> dict[str, Any]:
    """`/openapi/v3`: one entry per group-version, with a content hash as a real server."""
    paths = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            doc = group_version_doc(registry, group, version)
            if doc is None:
                continue
            digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
            path = gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": paths}
