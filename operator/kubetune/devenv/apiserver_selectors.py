"""Label and field selectors, parsed once per request and matched against stored objects.

The operator lists and watches its children by label (`app.kubernetes.io/instance=...`)
and `kubectl wait` watches one object by `metadata.name=...`, so both must filter for real.
Pure functions: no I/O, no server state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from kubetune.devenv.apiserver_errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects without the label, as Kubernetes does.
        return not present or value not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b=c` -> two requirements."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def _parse_label_requirement(text: str) -> LabelRequirement:
    if match := _SET_RE.match(text):
        values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
        return LabelRequirement(match["key"], match["op"], values)
    if match := _EQ_RE.match(text):
        op = "!=" if match["op"] == "!=" else "="
        return LabelRequirement(match["key"], op, frozenset([match["value"]]))
    if match := _EXISTS_RE.match(text):
        return LabelRequirement(match["key"], "!exists" if match["neg"] else "exists")
    raise bad_request(f"unable to parse requirement: labelSelector: Invalid value: {text!r}")


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """Parse `labelSelector`; an empty or absent selector selects everything."""
    return [_parse_label_requirement(part) for part in _split_top_level(text or "")]


def labels_match(requirements: list[LabelRequirement], obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    equal: bool
    value: str

    def matches(self, obj: dict[str, Any]) -> bool:
        return (field_value(obj, self.path) == self.value) == self.equal


def field_value(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    """The string form of a dotted field; absent fields read as "" as on a real server."""
    current: Any = obj
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return ""
        current = current[part]
    if isinstance(current, bool):
        return "true" if current else "false"
    return "" if current is None else str(current)


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    """Parse `fieldSelector` (`=`, `==`, `!=`; comma = AND).

    A real server accepts only a few fields per kind (metadata.name, metadata.namespace,
    and e.g. spec.nodeName/status.phase for pods); this emulator accepts any dotted path,
    which is a superset and never refuses a selector a real server would take.
    """
    requirements = []
    for part in _split_top_level(text or ""):
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not match:
            raise bad_request(f"invalid selector: {part!r}; can't understand {part!r}")
        path, op, value = match.groups()
        requirements.append(FieldRequirement(tuple(path.split(".")), op != "!=", value))
    return requirements


def build_predicate(label_selector: str | None, field_selector: str | None) -> Predicate:
    """One predicate for both selectors, so list and watch filter identically."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector)
    if not labels and not fields:
        return lambda obj: True
    return lambda obj: labels_match(labels, obj) and all(f.matches(obj) for f in fields)
