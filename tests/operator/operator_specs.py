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
