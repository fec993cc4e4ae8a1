"""Generate the CRD YAML in crds/ from the pydantic models.

Run `python -m kubetune.api.crdgen` (writes crds/) or `--check` (exits 1 on drift).
Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0
schema: no $ref, no anyOf-with-null, boolean exclusiveMinimum, a type on every node.
This module does that translation and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from .kinds import KINDS, Kind

REPO_CRDS = Path(__file__).resolve().parents[3] / "crds"
DROP_KEYS = {"title", "$defs", "additionalProperties"}
CEL = "x-kubernetes-validations"


def _resolve(node: dict, defs: dict) -> dict:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        rules = target.get(CEL, []) + node.get(CEL, [])
        if rules:
            merged[CEL] = rules
        return _resolve(merged, defs)
    return node


def _strip_null_branch(node: dict) -> dict:
    """`X | None` becomes plain X: an omitted field is how Kubernetes says "unset"."""
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                rest.pop("default")
            return {**branches[0], **rest}
    return node


def _structural(node: dict, defs: dict) -> dict:
    node = _resolve(_strip_null_branch(_resolve(node, defs)), defs)
    out: dict = {}
    for key, value in node.items():
        if key in DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if out.get("type") == "object" and "properties" not in out:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "x-kubernetes-preserve-unknown-fields" in out:
        out["type"] = "object"
    return out


def _enum_type(values: list) -> str:
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) for v in values):
        return "integer"
    return "string"


def model_schema(model: type[BaseModel], mode: str) -> dict:
    """Structural OpenAPI schema of one pydantic model (mode: validation or serialization)."""
    raw = model.model_json_schema(by_alias=True, mode=mode)
    defs = raw.get("$defs", {})
    schema = _structural(raw, defs)
    if model.__doc__:
        schema.setdefault("description", _one_paragraph(model.__doc__))
    return schema


def _one_paragraph(doc: str) -> str:
    return " ".join(doc.strip().split("\n\n")[0].split())


def _fill_descriptions(node: dict, where: str = "") -> list[str]:
    """Every property must be described (so `kubectl explain` reads well): list gaps."""
    missing = []
    for name, sub in node.get("properties", {}).items():
        path = f"{where}.{name}"
        if not sub.get("description"):
            missing.append(path)
        missing += _fill_descriptions(sub, path)
    if "items" in node:
        missing += _fill_descriptions(node["items"], f"{where}[]")
    return missing


def build_crd(kind: Kind) -> dict:
    """The full CustomResourceDefinition for one kind."""
    spec = model_schema(kind.spec_model, "validation")
    status = model_schema(kind.status_model, "serialization")
    status.pop("required", None)
    root = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        CEL: [kind.name_rule()],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            # metadata.name is declared so that the root rule's fieldPath resolves.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": f"At most {kind.max_name_length} characters.",
                    }
                },
            },
            "spec": spec,
            "status": status,
        },
    }
    missing = _fill_descriptions({"properties": {"spec": spec, "status": status}})
    if missing:
        raise ValueError(f"{kind.kind}: fields without a description: {', '.join(missing)}")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": kind.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in kind.printer_columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `python -m kubetune.api.crdgen` from kubetune/api; do not edit.\n"


class _NoAliasDumper(yaml.SafeDumper):
    """Shared sub-schemas are written out in full: kubectl and humans read no YAML anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def render(kind: Kind) -> str:
    body = yaml.dump(build_crd(kind), Dumper=_NoAliasDumper, sort_keys=False, width=100)
    return HEADER + body


def crd_path(kind: Kind, directory: Path = REPO_CRDS) -> Path:
    return directory / f"{kind.crd_name}.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_CRDS, help="directory to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if files differ")
    args = parser.parse_args(argv)
    drift = []
    for kind in KINDS:
        path, text = crd_path(kind, args.out), render(kind)
        if args.check:
            if not path.exists() or path.read_text() != text:
                drift.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if drift:
        print("CRDs drifted from the models; run python -m kubetune.api.crdgen:", *drift)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
