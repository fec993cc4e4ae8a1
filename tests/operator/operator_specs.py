"""Specs for the operator's pure-logic tests, built from a valid base plus overrides."""

from __future__ import annotations

import copy

from kubetune.api import FineTuneJobSpec, parse_spec

BASE_SPEC = {
    "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B", "revision": "main"},
    "dataset": {"uri": "s3://kubetune-data/alpaca.jsonl", "format": "alpaca"},
    "output": {"uri": "s3://kubetune-out/runs"},
}


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge `extra` into a copy of `base` (dicts merge, everything else replaces)."""
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def make_spec(**overrides) -> FineTuneJobSpec:
    return parse_spec(FineTuneJobSpec, merge(BASE_SPEC, overrides))


def merged(old, patch):
    """`old` with a JSON merge patch (RFC 7386) applied, as the API server applies the
    status patches the fakes of the service tests receive."""
    if not isinstance(patch, dict) or not isinstance(old, dict):
        return copy.deepcopy(patch)
    result = dict(old)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(old.get(key), value)
    return result
