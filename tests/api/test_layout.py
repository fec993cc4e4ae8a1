"""The package layout keeps the standard library reachable and the CRDs in sync."""

import subprocess
import sys

from kubetune.api import crdgen


def test_import_operator_is_the_stdlib_from_the_repo_root(repo):
    probe = "import operator, sys; print(operator.__file__); print(operator.itemgetter(1)([5, 6]))"
    for extra in ("", "import kubetune.operator, kubetune.workers;"):
        out = subprocess.run(
            [sys.executable, "-c", extra + probe], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.split()
        assert "/work/" not in out[0] and out[0].endswith("operator.py"), out
        assert out[1] == "6"
    assert not (repo / "operator" / "__init__.py").exists()
    assert not (repo / "workers" / "__init__.py").exists()


def test_checked_in_crds_match_the_models(repo):
    for kind in crdgen.KINDS:
        path = crdgen.crd_path(kind, repo / "crds")
        assert path.read_text() == crdgen.render(kind), (
            f"{path.name} drifted from the pydantic models: run python -m kubetune.api.crdgen"
        )


def test_drift_check_command_fails_on_a_changed_file(tmp_path):
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0
    victim = next(tmp_path.glob("finetunejobs*.yaml"))
    victim.write_text(victim.read_text().replace("minimum: 1", "minimum: 2", 1))
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1


def test_every_crd_field_has_a_description(generated_crds):
    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            if path in ("", ) and name in ("apiVersion", "kind", "metadata"):
                continue
            assert sub.get("description"), f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], path + "[]")

    for crd in generated_crds:
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


def test_crds_carry_names_columns_and_status_subresource(generated_crds):
    by_kind = {c["spec"]["names"]["kind"]: c for c in generated_crds}
    ftj, ms = by_kind["FineTuneJob"], by_kind["ModelServe"]
    assert ftj["spec"]["names"]["shortNames"] == ["ftj"]
    assert ms["spec"]["names"]["shortNames"] == ["ms"]
    for crd in generated_crds:
        assert crd["spec"]["names"]["categories"] == ["kubetune"]
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}

    def columns(crd):
        return [col["name"] for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]]

    assert columns(ftj) == ["Phase", "Progress", "Loss", "Eval", "Recoveries", "Age",
                            "Spot-GPU-s", "OnDemand-GPU-s", "Cost", "Saving"]
    assert columns(ms) == ["Ready", "Adapters", "Endpoint", "Age"]


def test_crd_schemas_are_structural(generated_crds):
    """No $ref, anyOf or untyped node survives: the API server refuses those."""

    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], path + "[]")

    for crd in generated_crds:
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], crd["metadata"]["name"])


def test_test_module_names_are_unique(repo):
    """Test folders have no __init__.py, so pytest imports modules by basename: two files
    with the same name in different areas break collection of the whole suite."""
    names = [p.name for p in (repo / "tests").rglob("*.py") if p.name != "conftest.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []
