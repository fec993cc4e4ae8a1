"""Fixtures for the API tests: the generated CRDs as files, and one namespace of the real
control plane per module.

The refusal tables share a namespace because nothing they post may be stored: each case
uses its own object name, so one leaked object cannot hide another."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

_serial = itertools.count(1)


@pytest.fixture(scope="session")
def generated_crds(repo: Path) -> list[dict]:
    """The checked-in CRDs as the API server receives them (crds/*.yaml)."""
    return [yaml.safe_load(p.read_text()) for p in sorted((repo / "crds").glob("*.yaml"))]


@pytest.fixture(scope="module")
def api_namespace(kube_cluster, request) -> str:
    base = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")[:40].strip("-")
    name = kube_cluster.namespace(f"api-{base}-{next(_serial)}")
    yield name
    kube_cluster.delete_namespace(name)
