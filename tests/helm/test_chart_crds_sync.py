"""The chart's crds/ must be byte-for-byte the generated CRDs in the repository's crds/.

crds/ is generated from the pydantic models (kubetune.api.crdgen); the chart carries
copies because Helm only installs CRDs from inside the chart. Sync with:
    make crds   (runs crdgen, then cp crds/*.yaml helm/kubetune/crds/)
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "crds"
CHART_CRDS = REPO / "helm" / "kubetune" / "crds"
SYNC = "make crds  (or: cp crds/*.yaml helm/kubetune/crds/)"


def test_chart_crds_equal_generated_crds() -> None:
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml")}
    assert source, "no generated CRDs in crds/"
    assert set(chart) == set(source), f"file sets differ; run: {SYNC} (and remove extras)"
    stale = sorted(name for name in source if chart[name] != source[name])
    assert not stale, f"chart CRDs out of date: {stale}; run: {SYNC}"
