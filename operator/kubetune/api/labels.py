"""Kubernetes' label syntax for the label maps users give (nodeSelector), checked twice.

Without it a typo in a nodeSelector key passes the CRD and the models and is refused
only when the operator creates the pods, as a 422 on a child the user never wrote. So
the grammar the API server applies to a Pod's labels and nodeSelector is applied at
the boundary instead: by the models (`check_labels`, naming every bad key) and by CEL
in the CRD (`label_map_schema`), so `kubectl apply` refuses the object at once.

The grammar is apimachinery's: a key is a qualified name (IsQualifiedName), an optional
DNS-1123 subdomain prefix of at most 253 characters and "/", then a name of 1 to 63
characters, alphanumeric at both ends with "-", "_" and "." inside; a value
(IsValidLabelValue) is empty or such a name.
"""

from __future__ import annotations

import re

LABEL_NAME_MAX = 63
LABEL_PREFIX_MAX = 253
# A bound on the map so the API server's CEL cost estimate stays within its budget; a
# node pool is selected by a handful of labels, not dozens.
LABEL_MAP_MAX = 64

_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# The CEL forms carry the name's 63-character bound in the pattern itself (RE2 bounded
# repetition); the prefix's 253 is checked with indexOf, which is -1 without a prefix.
_CEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
CEL_KEY_PATTERN = rf"^({_PREFIX}/)?{_CEL_NAME}$"
CEL_VALUE_PATTERN = rf"^({_CEL_NAME})?$"

NAME_CHARS = "only alphanumerics, '-', '_' and '.', beginning and ending alphanumeric"
NAME_RULE = f"at most {LABEL_NAME_MAX} characters of {NAME_CHARS}"
KEY_RULE = (
    f"an optional prefix (a lowercase DNS subdomain of at most {LABEL_PREFIX_MAX} characters) "
    f"and '/', then a non-empty name of {NAME_RULE}; e.g. kubernetes.io/arch"
)
VALUE_RULE = f"empty, or {NAME_RULE}"


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, in the API server's terms; None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "the prefix before '/' is empty"
    if "/" in prefix:
        return "it has more than one '/'"
    if slash and len(prefix) > LABEL_PREFIX_MAX:
        return f"its prefix is {len(prefix)} characters, more than {LABEL_PREFIX_MAX}"
    if slash and not re.fullmatch(_PREFIX, prefix):
        return (f"its prefix {prefix!r} is not a lowercase DNS subdomain (lowercase "
                "alphanumerics, '-' and '.', alphanumeric at both ends)")
    if not name:
        return "its name (after the optional prefix and '/') is empty"
    if len(name) > LABEL_NAME_MAX:
        return f"its name is {len(name)} characters, more than {LABEL_NAME_MAX}"
    if not re.fullmatch(_NAME, name):
        return f"its name {name!r} must hold {NAME_CHARS}"
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value; None if it is (empty is valid)."""
    if len(value) > LABEL_NAME_MAX:
        return f"it is {len(value)} characters, more than {LABEL_NAME_MAX}"
    if value and not re.fullmatch(_NAME, value):
        return f"it must hold {NAME_CHARS}, or be empty"
    return None


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """`labels` unchanged if every key and value is valid; else a ValueError naming each
    bad key (parse_spec puts the field's path in front)."""
    problems = []
    for key, value in labels.items():
        why = label_key_problem(key)
        if why:
            problems.append(f"key {_quoted(key)} is not a valid label key: {why} "
                            "(e.g. kubernetes.io/arch, karpenter.sh/capacity-type)")
        why = label_value_problem(value)
        if why:
            problems.append(f"value {_quoted(value)} of key {_quoted(key)} is not a valid "
                            f"label value: {why}")
    if problems:
        raise ValueError("; ".join(problems))
    return labels


def _quoted(text: str) -> str:
    """Double-quoted as kubectl quotes values; long ones shortened to stay readable."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


def label_map_schema() -> dict:
    """The CRD's schema additions for a label map: bounds that keep the CEL cost estimate
    low, and the rules. messageExpression names the first bad key (or its value)."""
    key_ok = f"k.matches(r'{CEL_KEY_PATTERN}') && k.indexOf('/') <= {LABEL_PREFIX_MAX}"
    value_ok = f"self[k].matches(r'{CEL_VALUE_PATTERN}')"
    first_bad_key = f"self.filter(k, !({key_ok}))[0]"
    first_bad_value = f"self.filter(k, !({value_ok}))[0]"
    return {
        "maxProperties": LABEL_MAP_MAX,
        "additionalProperties": {"type": "string", "maxLength": LABEL_NAME_MAX},
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(k, {key_ok})",
                "message": f"every key must be a valid label key: {KEY_RULE}",
                "messageExpression": f'"key \\"" + {first_bad_key} + '
                f'"\\" is not a valid label key: {KEY_RULE}"',
            },
            {
                "rule": f"self.all(k, {value_ok})",
                "message": f"every value must be a valid label value: {VALUE_RULE}",
                "messageExpression": f'"the value of key \\"" + {first_bad_value} + '
                f'"\\" is not a valid label value: {VALUE_RULE}"',
            },
        ],
    }
