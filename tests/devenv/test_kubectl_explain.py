"""Real kubectl 1.37 `explain` against the emulated API server's `/openapi/v3`, with the
project's CRDs: the field descriptions users read come from the CRDs' openAPIV3Schema."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

FTJ_GV = "apis/kubetune.dev/v1alpha1"
FTJ_SCHEMA = "dev.kubetune.v1alpha1.FineTuneJob"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def flat(text: str) -> str:
    """kubectl wraps descriptions at 76-78 columns; compare with whitespace collapsed."""
    return " ".join(text.split())


def crd_schema(project_crds, kind: str) -> dict:
    crd = next(c for c in project_crds if c["spec"]["names"]["kind"] == kind)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def descriptions(schema: dict, path: str = "") -> dict[str, str]:
    """field path -> description, for every described node under `schema`."""
    found = {path: schema["description"]} if path and "description" in schema else {}
    for name, sub in (schema.get("properties") or {}).items():
        found.update(descriptions(sub, f"{path}.{name}" if path else name))
    if isinstance(schema.get("items"), dict):
        found.update(descriptions(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        found.update(descriptions(schema["additionalProperties"], f"{path}{{}}"))
    return found


def test_explain_short_name_field_lists_crd_descriptions(kubectl, project_crds):
    out = kubectl("explain", "ftj.spec.spot").stdout
    assert out.splitlines()[:3] == ["GROUP:      kubetune.dev", "KIND:       FineTuneJob",
                                    "VERSION:    v1alpha1"]
    assert "FIELD: spot <Object>" in out
    spot = crd_schema(project_crds, "FineTuneJob")["properties"]["spec"]["properties"]["spot"]
    assert spot["properties"]["checkpointBudgetSeconds"]["description"] == (
        "Seconds the trainer has after SIGTERM to save a checkpoint (GKE gives 30).")
    assert "  checkpointBudgetSeconds\t<integer>\n" in out
    for name, field in spot["properties"].items():
        assert flat(field["description"]) in flat(out), name
    assert "enum: StayOnSpot, FallbackToOnDemand" in out


def test_explain_leaf_field_by_singular_name(kubectl):
    out = kubectl("explain", "finetunejob.spec.spot.checkpointBudgetSeconds").stdout
    assert "FIELD: checkpointBudgetSeconds <integer>" in out
    assert "DESCRIPTION:\n    Seconds the trainer has after SIGTERM to save a checkpoint" \
        " (GKE gives 30)." in out
    assert "FIELDS:" not in out


def test_explain_modelserve_array_field(kubectl, project_crds):
    out = kubectl("explain", "ms.spec.adapters").stdout
    assert "KIND:       ModelServe" in out
    assert "FIELD: adapters <[]Object>" in out
    adapters = crd_schema(project_crds, "ModelServe")["properties"]["spec"]["properties"][
        "adapters"]
    assert flat(adapters["description"]) in flat(out)
    assert flat(adapters["items"]["description"]) in flat(out)
    assert "  name\t<string> -required-\n" in out
    assert flat(adapters["items"]["properties"]["uri"]["description"]) in flat(out)


def test_explain_recursive_covers_spec_status_and_object_meta(kubectl):
    out = kubectl("explain", "ftj", "--recursive").stdout
    assert flat("A QLoRA/LoRA fine-tune on Ray workers, spot-aware, writing a LoRA adapter"
                " to object storage.") in flat(out)
    lines = out.splitlines()
    assert "  metadata\t<ObjectMeta>" in lines
    assert "    labels\t<map[string]string>" in lines
    assert "  spec\t<Object> -required-" in lines
    assert "    spot\t<Object>" in lines
    assert "      checkpointBudgetSeconds\t<integer>" in lines
    assert "  status\t<Object>" in lines


def test_explain_metadata_follows_object_meta_ref(kubectl):
    out = kubectl("explain", "ftj.metadata.labels").stdout
    assert "FIELD: labels <map[string]string>" in out
    assert "organize and categorize" in flat(out)


def test_explain_unknown_field_is_kubectl_error(kubectl):
    result = kubectl("explain", "ftj.spec.spot.nope", check=False)
    assert result.returncode != 0
    assert 'error: field "nope" does not exist' in result.stderr
    result = kubectl("explain", "ms.spec.adapters.nope", check=False)
    assert result.returncode != 0
    assert 'error: field "nope" does not exist' in result.stderr


def test_openapi_v3_documents_carry_crd_schemas(http, project_crds):
    index = http("GET", "/openapi/v3")
    assert index.code == 200
    url = index.body["paths"][FTJ_GV]["serverRelativeURL"]
    assert url.startswith(f"/openapi/v3/{FTJ_GV}?hash=")
    doc = http("GET", url)
    assert doc.code == 200
    schemas = doc.body["components"]["schemas"]
    published = schemas[FTJ_SCHEMA]
    assert published["x-kubernetes-group-version-kind"] == [
        {"group": "kubetune.dev", "version": "v1alpha1", "kind": "FineTuneJob"}]
    assert schemas[f"{FTJ_SCHEMA}List"]["x-kubernetes-group-version-kind"][0]["kind"] == \
        "FineTuneJobList"
    assert published["properties"]["metadata"]["allOf"] == [
        {"$ref": f"#/components/schemas/{OBJECT_META}"}]
    assert OBJECT_META in schemas
    # spec and status are the CRD's own schema, every description intact.
    source = crd_schema(project_crds, "FineTuneJob")
    for part in ("spec", "status"):
        want = descriptions(source["properties"][part], part)
        assert len(want) > 20
        assert descriptions(published["properties"][part], part) == want
    # The PATCH operation still offers fieldValidation (kubectl's strict apply) and no
    # strategic merge (kubectl apply uses JSON merge patch on custom resources).
    patch = doc.body["paths"][
        "/apis/kubetune.dev/v1alpha1/namespaces/{namespace}/finetunejobs/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    assert http("GET", "/openapi/v3/apis/kubetune.dev/v9").code == 404
