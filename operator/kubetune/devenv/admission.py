"""CRD admission as a real API server does it, for the emulated API server and tests.

A kube-apiserver refuses a custom resource that breaks its CRD's structural schema or one
of its CEL `x-kubernetes-validations` rules, applies schema defaults, and (with kubectl's
strict field validation) refuses unknown fields. The emulator has none of that, so this
module does it from the same generated CRD YAML a cluster would get. That way a test
proves the *CRD* refuses a bad object, not just our pydantic models.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

CEL_KEY = "x-kubernetes-validations"
PRESERVE_KEY = "x-kubernetes-preserve-unknown-fields"


class AdmissionError(Exception):
    """A refused object. `causes` are {field, message, reason}, as in a Status body."""

    def __init__(self, kind: str, name: str, causes: list[dict], code: int = 422):
        self.kind = kind
        self.name = name
        self.causes = causes
        self.code = code
        self.reason = "Invalid" if code == 422 else "BadRequest"
        details = "; ".join(f"{c['field']}: {c['message']}" for c in causes)
        if code == 422:
            self.message = f'{kind} "{name}" is invalid: {details}'
        else:
            self.message = f"{kind} in version cannot be handled: strict decoding error: {details}"
        super().__init__(self.message)


@dataclass(frozen=True)
class _Served:
    kind: str
    group: str
    schema: dict


def load_crds(directory: Path) -> list[dict]:
    """Every CRD document in a folder of YAML files."""
    docs = []
    for path in sorted(Path(directory).glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


class CrdAdmission:
    """Validates and defaults custom resources against their CRDs' storage version."""

    def __init__(self, crds: Iterable[dict]):
        self._served: dict[tuple[str, str], _Served] = {}
        for crd in crds:
            self.add_crd(crd)

    def add_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("storage"))
        key = (spec["group"], spec["names"]["plural"])
        kind = f"{spec['names']['kind']}.{spec['group']}"
        self._served[key] = _Served(kind, spec["group"], version["schema"]["openAPIV3Schema"])

    def handles(self, group: str, plural: str) -> bool:
        return (group, plural) in self._served

    def admit(self, group: str, plural: str, obj: dict, old: dict | None = None) -> dict:
        """Return `obj` with schema defaults applied, or raise AdmissionError."""
        served = self._served[(group, plural)]
        name = (obj.get("metadata") or {}).get("name", "")
        unknown = list(_unknown_fields(served.schema, obj, ""))
        if unknown:
            causes = [
                {"field": path, "message": f'unknown field "{path}"', "reason": "FieldValueInvalid"}
                for path in unknown
            ]
            raise AdmissionError(served.kind, name, causes, code=400)
        defaulted = copy.deepcopy(obj)
        _apply_defaults(served.schema, defaulted)
        causes = _schema_errors(served.schema, defaulted)
        if not causes:
            causes = list(_cel_errors(served.schema, defaulted, old, ""))
        if causes:
            raise AdmissionError(served.kind, name, causes)
        return defaulted


def _join(path: str, part) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _unknown_fields(schema: dict, value, path: str):
    if isinstance(value, dict) and "properties" in schema and not schema.get(PRESERVE_KEY):
        for key, sub in value.items():
            if path == "" and key == "metadata":
                continue
            if key not in schema["properties"]:
                yield _join(path, key)
            else:
                yield from _unknown_fields(schema["properties"][key], sub, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _unknown_fields(schema["items"], item, _join(path, i))


def _apply_defaults(schema: dict, value) -> None:
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _apply_defaults(schema["items"], item)


def _schema_errors(schema: dict, obj: dict) -> list[dict]:
    from jsonschema import Draft4Validator

    validator = Draft4Validator(schema)
    causes = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ""
        for part in error.absolute_path:
            path = _join(path, part)
        if error.validator == "required":
            missing = error.message.split("'")[1]
            causes.append(
                {"field": _join(path, missing), "message": "Required value", "reason": "FieldValueRequired"}
            )
            continue
        causes.append(
            {
                "field": path,
                "message": f"Invalid value: {error.instance!r}: {_k8s_phrase(error)}",
                "reason": "FieldValueInvalid",
            }
        )
    return causes


def _k8s_phrase(error) -> str:
    """Say what the API server says for each kind of schema failure."""
    v, arg, schema = error.validator, error.validator_value, error.schema
    if v == "minimum":
        return f"should be greater than {'' if schema.get('exclusiveMinimum') else 'or equal to '}{arg}"
    if v == "maximum":
        return f"should be less than {'' if schema.get('exclusiveMaximum') else 'or equal to '}{arg}"
    if v == "enum":
        return "supported values: " + ", ".join(f'"{x}"' for x in arg)
    phrases = {
        "pattern": f"should match '{arg}'",
        "type": f"must be of type {arg}",
        "maxLength": f"may not be more than {arg} bytes",
        "minLength": f"should be at least {arg} chars long",
        "maxItems": f"must have at most {arg} items",
        "minItems": f"should have at least {arg} items",
    }
    return phrases.get(v, error.message)


def _cel_errors(schema: dict, value, old, path: str):
    if value is None:
        return
    for rule in schema.get(CEL_KEY, []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue
        if not _cel_holds(rule["rule"], value, old if uses_old else None):
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            yield {
                "field": path,
                "message": f"Invalid value: \"object\": {message}",
                "reason": "FieldValueInvalid",
            }
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                old_sub = old.get(key) if isinstance(old, dict) else None
                yield from _cel_errors(sub, value[key], old_sub, _join(path, key))
    elif isinstance(value, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys")
        yield from _list_map_duplicates(schema, value, path)
        old_by_key = {}
        if keys and isinstance(old, list):
            old_by_key = {tuple(o.get(k) for k in keys): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(value):
            old_item = old_by_key.get(tuple(item.get(k) for k in keys)) if keys and isinstance(item, dict) else None
            yield from _cel_errors(schema["items"], item, old_item, _join(path, i))


def _list_map_duplicates(schema: dict, value: list, path: str):
    if schema.get("x-kubernetes-list-type") != "map":
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen = set()
    for i, item in enumerate(value):
        key = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
        if key in seen:
            shown = ", ".join(f'"{k}":"{v}"' for k, v in zip(keys, key, strict=True))
            yield {
                "field": _join(path, i),
                "message": f"Duplicate value: map[string]interface {{}}{{{shown}}}",
                "reason": "FieldValueDuplicate",
            }
        seen.add(key)


_PROGRAMS: dict[str, object] = {}


def _cel_holds(rule: str, value, old) -> bool:
    import celpy

    program = _PROGRAMS.get(rule)
    if program is None:
        env = celpy.Environment()
        program = env.program(env.compile(rule))
        _PROGRAMS[rule] = program
    activation = {"self": celpy.json_to_cel(value)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        result = program.evaluate(activation)
    except Exception:  # a CEL runtime error fails the rule, as in the API server
        return False
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)
