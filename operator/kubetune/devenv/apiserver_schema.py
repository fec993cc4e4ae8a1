"""Structural-schema pruning and unknown-field detection for custom resources. Pure.

A real API server drops fields a CRD's structural schema does not declare (pruning), or,
when the client asks for `fieldValidation=Strict` (kubectl's default `--validate=strict`),
refuses them with 400 BadRequest "strict decoding error: unknown field ...". Value
validation (types, enums, bounds, CEL) is the admission hook's job, not this module's.
"""

from __future__ import annotations

from typing import Any

PRESERVE = "x-kubernetes-preserve-unknown-fields"
EMBEDDED = "x-kubernetes-embedded-resource"
ROOT_FIELDS = ("apiVersion", "kind", "metadata")


def _walk(value: Any, schema: dict[str, Any], path: str, unknown: list[str]) -> Any:
    """Return the pruned copy of `value`, appending unknown field paths to `unknown`."""
    if not isinstance(schema, dict) or schema.get(PRESERVE):
        return value
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [_walk(v, items, f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    if properties is None and isinstance(additional, dict):
        return {k: _walk(v, additional, f"{path}.{k}" if path else k, unknown)
                for k, v in value.items()}
    if properties is None and (additional is True or schema.get("type") != "object"):
        return value
    properties = properties or {}
    result = {}
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key in properties:
            result[key] = _walk(item, properties[key], child, unknown)
        elif schema.get(EMBEDDED) and key in ROOT_FIELDS:
            result[key] = item
        else:
            unknown.append(child)
    return result


def prune(obj: dict[str, Any], schema: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """(pruned object, unknown field paths); apiVersion/kind/metadata are never pruned here."""
    if not schema:
        return obj, []
    unknown: list[str] = []
    body = {k: v for k, v in obj.items() if k not in ROOT_FIELDS}
    pruned = _walk(body, schema, "", unknown)
    return {**{k: obj[k] for k in ROOT_FIELDS if k in obj}, **pruned}, unknown
