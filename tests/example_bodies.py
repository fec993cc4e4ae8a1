"""The example manifests as bodies to vary, one field at a time, for the tests that
throw malformed objects at the API server and the operator. Importable from any test
as `example_bodies` (pytest puts tests/ on sys.path for tests/conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FTJ = "FineTuneJob"
MS = "ModelServe"
DELETE = object()


def example(kind: str, name: str) -> dict:
    """The kind's file in examples/, renamed, without its namespace (tests post to theirs)."""
    file = {FTJ: "finetune.yaml", MS: "modelserve.yaml"}[kind]
    body = yaml.safe_load((REPO / "examples" / file).read_text())
    body["metadata"] = {"name": name}
    return body


def mutate(body: dict, path: str, value) -> dict:
    """A copy with a dotted path set (or removed, for DELETE); `[i]` indexes lists."""
    body = copy.deepcopy(body)
    parts = path.replace("[", ".[").split(".")
    node = body
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    key = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return body
