"""Kueue's build is keyed by its module files and its manifests come from the pinned
module in Go's cache (never a committed copy): what the runtime module relies on."""

from __future__ import annotations

import pytest
import yaml

from kubetune.devenv import cpbuild, kueuebuild

pytestmark = pytest.mark.integration


def test_binary_is_keyed_by_the_module_files():
    path = kueuebuild.binary_path()
    assert path.parent == cpbuild.TOOLS / f"kueue-{kueuebuild.build_key()}"
    assert kueuebuild.build_key() == kueuebuild.build_key()
    assert "sigs.k8s.io/kueue v0.17.0" in (kueuebuild.MODULE / "go.mod").read_text()


def test_manifests_come_from_the_pinned_module():
    root = kueuebuild.module_dir()
    assert root.name == f"kueue@{kueuebuild.KUEUE_VERSION}"
    crds = {p.name for p in (root / "config/components/crd/bases").glob("*.yaml")}
    assert {"kueue.x-k8s.io_workloads.yaml", "kueue.x-k8s.io_clusterqueues.yaml",
            "kueue.x-k8s.io_localqueues.yaml", "kueue.x-k8s.io_resourceflavors.yaml"} <= crds
    docs = list(yaml.safe_load_all((root / "config/components/webhook/manifests.yaml").read_text()))
    paths = {w["clientConfig"]["service"]["path"] for d in docs if d for w in d["webhooks"]}
    assert "/mutate--v1-pod" in paths and "/validate--v1-pod" in paths
