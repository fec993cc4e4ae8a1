"""Render the chart with the real helm binary, once per values scenario.

Each scenario is a values file in tests/helm/values/ (or the chart defaults). Rendering is
cached for the session: helm template takes well under a second, but the tests look at
the same rendering from many angles.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path

import pytest
import yaml

from kubetune.devenv.tools import tool_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubetune"
VALUES_DIR = Path(__file__).parent / "values"
RELEASE = "kt"
NAMESPACE = "kubetune-system"
SCENARIOS = ["default"] + sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = tool_path("helm")
    if not binary.exists():
        pytest.fail(f"{binary} missing: run scripts/bootstrap.sh (it unpacks helm and kubectl)")
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def values_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(VALUES_DIR / f"{scenario}.yaml")]


@functools.cache
def _render(scenario: str) -> tuple[dict, ...]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds",
               *values_args(scenario)).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render(scenario: str) -> list[dict]:
    """The rendered documents (deep copies, so a test may not spoil another's)."""
    return copy.deepcopy(list(_render(scenario)))


def deep_merge(base: dict, over: dict) -> dict:
    """Helm's value coalescing for maps: `over` wins, nested maps merge, lists replace."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def effective_values(scenario: str) -> dict:
    """The chart defaults merged with the scenario's values file."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if scenario == "default":
        return defaults
    return deep_merge(defaults, yaml.safe_load((VALUES_DIR / f"{scenario}.yaml").read_text()))


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    """The one document of `kind` (and `name`); fails if there is none or several."""
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
